import Foundation
import ReferralCore
import ReferralWorker
import Testing

@Suite(.tearsDownTestBeds) struct EnrollTests {
    @Test func enrollsAHundredThousandAccountsOnceSpreadOverThePeriod() async throws {
        let bed = try await TestBed.make()
        let n = 100_000
        var csv = "account_id,segment,activated_at,household_id\n"
        for i in 0..<n { csv += "old-\(i),\(i % 5 == 0 ? "business" : "consumer"),2021-03-04T05:06:07Z,hh-old-\(i)\n" }
        // Bad rows: reported with their line numbers, never half-applied.
        csv += "old-x,consumer,not-a-time,\n"
        csv += "old-y,martian,2021-03-04T05:06:07Z,\n"
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("enroll-\(bed.name).csv").path
        try csv.write(toFile: path, atomically: true, encoding: .utf8)
        let start = try #require(Instant(rfc3339: "2030-01-01T00:00:00Z"))
        let programs = try bed.programs()

        let first = try await Enroll.run(
            settings: bed.settings, csvPath: path, start: start, span: .days(30),
            programs: programs, logger: TestServices.logger)
        print("enroll: first run: \(first)")
        #expect(first.enrolled == n)
        #expect(first.codesIssued == n)
        #expect(first.badRows.map(\.line) == [n + 2, n + 3])
        #expect(try await bed.count("SELECT count(*) FROM referral_codes") == Int64(n))
        #expect(try await bed.count("SELECT count(*) FROM referral_codes WHERE account_id IN ('old-x', 'old-y')") == 0)
        // First asks spread over the 30 days, none now: no day gets more than twice its share.
        #expect(
            try await bed.count(
                "SELECT count(*) FROM account_timers WHERE due_at >= '2030-01-01' AND due_at < '2030-01-31'")
                == Int64(n))
        let busiestDay = try await bed.count(
            """
            SELECT max(c) FROM (SELECT count(*) AS c FROM account_timers GROUP BY date_trunc('day', due_at)) d
            """)
        #expect(busiestDay < Int64(2 * n / 30), "busiest day has \(busiestDay) first asks")
        #expect(try await bed.count("SELECT count(*) FROM asks") == 0)

        let second = try await Enroll.run(
            settings: bed.settings, csvPath: path, start: start, span: .days(30),
            programs: programs, logger: TestServices.logger)
        print("enroll: second run: \(second)")
        #expect(second.enrolled == 0 && second.alreadyEnrolled == n && second.codesIssued == 0)
        #expect(try await bed.count("SELECT count(*) FROM referral_codes") == Int64(n))
        #expect(try await bed.count("SELECT count(*) FROM ask_facts WHERE kind = 'enrolled'") == Int64(n))
    }
}
