import Foundation
import Prometheus
import ReferralCore
import ReferralStore
import ReferralWorker
import Testing

/// The metrics the referral alerts read (deploy/prometheus/alerts.yaml): rejections and
/// unattributed leads counted once per committed decision, and the rewards billing has not
/// applied, against the real services with an in-process worker on a clock the test moves.
@Suite(.serialized, .tearsDownTestBeds) struct ReferralMetricsTests {
    /// The worker's time: decisions, timers and the gauges' samples follow it, not the calendar.
    final class SteppedClock: ReferralCore.Clock {
        private let current: OpsLocked<Instant>
        init(_ start: Instant) { current = OpsLocked(start) }
        func now() -> Instant { current.withLock { $0 } }
        func advance(_ span: Span) { current.withLock { $0 = $0 + span } }
    }

    static let start = Instant(rfc3339: "2030-01-07T09:00:00Z")!

    /// Publishes one upstream event with an explicit id, so that the same event can be delivered twice.
    static func send(_ bed: TestBed, id: String, _ type: String, at time: Instant, _ data: [String: Any]) async throws {
        let event: [String: Any] = [
            "specversion": "1.0", "id": "\(bed.name)-\(id)", "source": String(type.split(separator: ".")[0]),
            "type": type, "time": time.rfc3339, "datacontenttype": "application/json", "data": data,
        ]
        try await bed.publish(Array(try JSONSerialization.data(withJSONObject: event)), type: type)
    }

