import Foundation
import ReferralCore
import Testing

/// Asks and follow-ups through RabbitMQ and PostgreSQL, with programs whose durations are seconds.
@Suite(.serialized, .tearsDownTestBeds) struct AskTests {
    /// Business accounts ask only on happy moments, so each test below sees exactly the ask its
    /// moment or suppression rule produces (no post-activation ask in the way).
    static let momentsOnly = Scenario.AskProgram(moments: "[speed_test, support_win, bill_savings]")

    @Test func eachMomentAsksOnceAndTheRulesSuppress() async throws {
        let bed = try await TestBed.make([
            "REFERRALD_PROGRAMS_FILE": try Scenario.askPrograms(consumer: .init(), business: Self.momentsOnly)
        ])
        let worker = bed.startWorker()
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        let accounts = [
            "m-pa", "m-pi", "m-st", "m-slow", "m-sw", "m-bs", "s-opt", "s-ticket", "s-arrears", "s-cancel", "s-erased",
        ]
        // An install reported before the activation, as provisioning does: the activation then
        // does not earn a post_activation ask (the install delay must not be defeated).
        try await s.send("provisioning.install.completed", ["account_id": "m-pi", "completed_at": Scenario.time()])
        for a in accounts {
            let consumer = a == "m-pa" || a == "m-pi"
            try await s.send(
                "provisioning.service.activated",
                [
                    "account_id": a, "activated_at": Scenario.time(-60), "segment": consumer ? "consumer" : "business",
                ])
        }
        // post_install comes at the install's time + delay_after_install (2 s).
        // Suppressions first, then the happy moment they must hold back.
        try await s.send("crm.preferences.changed", ["account_id": "s-opt", "referral_prompts": false])
        try await s.send("crm.ticket.opened", ["account_id": "s-ticket", "ticket_id": "t-1"])
        try await s.send(
            "billing.invoice.overdue", ["account_id": "s-arrears", "invoice_id": "i-1", "days_overdue": 9])
        try await s.send("provisioning.service.cancelled", ["account_id": "s-cancel", "cancelled_at": Scenario.time()])
        try await s.send("crm.customer.erased", ["account_id": "s-erased"])
        for a in ["m-st", "s-opt", "s-ticket", "s-arrears", "s-cancel", "s-erased"] {
            try await s.send(
                "provisioning.speedtest.completed",
                ["account_id": a, "measured_down_mbps": 480.5, "plan_down_mbps": 500])
        }
        try await s.send(
            "provisioning.speedtest.completed",
            ["account_id": "m-slow", "measured_down_mbps": 300, "plan_down_mbps": 500])
        try await s.send("crm.ticket.resolved", ["account_id": "m-sw", "ticket_id": "t-9", "csat": 5])
        try await s.send(
            "billing.invoice.paid",
            [
                "account_id": "m-bs", "invoice_id": "i-7", "amount_minor": 5000, "currency": "USD", "sequence": 5,
                "credits_minor": 2500,
            ])

        try await s.collect(into: &seen) { seen in
            ["m-pa", "m-pi", "m-st", "m-sw", "m-bs"].allSatisfy { !seen.asks($0).isEmpty }
        }
        #expect(seen.asks("m-pa") == ["post_activation"])
        #expect(seen.asks("m-pi") == ["post_install"])
        #expect(seen.asks("m-st") == ["speed_test"])
        #expect(seen.asks("m-sw") == ["support_win"])
        #expect(seen.asks("m-bs") == ["bill_savings"])
        for a in ["m-slow", "s-opt", "s-ticket", "s-arrears", "s-cancel", "s-erased"] {
            #expect(seen.asks(a).isEmpty, "\(a) must not be asked: \(seen.asks(a))")
        }
        // The rules are checked when the ask is due: once the ticket is resolved (CSAT 3, not a
        // support win itself), the held speed-test ask goes out.
        try await s.send("crm.ticket.resolved", ["account_id": "s-ticket", "ticket_id": "t-1", "csat": 3])
        try await s.collect(into: &seen) { !$0.asks("s-ticket").isEmpty }
        #expect(seen.asks("s-ticket") == ["speed_test"])

        let ask = try #require(seen.of("referral.ask.due").first { $0.data["account_id"] as? String == "m-st" })
        let code = try #require(ask.data["code"] as? String)
        #expect(ask.data["share_url"] as? String == "https://example.net/business/\(code)")
        #expect(ask.data["friend_offer_text"] as? String == "Join with my link: priority installation and a credit.")
        #expect(try await bed.count("SELECT count(*) FROM asks") == Int64(seen.of("referral.ask.due").count))
        try await Scenario.expectSchemaValid(seen)
        worker.cancel()
        _ = await worker.result
    }

