import Foundation
import Postgres
import ReferralCore
import ReferralStore
import Testing

@testable import ReferralWorker

/// `referrald simulate` over a recorded stream, and `export-events` writing one from the inbox.
@Suite(.serialized, .tearsDownTestBeds) struct ReportSimulateTests {
    static let t0 = Instant(rfc3339: "2026-01-01T00:00:00Z")!
    static let codeA = ReferralCode(randomBits: 1).canonical
    static let codeB = ReferralCode(randomBits: 2).canonical

    static func programs(referrerAmount: Int = 5000, hold: String = "30d", referrerByPlan: String = "") -> [Program] {
        let yaml = """
            programs:
              - id: consumer
                segment: consumer
                currency: USD
                share_url: "https://example.net/r/{code}"
                friend_offer_text: "Priority installation and a $25 credit."
                referrer_reward: { kind: bill_credit, amount_minor: \(referrerAmount)\(referrerByPlan.isEmpty ? "" : ", by_plan: \(referrerByPlan)") }
                friend_reward: { kind: bill_credit, amount_minor: 2500, priority_install: true }
                qualify: { milestone: service_activated, hold: \(hold) }
                attribution_window: 90d
                clawback_window: 60d
                clawback: referrer
                limits: { max_rewards_per_referrer_per_year: 10, max_leads_per_code_per_day: 5 }
                fraud: { reject_same_household: true, reject_same_contact: true }
                asks:
                  moments: [post_install]
                  delay_after_install: 1d
                  min_gap: 30d
                  max_per_year: 4
                  periodic_every: 90d
                followup: { stalled_after: 7d }
            """
        return try! ProgramBook.parse(yaml: yaml, file: "test").programs
    }

    static func line(_ n: Int, _ type: String, day: Double, _ data: [String: Any]) -> String {
        let time = (t0 + Span(microseconds: Int64(day * 86_400_000_000))).rfc3339
        let event: [String: Any] = [
            "specversion": "1.0", "id": "e\(n)", "source": String(type.split(separator: ".")[0]),
            "type": type, "time": time, "datacontenttype": "application/json", "data": data,
        ]
        return String(decoding: try! JSONSerialization.data(withJSONObject: event, options: .sortedKeys), as: UTF8.self)
    }

    static func at(_ day: Double) -> String { (t0 + Span(microseconds: Int64(day * 86_400_000_000))).rfc3339 }

    /// A's activation is in the stream; B activated before it (only its snapshot line says whose
    /// code it is). lead-1 and lead-3 go live, lead-2 shares A's household, lead-4's friend
    /// cancels on day 20.
    static let recorded: String = {
        var lines = [
            #"{"type":"referrald.code.snapshot","account_id":"acct-A","code":"\#(codeA)","program_id":"consumer","issued_at":"\#(at(0))"}"#,
            #"{"type":"referrald.code.snapshot","account_id":"acct-B","code":"\#(codeB)","program_id":"consumer","issued_at":"2025-06-01T00:00:00Z"}"#,
        ]
        var n = 0
        func add(_ type: String, _ day: Double, _ data: [String: Any]) {
            n += 1
            lines.append(line(n, type, day: day, data))
        }
        add(
            "provisioning.service.activated", 0,
            ["account_id": "acct-A", "activated_at": at(0), "household_id": "hh-A", "segment": "consumer"])
        add(
            "provisioning.lead.created", 1,
            ["lead_id": "lead-1", "referral_code": codeA, "household_id": "hh-1", "segment": "consumer"])
        add("provisioning.order.placed", 2, ["lead_id": "lead-1", "account_id": "acct-F1"])
        add(
            "provisioning.lead.created", 3,
            ["lead_id": "lead-2", "referral_code": codeA, "household_id": "hh-A", "segment": "consumer"])
        add(
            "provisioning.lead.created", 4,
            ["lead_id": "lead-3", "referral_code": codeB, "household_id": "hh-3", "segment": "consumer"])
        add(
            "provisioning.service.activated", 5,
            ["account_id": "acct-F1", "activated_at": at(5), "household_id": "hh-1", "segment": "consumer"])
        add("provisioning.order.placed", 5, ["lead_id": "lead-3", "account_id": "acct-F3"])
        add(
            "provisioning.lead.created", 6,
            ["lead_id": "lead-4", "referral_code": codeB, "household_id": "hh-4", "segment": "consumer"])
        add("provisioning.order.placed", 7, ["lead_id": "lead-4", "account_id": "acct-F4"])
        add(
            "provisioning.service.activated", 8,
            ["account_id": "acct-F3", "activated_at": at(8), "household_id": "hh-3", "segment": "consumer"])
        add(
            "provisioning.service.activated", 9,
            ["account_id": "acct-F4", "activated_at": at(9), "household_id": "hh-4", "segment": "consumer"])
        add("provisioning.service.cancelled", 20, ["account_id": "acct-F4", "cancelled_at": at(20)])
        return lines.joined(separator: "\n") + "\n"
    }()

