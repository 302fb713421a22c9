import Foundation
import ReferralTestKit
import Testing

@testable import ReferralCore

/// Seeded mutation fuzzing of the envelope and data decoders (`classify`), over our fixtures and
/// the contract's examples (consumed and invalid, when ../shared/contract is present). Bounded:
/// `REFERRALD_FUZZ_ITERATIONS` mutants per test (default 5,000: seconds in a debug build, as CI
/// runs it; raise it for a longer local run), replayable from
/// `REFERRALD_FUZZ_SEED`; both are printed with the outcome counts.
@Suite struct FuzzTests {
    static let environment = ProcessInfo.processInfo.environment
    static let iterations = environment["REFERRALD_FUZZ_ITERATIONS"].flatMap { Int($0) } ?? 5_000
    static let seed = environment["REFERRALD_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x5EED_2026

    /// Valid events first (the mutants that reach the data decoders come from these), then every
    /// invalid example, so mutations also start from the edges the contract already names.
    static func corpus() throws -> (valid: [[UInt8]], all: [[UInt8]]) {
        var valid = try ConsumedType.allCases.map { try Fixtures.consumed($0) }
        var invalid = try Fixtures.invalidManifest().map { try Fixtures.bytes("invalid/" + $0.name) }
        if let contractDir {
            let files = FileManager.default
            for folder in ["consumed", "invalid"] {
                let dir = contractDir.appendingPathComponent("examples/" + folder)
                for name in (try? files.contentsOfDirectory(atPath: dir.path))?.sorted() ?? []
                where name != "manifest.json" && (name.hasSuffix(".json") || name.hasSuffix(".bin")) {
                    let body = Array(try Data(contentsOf: dir.appendingPathComponent(name)))
                    if folder == "consumed" { valid.append(body) } else { invalid.append(body) }
                }
            }
        }
        return (valid, valid + invalid)
    }

    /// Byte-level mutations of every seed: the classifier never traps, and every mutant is either
    /// an event or a dead letter with one of the codes and a one-line detail of at most 1,024
    /// characters.
    @Test func classifierIsTotalOnMutatedBytes() throws {
        let seeds = try Self.corpus().all
        let interesting: [[UInt8]] = [
            [0x00], [0x22], [0x5C], [0x7B], [0x7D], [0x5B], [0x5D], [0x2C], [0x3A], [0xC3], [0xED, 0xA0, 0x80],
            [0xEF, 0xBB, 0xBF], Array("null".utf8), Array("-0".utf8), Array("1e400".utf8), Array("\\uD800".utf8),
            Array("\"\"".utf8), Array("99999999999999999999".utf8), Array("[[[[[[[[".utf8), [0x0A],
        ]
        var rng = SeededGenerator(state: Self.seed)
        var counts: [String: Int] = [:]
        for _ in 0..<Self.iterations {
            var body = seeds[Int(rng.next() % UInt64(seeds.count))]
            for _ in 0...(rng.next() % 3) {
                let at = body.isEmpty ? 0 : Int(rng.next() % UInt64(body.count))
                switch rng.next() % 6 {
                case 0 where !body.isEmpty: body[at] = UInt8(truncatingIfNeeded: rng.next())
                case 1 where !body.isEmpty: body.remove(at: at)
                case 2: body.insert(contentsOf: interesting[Int(rng.next() % UInt64(interesting.count))], at: at)
                case 3: body = Array(body.prefix(at))
                case 4 where !body.isEmpty:
                    let end = min(body.count, at + Int(rng.next() % 40))
                    body.insert(contentsOf: body[at..<end], at: Int(rng.next() % UInt64(body.count)))
                default:
                    // Flip one bit of a digit or letter, the mutation most likely to stay JSON.
                    if !body.isEmpty { body[at] ^= 1 << (rng.next() % 3) }
                }
            }
            counts[Self.check(body), default: 0] += 1
        }
        print(
            "fuzz (bytes): \(Self.iterations) iterations, seed \(Self.seed), \(seeds.count) seeds, \(Self.summary(counts))"
        )
        #expect(counts.values.reduce(0, +) == Self.iterations)
        // The run is only meaningful if it reached deep into classification, not just the parser.
        #expect(
            counts["invalid_data", default: 0] > 0 && counts["accepted", default: 0] > 0
                && counts["not_json", default: 0] > 0)
    }