    @Test func minGapSpacesAsksMaxPerYearCapsThemAndPeriodicAsksRepeat() async throws {
        let bed = try await TestBed.make([
            "REFERRALD_PROGRAMS_FILE": try Scenario.askPrograms(
                consumer: .init(
                    moments: "[post_activation, speed_test, periodic]", minGap: "2s", maxPerYear: 3, periodicEvery: "3s"
                ))
        ])
        let worker = bed.startWorker()
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        try await s.send(
            "provisioning.service.activated",
            ["account_id": "g-1", "activated_at": Scenario.time(), "segment": "consumer"])
        // A speed test right after the activation ask: due now, but held by min_gap.
        try await s.send(
            "provisioning.speedtest.completed", ["account_id": "g-1", "measured_down_mbps": 99, "plan_down_mbps": 100])
        try await s.collect(into: &seen, timeout: .seconds(25)) { $0.asks("g-1").count >= 3 }
        // Then nothing more: max_per_year is 3.
        try await s.collect(into: &seen, timeout: .seconds(5)) { _ in false }
        let asks = seen.of("referral.ask.due").filter { $0.data["account_id"] as? String == "g-1" }
        // The activation and the speed test are due together: the stronger moment (speed_test)
        // goes first, the other after min_gap, then the periodic one; max_per_year stops there.
        #expect(asks.map { $0.data["moment"] as? String ?? "" } == ["speed_test", "post_activation", "periodic"])
        let sentTimes = try asks.map { try #require(Instant(rfc3339: $0.time)) }
        for (a, b) in zip(sentTimes, sentTimes.dropFirst()) {
            #expect(b - a >= .seconds(2), "asks \(a) and \(b) are closer than min_gap")
        }
        worker.cancel()
        _ = await worker.result
    }

    @Test func stalledReferralsGetOneFollowupPerStallAndExpire() async throws {
        let bed = try await TestBed.make([
            "REFERRALD_PROGRAMS_FILE": try Scenario.askPrograms(
                consumer: .init(
                    moments: "[speed_test]", stalledAfter: "2s", attributionWindow: "6s"))
        ])
        let worker = bed.startWorker()
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        try await s.send(
            "provisioning.service.activated",
            ["account_id": "f-r", "activated_at": Scenario.time(-60), "segment": "consumer"])
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 1 }
        let code = try #require(seen.of("referral.code.issued").first?.data["code"] as? String)
        try await s.send(
            "provisioning.lead.created", ["lead_id": "f-lead", "referral_code": code, "household_id": "hh-f"])
        try await s.collect(into: &seen) { $0.of("referral.lead.followup_due").count >= 1 }
        try await s.send("provisioning.order.placed", ["lead_id": "f-lead", "account_id": "f-friend"])
        try await s.collect(into: &seen) { $0.of("referral.lead.followup_due").count >= 2 }
        let followups = seen.of("referral.lead.followup_due").map { $0.data["stage"] as? String ?? "" }
        #expect(followups == ["lead", "ordered"])
        // No milestone inside the 6 s attribution window: the referral expires.
        try await s.collect(into: &seen, timeout: .seconds(15)) { seen in
            seen.of("referral.status.changed").contains { $0.data["to"] as? String == "expired" }
        }
        #expect(seen.of("referral.status.changed").contains { $0.data["to"] as? String == "expired" })
        #expect(seen.of("referral.lead.followup_due").count == 2, "one follow-up per stall, none after expiry")
        try await Scenario.expectSchemaValid(seen)
        worker.cancel()
        _ = await worker.result
    }
}
