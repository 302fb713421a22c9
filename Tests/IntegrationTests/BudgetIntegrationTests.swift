import Foundation
import ReferralCore
import ReferralWorker
import Synchronization
import Testing

/// A program's monthly budget through the real worker, broker and database: once the month's
/// commitment reaches `pause_asks_at`, asks are held while rewards and friend offers keep
/// flowing; after the month's turn each held ask goes out at its account's release time.
@Suite(.serialized, .tearsDownTestBeds) struct BudgetIntegrationTests {
    /// Starts at a fixed instant and runs with real time; `jump(to:)` moves it forward, as the
    /// month's turn and the accounts' release times are days away.
    final class SteppingClock: ReferralCore.Clock {
        let base = Instant(rfc3339: "2030-03-31T12:00:00Z")!
        let started = ContinuousClock.now
        let offset = Mutex(Span(microseconds: 0))
        func now() -> Instant {
            base + Span(microseconds: Int64((ContinuousClock.now - started).inSeconds * 1_000_000))
                + offset.withLock { $0 }
        }
        func jump(to t: Instant) {
            let d = t - now()
            offset.withLock { $0 = $0 + d }
        }
        var text: String { now().rfc3339 }
    }

    @Test func asksStopAtTheThresholdRewardsKeepFlowingAndAsksResumeAfterTheTurn() async throws {
        let bed = try await TestBed.make([
            "REFERRALD_PROGRAMS_FILE": try Scenario.askPrograms(
                consumer: .init(
                    moments: "[post_activation]", hold: "2s", budget: "{ monthly_minor: 10000, pause_asks_at: 0.5 }"),
                business: .init(moments: "[speed_test]"))
        ])
        let clock = SteppingClock()
        let settings = bed.settings
        let programs = try bed.programs()
        let worker = bed.own(
            Task {
                try await Worker(
                    settings: settings, programs: programs, logger: TestServices.logger, clock: clock,
                    instanceName: "referrald-test"
                ).run()
            })
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []

        // Under budget: the referrer's activation ask goes out, and its code is issued.
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "bud-r", "activated_at": clock.text, "segment": "consumer", "household_id": "hh-r",
            ], at: clock.text)
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "bus-1", "activated_at": clock.text, "segment": "business",
            ], at: clock.text)
        try await s.collect(into: &seen) { !$0.asks("bud-r").isEmpty && $0.of("referral.code.issued").count == 2 }
        #expect(seen.asks("bud-r") == ["post_activation"])
        let code = try #require(
            seen.of("referral.code.issued").first { $0.data["account_id"] as? String == "bud-r" }?
                .data["code"] as? String)

        // A friend's activation commits 7,500 of the 10,000 (past 0.5): from then on asks are held.
        try await s.send(
            "provisioning.lead.created", ["lead_id": "bud-l1", "referral_code": code, "household_id": "hh-f1"],
            at: clock.text)
        try await s.send("provisioning.order.placed", ["lead_id": "bud-l1", "account_id": "bud-f1"], at: clock.text)
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "bud-f1", "activated_at": clock.text, "segment": "consumer", "household_id": "hh-f1",
            ], at: clock.text)
        // Rewards are promises kept: both are issued after the 2 s hold, whatever the budget.
        try await s.collect(into: &seen) { $0.of("referral.reward.issued").count == 2 }
        #expect(
            seen.of("referral.reward.issued").compactMap { $0.data["amount_minor"] as? Int }.sorted() == [2500, 5000])
        #expect(
            try await bed.count(
                """
                SELECT sum(committed_minor)::int8 FROM budget_counters WHERE program_id = 'consumer' AND month = '2030-03-01'
                """) == 7500)

        // Held: another customer's activation ask. Still granted: a new friend's offer. The
        // business program has no budget: its ask, sent after, proves the held one was decided.
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "bud-a2", "activated_at": clock.text, "segment": "consumer", "household_id": "hh-a2",
            ], at: clock.text)
        try await s.send(
            "provisioning.lead.created", ["lead_id": "bud-l2", "referral_code": code, "household_id": "hh-f2"],
            at: clock.text)
        try await s.send(
            "provisioning.speedtest.completed",
            [
                "account_id": "bus-1", "measured_down_mbps": 480.5,
                "plan_down_mbps": 500,
            ], at: clock.text)
        try await s.collect(into: &seen) {
            !$0.asks("bus-1").isEmpty && $0.of("referral.friend_offer.granted").count == 2
        }
        #expect(seen.asks("bud-a2").isEmpty)
        #expect(seen.asks("bud-f1").isEmpty)
        #expect(try await bed.count("SELECT count(*) FROM asks_held WHERE account_id IN ('bud-a2', 'bud-f1')") == 2)

        // Re-planned: each account wakes at its own release time in April, not at midnight.
        let releases = ["bud-a2", "bud-f1"].map { ProgramBudget.hold(accountId: $0, now: clock.now()).release }
        for (account, release) in zip(["bud-a2", "bud-f1"], releases) {
            #expect(release > Instant(rfc3339: "2030-04-01T00:00:00Z")!)
            #expect(
                try await bed.count(
                    """
                    SELECT (extract(epoch FROM due_at) * 1000000)::int8 FROM account_timers WHERE account_id = '\(account)'
                    """) == release.microseconds)
        }
        clock.jump(to: releases.max()! + .seconds(1))
        try await s.collect(into: &seen) { !$0.asks("bud-a2").isEmpty && !$0.asks("bud-f1").isEmpty }
        #expect(seen.asks("bud-a2") == ["post_activation"])
        #expect(seen.asks("bud-f1") == ["post_activation"])
        for (account, release) in zip(["bud-a2", "bud-f1"], releases) {
            let ask = try #require(seen.of("referral.ask.due").first { $0.data["account_id"] as? String == account })
            #expect(try #require(Instant(rfc3339: ask.time)) >= release)
        }
        // Once their freshness ended, the held rows are swept (counted as sent, not dropped).
        clock.jump(to: Instant(rfc3339: "2030-04-09T00:00:00Z")!)
        #expect(try await bed.eventually { try await bed.count("SELECT count(*) FROM asks_held") == 0 })
        try await Scenario.expectSchemaValid(seen)
        worker.cancel()
        _ = await worker.result
    }
}