    /// Structural mutations of the valid events: a value anywhere in the tree is replaced by
    /// another kind, removed, or grown to a limit or one past it (16 KiB strings and numbers,
    /// depth 64, 100,000 values, 256 KiB bodies). Beyond the totality above, the verdicts on
    /// the limits are exact: `too_large` if and only if the body is over 256 KiB (the size
    /// check alone), `not_json` for a body within it nested deeper than 64 levels; long strings
    /// and many values inside the size limit are never refused for being long or many.
    /// A tenth of the byte-level count: each mutant here may hold 100,000 values or 270 KB.
    @Test func limitsAreExactOnStructuralMutants() throws {
        let iterations = max(Self.iterations / 10, 1)
        let seeds = try Self.corpus().valid.map { try JSONValue.parse($0) }
        var rng = SeededGenerator(state: Self.seed ^ 0x57A7)
        var counts: [String: Int] = [:]
        for _ in 0..<iterations {
            var tree = seeds[Int(rng.next() % UInt64(seeds.count))]
            for _ in 0...(rng.next() % 2) { tree = Self.mutate(tree, depth: 1, rng: &rng) }
            let body = tree.encoded()
            let outcome = Self.check(body)
            counts[outcome, default: 0] += 1
            let shape = Shape(tree)
            let oversized = body.count > 262_144
            #expect(
                (outcome == "too_large") == oversized,
                "depth \(shape.depth), values \(shape.values), string \(shape.longestString), body \(body.count): \(outcome)"
            )
            if !oversized, shape.depth > 64 { #expect(outcome == "not_json", "depth \(shape.depth): \(outcome)") }
        }
        print(
            "fuzz (structure): \(iterations) iterations, seed \(Self.seed), \(seeds.count) seeds, \(Self.summary(counts))"
        )
        #expect(
            counts["too_large", default: 0] > 0 && counts["invalid_data", default: 0] > 0
                && counts["accepted", default: 0] > 0)
    }

    // MARK: support

    /// Classifies a mutant and checks the invariants every outcome must hold; returns its code
    /// ("accepted" for an event).
    static func check(_ body: [UInt8]) -> String {
        switch classify(body: body) {
        case .success(let event):
            #expect(event.id.utf8.count <= 128)
            // Deterministic: a redelivery of the same bytes is judged the same way.
            if case .failure(let again) = classify(body: body) { Issue.record("accepted, then refused: \(again)") }
            return "accepted"
        case .failure(let bad):
            #expect(bad.code != .processingFailed)
            #expect(isHeaderSafe(bad.detail), "\(bad.detail)")
            return bad.code.rawValue
        }
    }

    static func summary(_ counts: [String: Int]) -> String {
        counts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
    }

    /// Replaces one randomly chosen value of the tree (depth-first walk with a random stop).
    static func mutate(_ value: JSONValue, depth: Int, rng: inout SeededGenerator) -> JSONValue {
        switch value {
        case .object(let object) where !object.members.isEmpty && rng.next() % 4 != 0:
            var members = object.members.map { ($0.key, $0.value) }
            let i = Int(rng.next() % UInt64(members.count))
            if rng.next() % 8 == 0 {
                members.remove(at: i)
            } else {
                members[i].1 = mutate(members[i].1, depth: depth + 1, rng: &rng)
            }
            return .object(JSONObject(members))
        case .array(var elements) where !elements.isEmpty && rng.next() % 4 != 0:
            let i = Int(rng.next() % UInt64(elements.count))
            elements[i] = mutate(elements[i], depth: depth + 1, rng: &rng)
            return .array(elements)
        default:
            return hostile(atDepth: depth, rng: &rng)
        }
    }

    /// A replacement value, often exactly at a limit or one past it given where it lands.
    static func hostile(atDepth depth: Int, rng: inout SeededGenerator) -> JSONValue {
        func pick<T>(_ options: [T]) -> T { options[Int(rng.next() % UInt64(options.count))] }
        switch rng.next() % 9 {
        case 0: return .null
        case 1: return .bool(rng.next() % 2 == 0)
        case 2: return .integer(pick([0, -1, 1, Int64.max, Int64.min, 9_007_199_254_740_993]))
        case 3:
            let lexeme = pick([
                "1e400", "-0", "0.5", "1" + String(repeating: "0", count: 16_383),
                "1" + String(repeating: "0", count: 16_384), "1E-400",
            ])
            return (try? JSONValue.parse(Array(lexeme.utf8), limits: JSONLimits(maxStringBytes: 1 << 20))) ?? .null
        case 4:
            // Multi-byte characters so that byte and character counts differ near the limit.
            let unit = pick(["a", "é", "€", "😀", "\u{0}", "\n", "\""])
            let bytes = pick([0, 1, 128, 129, 16_383, 16_384, 16_385, 20_000])
            return .string(String(repeating: unit, count: max(bytes / unit.utf8.count, 0)))
        case 5:
            // Nesting that ends exactly at the depth limit, one past it, or far beyond.
            let target = pick([63, 64, 65, 500])
            var nested = JSONValue.array([])
            for _ in 0..<max(target - depth, 0) { nested = .array([nested]) }
            return nested
        case 6:
            let count = pick([10, 99_000, 99_990, 100_001])
            return .array(Array(repeating: .integer(0), count: count))
        case 7:
            return .string(String(repeating: "x", count: pick([100_000, 270_000])))
        default:
            return .object(JSONObject([("k", .string("v")), ("n", .integer(1))]))
        }
    }

    /// The quantities the parser limits, counted as it counts them: every value (keys are not
    /// values), container nesting with the root at 1, and unescaped UTF-8 bytes of strings, keys
    /// and number lexemes.
    struct Shape {
        var depth = 0
        var values = 0
        var longestString = 0

        init(_ value: JSONValue) { visit(value, level: 0) }

        mutating func visit(_ value: JSONValue, level: Int) {
            values += 1
            switch value {
            case .null, .bool: break
            case .number(let n): longestString = max(longestString, n.lexeme.utf8.count)
            case .string(let s): longestString = max(longestString, s.utf8.count)
            case .array(let elements):
                depth = max(depth, level + 1)
                for e in elements { visit(e, level: level + 1) }
            case .object(let object):
                depth = max(depth, level + 1)
                for m in object.members {
                    longestString = max(longestString, m.key.utf8.count)
                    visit(m.value, level: level + 1)
                }
            }
        }
    }
}
