import Foundation
import ReferralCore
import ReferralStore
import ReferralWorker
import Testing

/// The operator commands against the real services while a worker runs: each acts, is
/// recorded, is idempotent, and shows in `explain`; a dry run writes nothing.
@Suite(.serialized, .tearsDownTestBeds) struct OperatorIntegrationTests {
    static func who(_ reason: String, dryRun: Bool = false) -> OperatorCommands.Who {
        .init(actor: "support-7", reason: reason, dryRun: dryRun)
    }

    static func now() -> Instant { Instant(microseconds: Int64(Date().timeIntervalSince1970 * 1_000_000)) }

    /// A referrer with a code, under a worker.
    static func start(hold: String) async throws -> (TestBed, Task<Void, any Error>, Scenario, String) {
        let bed = try await TestBed.make(["REFERRALD_PROGRAMS_FILE": try Scenario.fastPrograms(hold: hold)])
        let worker = bed.startWorker()
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "op-r", "activated_at": Scenario.time(-60), "household_id": "hh-op-r",
                "segment": "consumer",
            ])
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 1 }
        let code = try #require(seen.of("referral.code.issued").first?.data["code"] as? String)
        return (bed, worker, s, code)
    }

    /// A friend's lead, order and activation; returns the referral id.
    static func friend(_ s: inout Scenario, _ n: Int, code: String, seen: inout [Scenario.Published]) async throws
        -> String
    {
        try await s.send(
            "provisioning.lead.created",
            ["lead_id": "op-lead-\(n)", "referral_code": code, "household_id": "hh-op-\(n)"])
        try await s.send("provisioning.order.placed", ["lead_id": "op-lead-\(n)", "account_id": "op-f\(n)"])
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "op-f\(n)", "activated_at": Scenario.time(), "household_id": "hh-op-\(n)",
                "segment": "consumer",
            ])
        try await s.collect(into: &seen) { seen in
            seen.of("referral.friend_offer.granted").contains { $0.data["lead_id"] as? String == "op-lead-\(n)" }
        }
        return try #require(
            seen.of("referral.friend_offer.granted")
                .first { $0.data["lead_id"] as? String == "op-lead-\(n)" }?.data["referral_id"] as? String)
    }

    @Test func aBlockedCodeAttributesNoNewLeadUntilUnblocked() async throws {
        let (bed, worker, start, code) = try await Self.start(hold: "30d")
        var s = start
        var seen: [Scenario.Published] = []
        let existing = try await Self.friend(&s, 1, code: code, seen: &seen)
        let blocked = try await OperatorCommands.blockCode(
            settings: bed.settings, code: code.lowercased(), who: Self.who("leaked to a coupon site"),
            now: Self.now(), logger: TestServices.logger)
        #expect(blocked.result == "applied")
        #expect(
            try await OperatorCommands.blockCode(
                settings: bed.settings, code: code, who: Self.who("again"), now: Self.now(),
                logger: TestServices.logger
            ).result == "no-op: already blocked")
        // A new lead with the code: no referral, no offer. Its inbox row commits with the
        // decision, so once it is there the lead was decided.
        try await s.send(
            "provisioning.lead.created", ["lead_id": "op-lead-2", "referral_code": code, "household_id": "hh-op-2"])
        #expect(
            try await bed.eventually {
                try await bed.count("SELECT count(*) FROM inbox WHERE type = 'provisioning.lead.created'") == 2
            })
        #expect(try await bed.count("SELECT count(*) FROM referrals WHERE lead_id = 'op-lead-2'") == 0)
        // The referral that existed is untouched.
        #expect(
            try await bed.count(
                "SELECT count(*) FROM referrals WHERE referral_id = '\(existing)' AND stage <> 'rejected'") == 1)
        _ = try await OperatorCommands.unblockCode(
            settings: bed.settings, code: code, who: Self.who("coupon site took it down"),
            now: Self.now(), logger: TestServices.logger)
        try await s.send(
            "provisioning.lead.created", ["lead_id": "op-lead-3", "referral_code": code, "household_id": "hh-op-3"])
        try await s.collect(into: &seen) { $0.of("referral.friend_offer.granted").count == 2 }
        #expect(
            seen.of("referral.friend_offer.granted").compactMap { $0.data["lead_id"] as? String }.sorted() == [
                "op-lead-1", "op-lead-3",
            ])
        #expect(try await bed.count("SELECT count(*) FROM operator_actions WHERE target = '\(code)'") == 3)
        worker.cancel()
        _ = await worker.result
    }

    @Test func rejectAndReverseByHandAreRecordedOnceAndExplained() async throws {
        let (bed, worker, start, code) = try await Self.start(hold: "2s")
        var s = start
        var seen: [Scenario.Published] = []
        let programs = try bed.programs()
        let rewarded = try await Self.friend(&s, 1, code: code, seen: &seen)
        try await s.collect(into: &seen) { $0.of("referral.reward.issued").count == 2 }
        let n = rewarded.dropFirst(4)

        // Reverse the referrer's reward: reversed once, reason operator; a second time is a no-op.
        let reversed = try await OperatorCommands.reverseReward(
            settings: bed.settings, programs: programs, rewardId: "rwd-\(n)-referrer",
            who: Self.who("duplicate account found by support"),
            now: Self.now(), logger: TestServices.logger)
        #expect(reversed.result == "applied")
        #expect(reversed.events["referral.reward.reversed"] == 1)
        try await s.collect(into: &seen) { !$0.of("referral.reward.reversed").isEmpty }
        #expect(seen.of("referral.reward.reversed").first?.data["reason"] as? String == "operator")
        let again = try await OperatorCommands.reverseReward(
            settings: bed.settings, programs: programs, rewardId: "rwd-\(n)-referrer",
            who: Self.who("clicked twice"), now: Self.now(), logger: TestServices.logger)
        #expect(again.result == "no-op: already reversed")

        // Reject the referral: ended rejected (operator), the friend's reward reversed too.
        let rejected = try await OperatorCommands.rejectReferral(
            settings: bed.settings, programs: programs, referralId: rewarded,
            who: Self.who("fraud ring, ticket 4411"), now: Self.now(),
            logger: TestServices.logger)
        #expect(rejected.result == "applied")
        try await s.collect(into: &seen) { $0.of("referral.reward.reversed").count == 2 }
        #expect(seen.statuses(rewarded).last == "rewarded>rejected")
        #expect(seen.of("referral.status.changed").last?.data["reason"] as? String == "operator")
        let ended = try await OperatorCommands.rejectReferral(
            settings: bed.settings, programs: programs, referralId: rewarded,
            who: Self.who("again"), now: Self.now(), logger: TestServices.logger)
        #expect(ended.result == "no-op: already ended (rejected)")
        #expect(
            try await bed.count("SELECT count(*) FROM rewards WHERE referral_id = '\(rewarded)' AND state = 'reversed'")
                == 2)

        let explained = try await Explain.run(
            settings: bed.settings, id: rewarded, now: Self.now(), logger: TestServices.logger)
        #expect(explained.contains("rejected (operator)"))
        #expect(explained.contains("support-7: referral_reject \(rewarded): fraud ring, ticket 4411 (applied)"))
        #expect(
            explained.contains(
                "support-7: reward_reverse rwd-\(n)-referrer: duplicate account found by support (applied)"))
        try await Scenario.expectSchemaValid(seen)
        worker.cancel()
        _ = await worker.result
    }

    @Test func aDryRunWritesNothing() async throws {
        let (bed, worker, start, code) = try await Self.start(hold: "30d")
        var s = start
        var seen: [Scenario.Published] = []
        let referral = try await Self.friend(&s, 1, code: code, seen: &seen)
        worker.cancel()
        _ = await worker.result
        let db = try await bed.settings.connectDatabase(name: "dry-run-test", logger: TestServices.logger)
        let before = try await ErasureIntegrationTests.dump(db.connection)
        let programs = try bed.programs()
        let dry = [
            try await OperatorCommands.rejectReferral(
                settings: bed.settings, programs: programs, referralId: referral,
                who: Self.who("checking", dryRun: true), now: Self.now(), logger: TestServices.logger),
            try await OperatorCommands.blockCode(
                settings: bed.settings, code: code, who: Self.who("checking", dryRun: true),
                now: Self.now(), logger: TestServices.logger),
            try await OperatorCommands.pauseRewards(
                settings: bed.settings, program: nil, who: Self.who("checking", dryRun: true),
                now: Self.now(), logger: TestServices.logger),
        ]
        #expect(dry.map(\.result) == ["applied", "applied", "applied"])
        #expect(dry[0].events["referral.status.changed"] == 1)
        #expect(dry[0].description.hasPrefix("dry run: would be referral_reject"))
        #expect(try await ErasureIntegrationTests.dump(db.connection) == before)
        await db.close()
    }

    @Test func pausedRewardsWaitAtQualifiedAndAreIssuedOnResume() async throws {
        let (bed, worker, start, code) = try await Self.start(hold: "2s")
        var s = start
        var seen: [Scenario.Published] = []
        let programs = try bed.programs()
        let paused = try await OperatorCommands.pauseRewards(
            settings: bed.settings, program: "fast", who: Self.who("finance check"),
            now: Self.now(), logger: TestServices.logger)
        #expect(paused.result == "applied")
        let referral = try await Self.friend(&s, 1, code: code, seen: &seen)
        // The hold ends; the referral qualifies and waits: statuses go on, rewards do not.
        try await s.collect(into: &seen) { $0.statuses(referral).last == "activated>qualified" }
        #expect(seen.of("referral.reward.issued").isEmpty)
        #expect(try await bed.count("SELECT count(*) FROM rewards") == 0)
        let resumed = try await OperatorCommands.resumeRewards(
            settings: bed.settings, programs: programs, program: "fast",
            who: Self.who("finance done"), now: Self.now(), logger: TestServices.logger)
        #expect(resumed.result == "applied")
        #expect(resumed.events["referral.reward.issued"] == 2)
        try await s.collect(into: &seen) { $0.of("referral.reward.issued").count == 2 }
        let n = referral.dropFirst(4)
        #expect(
            Set(seen.of("referral.reward.issued").compactMap { $0.data["reward_id"] as? String }) == [
                "rwd-\(n)-referrer", "rwd-\(n)-friend",
            ])
        #expect(seen.statuses(referral).last == "qualified>rewarded")
        let twice = try await OperatorCommands.resumeRewards(
            settings: bed.settings, programs: programs, program: "fast",
            who: Self.who("again"), now: Self.now(), logger: TestServices.logger)
        #expect(twice.result == "no-op: not paused")
        #expect(twice.events.isEmpty)
        worker.cancel()
        _ = await worker.result
    }
}
