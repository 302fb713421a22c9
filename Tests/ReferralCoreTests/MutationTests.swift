import Testing
@testable import ReferralCore

@Suite struct MutationTests {
    /// Random mutations of every valid fixture: the classifier never traps, and every mutant is
    /// either an event or a dead letter with one of the codes and a one-line detail of at most
    /// 1,024 characters. Seeded, so a failure replays exactly.
    @Test func classifierIsTotalOnMutatedFixtures() throws {
        let seeds = try ConsumedType.allCases.map { try Fixtures.consumed($0) }
        let interesting: [[UInt8]] = [
            [0x00], [0x22], [0x5C], [0x7B], [0x7D], [0x5B], [0x5D], [0x2C], [0x3A], [0xC3], [0xED, 0xA0, 0x80],
            [0xEF, 0xBB, 0xBF], Array("null".utf8), Array("-0".utf8), Array("1e400".utf8), Array("\\uD800".utf8),
            Array("\"\"".utf8), Array("99999999999999999999".utf8), Array("[[[[[[[[".utf8), [0x0A],
        ]
        var rng = SeededGenerator(state: 0x5EED_2026)
        var counts: [String: Int] = [:]
        let iterations = 5_000
        for _ in 0..<iterations {
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
            switch classify(body: body) {
            case .success(let event):
                counts["accepted", default: 0] += 1
                #expect(event.id.utf8.count <= 128)
            case .failure(let bad):
                counts[bad.code.rawValue, default: 0] += 1
                #expect(bad.code != .processingFailed)
                #expect(isHeaderSafe(bad.detail), "\(bad.detail)")
            }
        }
        print("mutation run: \(iterations) mutants, \(counts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
        #expect(counts.values.reduce(0, +) == iterations)
        // The run is only meaningful if it reached deep into classification, not just the parser.
        #expect(counts["invalid_data", default: 0] > 0 && counts["accepted", default: 0] > 0 && counts["not_json", default: 0] > 0)
    }
}