    @Test func aDoubledReferrerRewardDoublesTheReferrerCostAndNothingElse() throws {
        let stream = try Simulate.Stream(ndjson: Self.recorded)
        #expect(stream.events.count == 12 && stream.codes.count == 2)
        let c = Simulate.compare(
            stream, current: Self.programs(), candidate: Self.programs(referrerAmount: 10000),
            until: Self.t0 + .days(60))
        let (a, b) = (c.current, c.candidate)
        // 30-day hold: lead-1 (activated day 5) and lead-3 (day 8) qualify; lead-4 was lost.
        #expect(a.referrerRewards == ["USD": .init(count: 2, amountMinor: 10000)])
        #expect(b.referrerRewards == ["USD": .init(count: 2, amountMinor: 20000)])
        #expect(b.referrerRewards["USD"]!.amountMinor == 2 * a.referrerRewards["USD"]!.amountMinor)
        #expect(a.friendRewards == b.friendRewards && a.friendRewards == ["USD": .init(count: 2, amountMinor: 5000)])
        #expect(a.reversed == b.reversed && a.reversed.isEmpty)
        #expect(b.netCostMinor["USD"]! - a.netCostMinor["USD"]! == 10000)
        #expect(a.referrals == 4 && b.referrals == 4)
        #expect(a.qualified == 2 && b.qualified == 2)
        #expect(a.rejections == ["same_household": 1] && a.rejections == b.rejections)
        #expect(a.stages == ["rewarded": 2, "rejected": 1, "lost": 1] && a.stages == b.stages)
        #expect(a.qualifiedAt == b.qualifiedAt)
        #expect(c.qualifyEarlier.isEmpty && c.qualifyLater.isEmpty)
        let table = Simulate.table(c)
        let row = table.split(separator: "\n").first { $0.contains("referrer reward cost USD") }
        #expect(row?.split(separator: " ").suffix(3) == ["100.00", "200.00", "+100.00"], "\(table)")
    }

    @Test func aShorterHoldReportsTheReferralsThatQualifyEarlier() throws {
        let stream = try Simulate.Stream(ndjson: Self.recorded)
        let c = Simulate.compare(
            stream, current: Self.programs(hold: "30d"), candidate: Self.programs(hold: "5d"),
            until: Self.t0 + .days(60))
        // Referral numbers follow first sight: lead-1 ref-3001, lead-2 ref-3002, lead-3 ref-3003, lead-4 ref-3004.
        #expect(
            c.qualifyEarlier == [
                .init(referralId: "ref-3001", current: Self.at(35), candidate: Self.at(10)),
                .init(referralId: "ref-3003", current: Self.at(38), candidate: Self.at(13)),
                // lead-4's friend cancels on day 20: lost under a 30-day hold, qualified on day 14 (and
                // clawed back) under 5 days.
                .init(referralId: "ref-3004", current: nil, candidate: Self.at(14)),
            ])
        #expect(c.qualifyLater.isEmpty)
        #expect(c.current.qualified == 2 && c.candidate.qualified == 3)
        #expect(c.candidate.reversed == ["USD": .init(count: 1, amountMinor: 5000)])
        #expect(c.candidate.stages == ["rewarded": 2, "rejected": 1, "reversed": 1])

