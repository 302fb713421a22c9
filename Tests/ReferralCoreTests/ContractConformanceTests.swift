import Foundation
import Testing

@testable import ReferralCore

/// Runs the shared contract's own examples through the classifier and the writer. Needs
/// `../shared/contract` (or `$REFERRALD_CONTRACT_DIR`); without it the suite is skipped, and says so.
@Suite(.enabled(if: contractAvailable, "../shared/contract not found: conformance tests skipped"))
struct ContractConformanceTests {
    static func file(_ path: String) throws -> [UInt8] {
        Array(try Data(contentsOf: try #require(contractDir).appendingPathComponent(path)))
    }

    @Test(arguments: ConsumedType.allCases)
    func everyConsumedExampleClassifiesAsItsType(type: ConsumedType) throws {
        let event = try classify(body: Self.file("examples/consumed/\(type.rawValue).json")).get()
        #expect(event.type == type)
    }

    @Test func theLeadExampleCarriesTheReferrersCode() throws {
        let event = try classify(body: Self.file("examples/consumed/provisioning.lead.created.json")).get()
        guard case .leadCreated(let lead) = event.payload else {
            Issue.record("payload")
            return
        }
        #expect(lead.code?.canonical == "K7QM-42XD-E")
    }

    /// Every invalid example gets its manifest code, and its detail starts with the field that
    /// examples/README.md's "Dead letters" table names (where it names one).
    @Test func everyInvalidExampleGetsItsCodeAndField() throws {
        let manifest = try #require(try JSONValue.parse(Self.file("examples/invalid/manifest.json")).objectValue)
        let fields = try Self.documentedFields()
        #expect(manifest.count >= 18)
        for entry in manifest.members {
            let want = try #require(entry.value.stringValue)
            guard case .failure(let bad) = classify(body: try Self.file("examples/invalid/\(entry.key)")) else {
                Issue.record("\(entry.key): accepted")
                continue
            }
            #expect(bad.code.rawValue == want, "\(entry.key): \(bad)")
            let field = try #require(fields[entry.key], "\(entry.key) is not in examples/README.md")
            if let field {
                #expect(bad.detail.hasPrefix(field + ": "), "\(entry.key): \(bad.detail)")
            }
            #expect(isHeaderSafe(bad.detail))
        }
    }

    /// Size is the too_large example's only fault: under a larger limit it is a valid event.
    @Test func theTooLargeExampleIsOtherwiseValid() throws {
        let body = try Self.file("examples/invalid/too_large.json")
        #expect(classify(body: body).failure?.code == .tooLarge)
        #expect(try classify(body: body, limits: InputLimits(maxBodyBytes: 1 << 20)).get().type == .speedtestCompleted)
    }

    /// The writer produces exactly the keys of each published example, nested objects included.
    @Test(arguments: PublishedType.allCases)
    func writerMatchesThePublishedExampleShape(type: PublishedType) throws {
        let example = try JSONValue.parse(Self.file("examples/published/\(type.rawValue).json"))
        let written = try JSONValue.parse(sampleEvent(type).encoded())
        #expect(Self.shape(of: written) == Self.shape(of: example))
        #expect(
            try #require(written.objectValue?["data"]?.objectValue).count
                == (try #require(example.objectValue?["data"]?.objectValue)).count)
    }

    @Test func codeIssuedForTheStoryEqualsTheExample() throws {
        let example = try #require(
            try JSONValue.parse(Self.file("examples/published/referral.code.issued.json")).objectValue)
        let event = OutgoingEvent.codeIssued(
            id: "0e7c4a9b-3d61-4f8e-b2a5-c6d9e1f04b73", time: try #require(Instant(rfc3339: "2026-11-23T10:31:10Z")),
            accountId: "acct-1002", code: try #require(ReferralCode.parse("9XR4-T1NB-3")),
            shareURL: "https://example.net/r/9XR4-T1NB-3", programId: "consumer")
        let written = try #require(try JSONValue.parse(event.encoded()).objectValue)
        #expect(written["data"] == example["data"])
        #expect(JSONValue.object(written) == .object(example))
    }

    /// `examples/README.md` "Dead letters" table: file -> field (nil for `-`).
    static func documentedFields() throws -> [String: String?] {
        let readme = String(decoding: try file("examples/README.md"), as: UTF8.self)
        var fields: [String: String?] = [:]
        for line in readme.split(separator: "\n") where line.hasPrefix("| `") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 3 else { continue }
            let strip = { (s: String) in s.trimmingCharacters(in: CharacterSet(charactersIn: "`")) }
            let field = strip(cells[2])
            fields[strip(cells[0])] = field == "-" ? String?.none : field
        }
        return fields
    }

    /// Every object's key set, by path: what must agree between a writer and an example.
    static func shape(of value: JSONValue, at path: String = "") -> [String: Set<String>] {
        guard case .object(let o) = value else { return [:] }
        var out = [path: Set(o.keys)]
        for m in o.members {
            out.merge(shape(of: m.value, at: path + "." + m.key)) { a, _ in a }
        }
        return out
    }
}

/// Makes a skipped conformance suite visible in the plain test log, not only in the trait.
@Test func contractPresenceIsReported() {
    if !contractAvailable {
        print("SKIPPED: contract conformance (no ../shared/contract)")
    }
}
