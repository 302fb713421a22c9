import Foundation
import Postgres
import ReferralCore
import ReferralStore
import ReferralTestKit
import ReferralWorker
import Testing

/// Program versions every instance agrees on (issue #20): two workers started with different
/// programs files share one inbox, and each lead is bound to the version its own time says.
/// Every time is fixed (2020 and 2030): nothing depends on today's date.
@Suite(.serialized, .tearsDownTestBeds) struct ProgramVersionTimeTests {
    /// Version 1 in force from 2020; version 2 (another referrer reward) from `change`.
    static let change = Instant(rfc3339: "2030-03-01T00:00:00Z")!

    static func programsFile(effectiveFrom: String, referrerAmount: Int) throws -> String {
        let yaml = FastPrograms.yaml()
            .replacingOccurrences(
                of: "    segment: consumer\n", with: "    segment: consumer\n    effective_from: \(effectiveFrom)\n"
            )
            .replacingOccurrences(of: "amount_minor: 5000", with: "amount_minor: \(referrerAmount)")
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("programs-\(UUID().uuidString).yaml")
            .path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func worker(_ bed: TestBed, file: String, name: String, allowOlder: Bool = false) throws -> Task<
        Void, any Error
    > {
        var settings = bed.settings
        settings.allowOlderPrograms = allowOlder
        let programs = try ProgramBook.load(path: file)
        return bed.own(
            Task {
                try await Worker(
                    settings: settings, programs: programs, logger: TestServices.logger, instanceName: name
                )
                .run()
            })
    }

    static func stop(_ task: Task<Void, any Error>) async {
        task.cancel()
        _ = await task.result
    }

    static func versions(_ bed: TestBed) async throws -> [Int: String] {
        Dictionary(
            uniqueKeysWithValues: try await bed.db.run { c in
                try ProgramStore.versions(c, programId: "fast").map { ($0.version, $0.effectiveFrom.rfc3339) }
            })
    }

    /// Sends leads dated on both sides of `change` and waits until each is bound; returns the
    /// version each lead got. Each lead on a day of its own: the per-day lead limit rejects, it
    /// does not leave unbound, but one story per day keeps the referrals plain.
    static func sendLeads(
        _ s: inout Scenario, _ bed: TestBed, code: String, prefix: String,
        days: [Int]
    ) async throws -> [String: Int] {
        var expected: [String] = []
        for day in days {
            let lead = "\(prefix)\(day < 0 ? "m" : "p")\(abs(day))"
            expected.append(lead)
            try await s.send(
                "provisioning.lead.created",
                [
                    "lead_id": lead, "referral_code": code, "segment": "consumer",
                    "household_id": "hh-\(lead)",
                ],
                at: (change + .days(Int64(day)) + .hours(1)).rfc3339)
        }
        let leads = expected
        var bound: [String: Int] = [:]
        let all = try await bed.eventually(timeout: .seconds(30)) {
            bound = Dictionary(
                uniqueKeysWithValues: try await bed.db.run { c in
                    try c.query(
                        "SELECT lead_id, program_version::int8 AS v FROM referrals WHERE lead_id = ANY($1::text[])",
                        [.textArray(leads)]
                    )
                    .map { (try $0.decode("lead_id", as: String.self), Int(try $0.decode("v", as: Int64.self))) }
                })
            return bound.count == expected.count
        }
        #expect(all, "bound \(bound.keys.sorted()) of \(expected)")
        return bound
    }

    static func expectByTime(_ bound: [String: Int]) {
        for (lead, version) in bound {
            // `m` leads are dated before the change, `p` leads on or after it.
            let before = lead.split(separator: "-").last?.first == "m"
            #expect(version == (before ? 1 : 2), "\(lead) got version \(version)")
        }
    }

    @Test func twoInstancesWithDifferentFilesBindEveryLeadByItsTime() async throws {
        let bed = try await TestBed.make()
        let oldFile = try Self.programsFile(effectiveFrom: "2020-01-01T00:00:00Z", referrerAmount: 5000)
        let newFile = try Self.programsFile(effectiveFrom: Self.change.rfc3339, referrerAmount: 7000)

        // Instance A starts with the old file, then B with the new one while A runs.
        var a = try Self.worker(bed, file: oldFile, name: "referrald-a")
        #expect(try await bed.eventually { try await Self.versions(bed).count == 1 })
        var b = try Self.worker(bed, file: newFile, name: "referrald-b")
        #expect(try await bed.eventually { try await Self.versions(bed).count == 2 })
        let registered = try await Self.versions(bed)
        #expect(registered == [1: "2020-01-01T00:00:00Z", 2: Self.change.rfc3339])

        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "acct-R", "activated_at": "2020-06-01T00:00:00Z", "household_id": "hh-R",
                "segment": "consumer",
            ])
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 1 }
        let code = try #require(seen.of("referral.code.issued").first?.data["code"] as? String)

        // A alone, whose file does not have version 2: leads after the change still get it.
        await Self.stop(b)
        Self.expectByTime(try await Self.sendLeads(&s, bed, code: code, prefix: "a-", days: [-3, -2, 0, 2]))

        // B alone, restarted with its unchanged file: no new version, no effective time moved;
        // leads before the change get version 1, which B's file does not have.
        await Self.stop(a)
        b = try Self.worker(bed, file: newFile, name: "referrald-b")
        Self.expectByTime(try await Self.sendLeads(&s, bed, code: code, prefix: "b-", days: [-5, -4, 4, 5]))
        #expect(try await Self.versions(bed) == registered)

        // A restarted with its old file is refused: it would have gone back to version 1.
        let refused = try Self.worker(bed, file: oldFile, name: "referrald-a")
        await #expect {
            try await refused.value
        } throws: { error in
            let text = "\(error)"
            return error is ProgramError && text.contains("program \"fast\"") && text.contains("2020-01-01T00:00:00Z")
                && text.contains(Self.change.rfc3339) && text.contains("--allow-older")
        }
        // Allowed, it registers nothing new, and both instances together still bind by time.
        a = try Self.worker(bed, file: oldFile, name: "referrald-a", allowOlder: true)
        let both = try await Self.sendLeads(&s, bed, code: code, prefix: "ab-", days: Array(-12 ... -7) + Array(7...12))
        Self.expectByTime(both)
        #expect(try await Self.versions(bed) == registered)

        await Self.stop(a)
        await Self.stop(b)
    }

    /// A running instance whose file a newer version overtook is refused only at its next start:
    /// a lost database connection (a PostgreSQL restart during the rollout) reconnects and keeps
    /// binding by time, instead of ending the instance with exit 78, which systemd does not restart.
    @Test func aReconnectDoesNotRefuseTheFileTheInstanceStartedWith() async throws {
        let bed = try await TestBed.make()
        let oldFile = try Self.programsFile(effectiveFrom: "2020-01-01T00:00:00Z", referrerAmount: 5000)
        let newer = try ProgramBook.load(
            path: try Self.programsFile(effectiveFrom: Self.change.rfc3339, referrerAmount: 7000))
        let a = try Self.worker(bed, file: oldFile, name: "referrald-a")
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "acct-R", "activated_at": "2020-06-01T00:00:00Z", "household_id": "hh-R",
                "segment": "consumer",
            ])
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 1 }
        let code = try #require(seen.of("referral.code.issued").first?.data["code"] as? String)
        _ = try await bed.db.transaction { c in try ProgramStore.registerPrograms(c, newer.programs, file: newer.file) }

        let terminated = try await bed.admin.query(
            """
            SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int8 AS n FROM pg_stat_activity
            WHERE application_name = 'referrald-a' AND datname = $1
            """, [.text(bed.name)])
        #expect(try terminated.first?.decode("n", as: Int64.self) ?? 0 > 0)
        Self.expectByTime(try await Self.sendLeads(&s, bed, code: code, prefix: "r-", days: [-2, 2]))
        #expect(
            try await bed.eventually {
                try await bed.count("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'referrald-a'") > 0
            })
        await Self.stop(a)
    }

    /// The same rules again are no new version; a second version at a time already taken by
    /// other rules is refused before anything is written, and a new time for them is accepted.
    @Test func registrationKeepsVersionsAndRefusesAClashingEffectiveTime() async throws {
        let bed = try await TestBed.make()
        let first = try ProgramBook.load(
            path: try Self.programsFile(effectiveFrom: Self.change.rfc3339, referrerAmount: 5000))
        let clash = try ProgramBook.load(
            path: try Self.programsFile(effectiveFrom: Self.change.rfc3339, referrerAmount: 6000))
        let v1 = try await bed.db.transaction { c in
            try ProgramStore.registerPrograms(c, first.programs, file: first.file)
        }
        let again = try await bed.db.transaction { c in
            try ProgramStore.registerPrograms(c, first.programs, file: first.file)
        }
        #expect(v1 == ["fast": 1] && again == v1)
        await #expect {
            try await bed.db.transaction { c in
                try ProgramStore.registerPrograms(c, clash.programs, file: clash.file, allowOlder: true)
            }
        } throws: { error in
            "\(error)".hasPrefix(
                "\(clash.file): program \"fast\": effective_from: \(Self.change.rfc3339) is already the effective time of version 1"
            )
        }
        #expect(try await Self.versions(bed) == [1: Self.change.rfc3339])
    }

    /// The commands: `run` exits 78 (EX_CONFIG, no restart loop) on a file older than the
    /// database, naming the program, both times and `--allow-older`; `check` says the same;
    /// `programs list` shows every version with its times, and which is in force at a given time.
    @Test func runRefusesAnOlderFileAndProgramsListShowsTheVersions() async throws {
        let bed = try await TestBed.make()
        let oldFile = try Self.programsFile(effectiveFrom: "2020-01-01T00:00:00Z", referrerAmount: 5000)
        let newFile = try Self.programsFile(effectiveFrom: Self.change.rfc3339, referrerAmount: 7000)
        for file in [oldFile, newFile] {
            let book = try ProgramBook.load(path: file)
            _ = try await bed.db.transaction { c in try ProgramStore.registerPrograms(c, book.programs, file: book.file)
            }
        }
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
            "referrald")
        var env = ProcessInfo.processInfo.environment
        env.merge(bed.environment) { _, new in new }
        env["REFERRALD_HTTP_PORT"] = "0"
        env["REFERRALD_PROGRAMS_FILE"] = oldFile
        for command in [["run"], ["check"]] {
            let result = try await Subprocess.run(binary, command, environment: env)
            let text = result.errors
            #expect(result.status == (command == ["run"] ? 78 : 1), "\(command): \(result.status) \(text)")
            #expect(
                text.contains("\(oldFile): program \"fast\": effective_from:") && text.contains("2020-01-01T00:00:00Z")
                    && text.contains(Self.change.rfc3339) && text.contains("--allow-older"), "\(command): \(text)")
        }
        #expect(try await Self.versions(bed).count == 2)  // the refused file wrote nothing

        let listed = try await Subprocess.run(binary, ["programs", "list"], environment: env)
        #expect(listed.status == 0, "\(listed.errors)")
        let lines = listed.output.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("program  version  effective_from") == true, "\(listed.output)")
        #expect(
            lines.count == 3 && lines[1].hasPrefix("fast     1        2020-01-01T00:00:00Z")
                && lines[2].hasPrefix("fast     2        \(Self.change.rfc3339)"), "\(listed.output)")
        // In force at a given time: the version that binds a lead dated then.
        for (t, version) in [(Self.change - .seconds(1), 1), (Self.change, 2)] {
            let rows = try await ProgramVersionsListing.rows(
                settings: bed.settings, now: t, logger: TestServices.logger)
            #expect(rows.filter(\.inForce).map(\.version.version) == [version], "at \(t)")
        }
    }
}