        // Stopped on day 12, the current programs have qualified nobody yet.
        let early = Simulate.compare(
            stream, current: Self.programs(hold: "30d"), candidate: Self.programs(hold: "5d"),
            until: Self.t0 + .days(12))
        #expect(early.current.qualified == 0)
        #expect(early.qualifyEarlier.map(\.referralId) == ["ref-3001"])
        #expect(Simulate.table(early).contains("Qualify earlier under the candidate (1)"))
        let json = try JSONSerialization.jsonObject(with: Data(Simulate.json(early).utf8)) as? [String: Any]
        #expect((json?["qualify_earlier"] as? [[String: Any]])?.first?["referral_id"] as? String == "ref-3001")
    }

    /// Candidate tiers: the friends' plans are in the recorded activations (F1 fiber-1000, F3
    /// fiber-500 first and fiber-1000 a day later, which does not count); a candidate that pays
    /// fiber-1000 more moves that plan's cost alone, and the table shows each plan under both.
    @Test func candidateTiersAreComparedPlanByPlan() throws {
        let withPlans = Self.recorded
            .replacingOccurrences(
                of: #""account_id":"acct-F1","activated_at":"\#(Self.at(5))""#,
                with: #""account_id":"acct-F1","activated_at":"\#(Self.at(5))","plan_id":"fiber-1000""#
            )
            .replacingOccurrences(
                of: #""account_id":"acct-F3","activated_at":"\#(Self.at(8))""#,
                with: #""account_id":"acct-F3","activated_at":"\#(Self.at(8))","plan_id":"fiber-500""#)
        let later = Self.line(
            99, "provisioning.service.activated", day: 9,
            ["account_id": "acct-F3", "activated_at": Self.at(9), "plan_id": "fiber-1000", "segment": "consumer"])
        let stream = try Simulate.Stream(ndjson: withPlans + later + "\n")
        #expect(stream.events.count == 13)
        let current = Self.programs(referrerByPlan: "{ fiber-1000: 8000 }")
        let candidate = Self.programs(referrerByPlan: "{ fiber-1000: 12000, fiber-500: 6000 }")
        let c = Simulate.compare(stream, current: current, candidate: candidate, until: Self.t0 + .days(60))
        #expect(c.byPlanChanged)
        // F1 (fiber-1000): referrer 80.00 → 120.00, friend 25.00; F3 (fiber-500): referrer 50.00
        // (no tier) → 60.00, friend 25.00. Nobody else qualifies.
        #expect(c.current.netCostByPlan == ["fiber-1000": ["USD": 10500], "fiber-500": ["USD": 7500]])
        #expect(c.candidate.netCostByPlan == ["fiber-1000": ["USD": 14500], "fiber-500": ["USD": 8500]])
        let table = Simulate.table(c)
        let row = table.split(separator: "\n").first { $0.contains("net cost, plan fiber-1000 USD") }
        #expect(row?.split(separator: " ").suffix(3) == ["105.00", "145.00", "+40.00"], "\(table)")
        let json = try JSONSerialization.jsonObject(with: Data(Simulate.json(c).utf8)) as? [String: Any]
        let plans = (json?["candidate"] as? [String: Any])?["net_cost_by_plan"] as? [String: [String: Int]]
        #expect(plans?["fiber-500"]?["USD"] == 8500)

        // Same tiers on both sides: the per-plan rows stay out of the table, the JSON keeps them.
        let same = Simulate.compare(stream, current: current, candidate: current, until: Self.t0 + .days(60))
        #expect(!same.byPlanChanged && !Simulate.table(same).contains("plan fiber"))
        #expect(same.candidate.netCostByPlan == same.current.netCostByPlan)
    }

    @Test func aBadLineIsNamedByItsNumber() {
        #expect(throws: Simulate.InputError.self) {
            try Simulate.Stream(ndjson: Self.recorded + "{\"type\":\"nope\"}\n")
        }
        do {
            _ = try Simulate.Stream(ndjson: "\n\nnot json\n")
        } catch let e as Simulate.InputError {
            #expect(e.line == 3)
        } catch { Issue.record("\(error)") }
    }

    /// Through the worker: the exported stream replayed under the same programs gives the rewards
    /// the worker issued, and under a doubled referrer reward twice the referrer cost.
    @Test func exportedEventsReplayToTheWorkersOutcome() async throws {
        let programsFile = try Scenario.fastPrograms(hold: "2s")
        let bed = try await TestBed.make(["REFERRALD_PROGRAMS_FILE": programsFile])
        let worker = bed.startWorker()
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "acct-A", "activated_at": Scenario.time(-86_400), "household_id": "hh-A",
                "segment": "consumer",
            ])
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 1 }
        let code = try #require(seen.of("referral.code.issued").first?.data["code"] as? String)
        try await s.send(
            "provisioning.lead.created", ["lead_id": "lead-1", "referral_code": code, "household_id": "hh-F"])
        try await s.send(
            "provisioning.lead.created", ["lead_id": "lead-2", "referral_code": code, "household_id": "hh-A"])
        try await s.send("provisioning.order.placed", ["lead_id": "lead-1", "account_id": "acct-F"])
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "acct-F", "activated_at": Scenario.time(), "household_id": "hh-F", "segment": "consumer",
            ])
        try await s.collect(into: &seen) { $0.of("referral.reward.issued").count >= 2 }
        worker.cancel()
        _ = await worker.result

        let sink = Sink()
        let count = try await ExportEvents.export(bed.database, from: nil, to: nil) { sink.append($0) }
        #expect(count == 5)
        let lines = sink.text.split(separator: "\n")
        #expect(lines.count == 2 + 5)  // A's and F's codes, then the events
        #expect(lines.prefix(2).allSatisfy { $0.contains("\"type\":\"referrald.code.snapshot\"") })
        #expect(lines[2].contains("provisioning.service.activated") && lines[3].contains("lead-1"))

        let stream = try Simulate.Stream(ndjson: sink.text)
        let current = try ProgramBook.load(path: programsFile).programs
        var doubled = current
        doubled[0].referrerReward.amountMinor *= 2
        let c = Simulate.compare(
            stream, current: current, candidate: doubled, until: SystemClock().now() + .seconds(60))
        let issued = try await bed.count(
            "SELECT coalesce(sum(amount_minor), 0)::int8 FROM rewards WHERE beneficiary = 'referrer'")
        #expect(c.current.referrerRewards["USD"]?.amountMinor == issued)
        #expect(c.candidate.referrerRewards["USD"]?.amountMinor == 2 * issued)
        #expect(c.current.rejections == ["same_household": 1])
        #expect(try await bed.count("SELECT count(*) FROM referrals WHERE reason = 'same_household'") == 1)
    }
}

/// Collects the exporter's output. `@unchecked Sendable`: `bytes` is only touched with `lock` held.
final class Sink: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    func append(_ b: [UInt8]) { lock.withLock { bytes += b } }
    var text: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
}