    @Test func rejectionsAndUnattributedLeadsCountOnceAndUnappliedRewardsFollowBilling() async throws {
        let bed = try await TestBed.make(["REFERRALD_PROGRAMS_FILE": try Scenario.fastPrograms(hold: "1h")])
        let clock = SteppedClock(Self.start)
        let registry = PrometheusCollectorRegistry()
        let metrics = WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry))
        let (settings, programs) = (bed.settings, try bed.programs())
        let worker = Task {
            try await Worker(
                settings: settings, programs: programs, logger: TestServices.logger, clock: clock,
                instanceName: "referrald-test", metrics: metrics
            ).run()
        }
        func metric(_ name: String, _ labels: [String: String] = [:]) -> Double? {
            Ops.metric(registry.emitToString(), name, labels)
        }
        /// Both gauges from one scrape: they are recorded one after the other.
        func unapplied() -> (count: Double?, oldestAge: Double?) {
            let text = registry.emitToString()
            return (
                Ops.metric(text, "referrald_rewards_unapplied"),
                Ops.metric(text, "referrald_reward_unapplied_oldest_age_seconds")
            )
        }
        let s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        let t0 = Self.start

        try await Self.send(
            bed, id: "act-r", "provisioning.service.activated", at: t0 - .days(1),
            [
                "account_id": "acct-R", "activated_at": (t0 - .days(1)).rfc3339, "household_id": "hh-R",
                "segment": "consumer",
            ])
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 1 }
        let code = try #require(seen.of("referral.code.issued").first?.data["code"] as? String)
        var rng = SystemRandomNumberGenerator()
        let unissued = CodeIssuance.draw(using: &rng).canonical
        try #require(unissued != code)

        // A lead from the referrer's own household is rejected; each of the next three stays
        // unattributed for its own reason. Two of them are delivered twice.
        let leadTime = t0 - .hours(1)
        let rejected: [String: Any] = [
            "lead_id": "lead-rej", "referral_code": code, "household_id": "hh-R", "segment": "consumer",
        ]
        try await Self.send(bed, id: "lead-rej", "provisioning.lead.created", at: leadTime, rejected)
        try await Self.send(bed, id: "lead-none", "provisioning.lead.created", at: leadTime, ["lead_id": "lead-none"])
        try await Self.send(
            bed, id: "lead-bad", "provisioning.lead.created", at: leadTime,
            ["lead_id": "lead-bad", "referral_code": "share-link-broke"])
        try await Self.send(
            bed, id: "lead-unknown", "provisioning.lead.created", at: leadTime,
            ["lead_id": "lead-unknown", "referral_code": unissued])
        try await Self.send(bed, id: "lead-rej", "provisioning.lead.created", at: leadTime, rejected)
        try await Self.send(
            bed, id: "lead-unknown", "provisioning.lead.created", at: leadTime,
            ["lead_id": "lead-unknown", "referral_code": unissued])
        let leadType = "provisioning.lead.created"
        #expect(
            try await bed.eventually {
                metric("referrald_events_consumed_total", ["type": leadType, "outcome": "duplicate"]) == 2
            }, "\(registry.emitToString())")
        #expect(metric("referrald_events_consumed_total", ["type": leadType, "outcome": "applied"]) == 4)
        #expect(metric("referrald_referrals_rejected_total", ["reason": "same_household"]) == 1)
        #expect(metric("referrald_leads_unattributed_total", ["reason": "missing_code"]) == 1)
        #expect(metric("referrald_leads_unattributed_total", ["reason": "malformed_code"]) == 1)
        #expect(metric("referrald_leads_unattributed_total", ["reason": "unknown_code"]) == 1)
        // Every reason is exported from the start, so that a burst of a new one shows in increase().
        #expect(metric("referrald_referrals_rejected_total", ["reason": "too_many_leads"]) == 0)
        try await s.collect(into: &seen) {
            $0.of("referral.status.changed").contains { $0.data["to"] as? String == "rejected" }
        }
        #expect(
            seen.of("referral.status.changed").filter { $0.data["to"] as? String == "rejected" }.map {
                $0.data["reason"] as? String
            }
                == ["same_household"])

        // A referral that qualifies: activated 30 min before t0, so the 1 h hold ends at t0 + 30 min.
        try await Self.send(
            bed, id: "lead-f", leadType, at: leadTime,
            ["lead_id": "lead-f", "referral_code": code, "household_id": "hh-F", "segment": "consumer"])
        try await Self.send(
            bed, id: "order-f", "provisioning.order.placed", at: leadTime,
            ["lead_id": "lead-f", "account_id": "acct-F"])
        try await Self.send(
            bed, id: "act-f", "provisioning.service.activated", at: t0 - .minutes(30),
            [
                "account_id": "acct-F", "activated_at": (t0 - .minutes(30)).rfc3339, "household_id": "hh-F",
                "segment": "consumer",
            ])
        try await s.collect(into: &seen) { $0.of("referral.friend_offer.granted").count == 1 }
        #expect(try await bed.eventually { try await bed.count("SELECT count(*) FROM timers") == 1 })
        #expect(metric("referrald_rewards_unapplied") == 0)

        // The hold ends: both rewards are issued at t0 + 1 h, and nobody has applied them 2 h later.
        clock.advance(.hours(1))
        try await s.collect(into: &seen) { $0.of("referral.reward.issued").count == 2 }
        let rewards = seen.of("referral.reward.issued").map {
            (
                $0.data["reward_id"] as? String ?? "", $0.data["account_id"] as? String ?? "",
                $0.data["amount_minor"] as? Int ?? 0
            )
        }
        #expect(try await bed.eventually { metric("referrald_rewards_unapplied") == 2 })
        clock.advance(.hours(2))
        #expect(try await bed.eventually { unapplied() == (2, 7_200) }, "\(unapplied())")

        // Billing applies the first: one left, as old as before. Then the second: none.
        let (first, firstAccount, firstAmount) = rewards[0]
        try await Self.send(
            bed, id: "applied-1", "billing.credit.applied", at: t0 + .hours(3),
            [
                "reward_id": first, "account_id": firstAccount, "amount_minor": firstAmount, "currency": "USD",
            ])
        #expect(
            try await bed.eventually {
                try await bed.count("SELECT count(*) FROM rewards WHERE state = 'applied'") == 1
            })
        clock.advance(.seconds(10))
        #expect(try await bed.eventually { unapplied() == (1, 7_210) }, "\(unapplied())")
        let (second, secondAccount, secondAmount) = rewards[1]
        try await Self.send(
            bed, id: "applied-2", "billing.credit.applied", at: t0 + .hours(3),
            [
                "reward_id": second, "account_id": secondAccount, "amount_minor": secondAmount, "currency": "USD",
            ])
        #expect(
            try await bed.eventually {
                try await bed.count("SELECT count(*) FROM rewards WHERE state = 'applied'") == 2
            })
        clock.advance(.seconds(10))
        #expect(try await bed.eventually { unapplied() == (0, 0) }, "\(unapplied())")
        // Nothing above was rejected or unattributed again.
        #expect(metric("referrald_referrals_rejected_total", ["reason": "same_household"]) == 1)
        #expect(metric("referrald_leads_unattributed_total", ["reason": "unknown_code"]) == 1)

        worker.cancel()
        _ = await worker.result
    }
}
