import Foundation
import Testing

@testable import ReferralCore

/// `effective_from` in the programs file, the version a lead's time binds it to, and what
/// registering a file against the versions stored does (issue #20).
@Suite struct ProgramVersionTests {
    private func load(effectiveFrom: String?) throws -> Program {
        let node = contractProgramNode { pairs in
            if let effectiveFrom { pairs.append((key: "effective_from", value: .scalar(effectiveFrom))) }
        }
        return try #require(try loadPrograms(node, file: "programs.yaml").first)
    }

    @Test func effectiveFromIsReadAsAnRFC3339TimeAndIsOptional() throws {
        #expect(try load(effectiveFrom: "2027-01-01T00:00:00Z").effectiveFrom == at("2027-01-01T00:00:00Z"))
        #expect(try load(effectiveFrom: "2027-01-01T02:00:00+02:00").effectiveFrom == at("2027-01-01T00:00:00Z"))
        #expect(try load(effectiveFrom: nil).effectiveFrom == nil)
    }

    @Test(arguments: ["2027-01-01", "2027-01-01T00:00:00", "tomorrow", "2027-02-30T00:00:00Z"])
    func aTimeThatIsNotRFC3339IsRefusedNamingFileProgramAndField(_ text: String) {
        #expect {
            try load(effectiveFrom: text)
        } throws: { error in
            let e = error as? ProgramError
            return e?.field == "programs[0].effective_from"
                && e?.description.hasPrefix(
                    "programs.yaml: program \"consumer\": effective_from: \"\(text)\" is not an RFC 3339 time") == true
        }
    }

    /// A file without `effective_from` keeps the canonical form (and so the stored version) it
    /// had before the key existed; a time makes it part of the version's identity.
    @Test func theCanonicalFormCarriesTheEffectiveTimeOnlyWhenGiven() throws {
        let plain = try load(effectiveFrom: nil)
        let timed = try load(effectiveFrom: "2027-01-01T00:00:00Z")
        #expect(!plain.canonicalForm.contains("effective_from"))
        #expect(timed.canonicalForm == plain.canonicalForm + "effective_from=2027-01-01T00:00:00Z\n")
        let decoded = try JSONDecoder().decode(Program.self, from: JSONEncoder().encode(timed))
        #expect(decoded == timed)
        #expect(try JSONDecoder().decode(Program.self, from: JSONEncoder().encode(plain)).effectiveFrom == nil)
    }

    private func stored(_ version: Int, _ effective: String, canonical: String? = nil) -> StoredProgramVersion {
        StoredProgramVersion(
            version: version, canonical: canonical ?? "v\(version)", effectiveFrom: at(effective),
            registeredAt: at("2026-12-01T00:00:00Z"))
    }

    @Test func aLeadGetsTheVersionInForceAtItsOwnTimeAndTheEarliestBeforeAny() {
        // Out of order on purpose: the choice is by effective time, not by list position.
        let versions = [
            stored(2, "2027-02-01T00:00:00Z"), stored(1, "2027-01-01T00:00:00Z"), stored(3, "2027-03-01T00:00:00Z"),
        ]
        func version(_ t: String) -> Int? { ProgramVersions.inForce(versions, at: at(t))?.version }
        #expect(version("2026-06-01T00:00:00Z") == 1)  // before every version: the earliest
        #expect(version("2027-01-01T00:00:00Z") == 1)
        #expect(version("2027-01-31T23:59:59.999999Z") == 1)
        #expect(version("2027-02-01T00:00:00Z") == 2)  // from its effective time on, inclusive
        #expect(version("2027-02-15T00:00:00Z") == 2)
        #expect(version("2030-01-01T00:00:00Z") == 3)
        #expect(ProgramVersions.inForce([], at: at("2027-01-01T00:00:00Z")) == nil)
    }

    private func register(_ p: Program, _ stored: [StoredProgramVersion], allowOlder: Bool = false) throws
        -> ProgramVersions.Registration
    {
        try ProgramVersions.registration(
            of: p, index: 0, file: "programs.yaml", stored: stored,
            now: at("2027-01-15T00:00:00Z"), allowOlder: allowOlder)
    }

    @Test func anUnchangedFileKeepsItsVersionAndItsEffectiveTime() throws {
        let p = try load(effectiveFrom: nil)
        let v1 = stored(1, "2026-12-01T00:00:00Z", canonical: p.canonicalForm)
        #expect(try register(p, [v1]) == .known(version: 1))
    }

    @Test func aNewVersionIsInForceFromItsTimeOrFromNowWithoutOne() throws {
        let v1 = stored(1, "2026-12-01T00:00:00Z")
        #expect(
            try register(load(effectiveFrom: "2027-02-01T00:00:00Z"), [v1])
                == .new(effectiveFrom: at("2027-02-01T00:00:00Z")))
        #expect(try register(load(effectiveFrom: nil), [v1]) == .new(effectiveFrom: at("2027-01-15T00:00:00Z")))
        #expect(try register(load(effectiveFrom: nil), []) == .new(effectiveFrom: at("2027-01-15T00:00:00Z")))
    }

    @Test func aFileOlderThanTheDatabaseIsRefusedUnlessAllowed() throws {
        let newer = stored(2, "2027-02-01T00:00:00Z")
        let old = try load(effectiveFrom: "2027-01-01T00:00:00Z")
        #expect {
            try register(old, [stored(1, "2026-12-01T00:00:00Z"), newer])
        } throws: { error in
            let text = "\(error)"
            return (error as? ProgramError)?.field == "programs[0].effective_from"
                && text.hasPrefix("programs.yaml: program \"consumer\": effective_from: ")
                && text.contains("2027-01-01T00:00:00Z") && text.contains("version 2")
                && text.contains("2027-02-01T00:00:00Z")
                && text.contains("--allow-older")
        }
        #expect(try register(old, [newer], allowOlder: true) == .new(effectiveFrom: at("2027-01-01T00:00:00Z")))
        // An instance restarted with the old file it registered before: refused as well, the
        // failure this prevents (quietly going back to the old rules).
        let known = stored(1, "2026-12-01T00:00:00Z", canonical: old.canonicalForm)
        #expect(throws: ProgramError.self) { try register(old, [known, newer]) }
        #expect(try register(old, [known, newer], allowOlder: true) == .known(version: 1))
        // Rules without a time, registered now, are older than a version staged for later.
        #expect(throws: ProgramError.self) { try register(load(effectiveFrom: nil), [newer]) }
    }

    @Test func otherRulesAtAnEffectiveTimeAlreadyTakenAreRefusedEvenWhenOlderIsAllowed() throws {
        let p = try load(effectiveFrom: "2027-02-01T00:00:00Z")
        #expect {
            try register(p, [stored(2, "2027-02-01T00:00:00Z")], allowOlder: true)
        } throws: { error in
            "\(error)".contains("2027-02-01T00:00:00Z is already the effective time of version 2")
        }
    }

    /// The in-memory engine (`simulate`, property tests) binds as the store does: by the lead's
    /// time, also for a lead that arrives after a newer version was installed.
    @Test func theEngineBindsLeadsByTheirTime() {
        let start = at("2027-01-01T00:00:00Z")
        let change = at("2027-02-01T00:00:00Z")
        var engine = ReferralEngine(programs: [consumerProgram()], start: start, codeFor: testCode)
        engine.receive(
            .serviceActivated(
                accountId: "r1", at: start, householdId: "hh-r1", contactHash: "c-r1", segment: .consumer), at: start)
        var next = consumerProgram()
        next.referrerReward.amountMinor = 9000
        next.effectiveFrom = change
        engine.install([next])
        // A restart with the unchanged file: no new version.
        engine.install([next])
        func lead(_ id: String, _ t: Instant, arriving: Instant) {
            engine.receive(
                .leadCreated(
                    leadId: id, at: t, code: testCode("r1"), householdId: "hh-\(id)", contactHash: "c-\(id)",
                    segment: .consumer), at: arriving)
        }
        lead("before", change - .days(3), arriving: change + .days(2))  // late: arrives after the change
        lead("after", change + .days(1), arriving: change + .days(2))
        lead("at", change, arriving: change + .days(2))
        let versions = Dictionary(uniqueKeysWithValues: engine.referrals.map { ($0.leadId, $0.programVersion) })
        #expect(versions == ["before": 1, "after": 2, "at": 2])
        #expect(engine.referrals.first { $0.leadId == "after" }?.program.referrerReward.amountMinor == 9000)
    }
}
