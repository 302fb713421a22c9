import AMQP
import Foundation
import Postgres

/// Billing's view: every `referral.reward.*` the daemons published, as the observer queue got it.
/// Billing deduplicates by reward_id, so what matters is how many distinct CloudEvents ids carry
/// one reward_id: a republished outbox row keeps its id (harmless at-least-once delivery,
/// counted as "redelivered"); a second id for the same reward_id is a reward paid twice.
actor BillingLedger {
    struct Issued: Sendable {
        var referral: String
        var beneficiary: String
        var cloudEventIds: [String: Int]
    }
    private(set) var issued: [String: Issued] = [:]
    private(set) var reversed = 0
    private(set) var malformed = 0

    func record(_ body: [UInt8]) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let type = object["type"] as? String, let id = object["id"] as? String,
            let data = object["data"] as? [String: Any], let reward = data["reward_id"] as? String
        else {
            malformed += 1
            return
        }
        if type == "referral.reward.reversed" {
            reversed += 1
            return
        }
        var entry =
            issued[reward]
            ?? Issued(
                referral: data["referral_id"] as? String ?? "",
                beneficiary: data["beneficiary"] as? String ?? "", cloudEventIds: [:])
        entry.cloudEventIds[id, default: 0] += 1
        issued[reward] = entry
    }

    var distinctRewards: Int { issued.count }
}

/// Reads the observer queue into the ledger for the whole scenario, reconnecting after the
/// broker faults the scenario causes. A message is acked only after it was recorded, so a
/// broker fault can make it arrive twice (same CloudEvents id: redelivered) but never lose it.
func observe(world: World, into ledger: BillingLedger) -> Task<Void, Never> {
    Task {
        while !Task.isCancelled {
            do {
                let amqp = try await world.services.connectBroker(
                    heartbeatSeconds: 10,
                    connectionName: "referrald-faults billing", logger: quietLogger)
                defer { Task { await amqp.close() } }
                try await amqp.consume(queue: world.observerQueue, prefetch: 1000)
                while !Task.isCancelled {
                    let batch = try await amqp.nextDeliveries(max: 500, wait: .milliseconds(100))
                    for d in batch { await ledger.record(d.body) }
                    if let last = batch.last { try await amqp.ack(last.deliveryTag, multiple: true) }
                }
            } catch {
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
    }
}

/// One scenario's verdict.
struct Verdict: Sendable {
    var scenario: String
    var events: Int
    var faults: Int
    var expected: Int
    var lost: Int
    var duplicated: Int
    var redelivered: Int
    var unexpected: Int
    var recovery: Duration?
    var notes: [String] = []
    var failures: [String] = []

    var passed: Bool { lost == 0 && duplicated == 0 && unexpected == 0 && failures.isEmpty && recovery != nil }
}

enum Oracle {
    /// Waits until billing has every expected reward and the daemons have nothing left to do
    /// (inbox empty, outbox published), then a few seconds more so late duplicates are seen.
    /// Returns how long that took, nil at the timeout.
    static func awaitQuiescence(world: World, ledger: BillingLedger, expected: Int, timeout: Duration) async throws
        -> Duration?
    {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < timeout {
            if await ledger.distinctRewards >= expected,
                await world.queueDepth(world.settings.inboxQueue) == 0,
                (try? await world.count("SELECT count(*) FROM outbox WHERE published_at IS NULL")) == 0,
                (try? await world.count("SELECT count(*) FROM timers WHERE due_at <= now()")) == 0
            {
                let took = ContinuousClock.now - start
                try await Task.sleep(for: .seconds(3))
                return took
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        return nil
    }

    /// Classifies every expected reward as delivered once, lost or duplicated, and every other
    /// reward seen (on the wire or in `rewards`) as unexpected.
    static func judge(
        scenario: String, plan: Plan, world: World, ledger: BillingLedger, faults: Int,
        recovery: Duration?, deadLettersExpected: Bool
    ) async throws -> Verdict {
        let leadOf = try await world.db { c in
            Dictionary(
                uniqueKeysWithValues: try c.query("SELECT referral_id, lead_id FROM referrals").map {
                    (try $0.decode("referral_id", as: String.self), try $0.decode("lead_id", as: String.self))
                })
        }
        let stored = try await world.db { c in
            try c.query("SELECT reward_id, referral_id, beneficiary FROM rewards").map {
                (
                    try $0.decode("reward_id", as: String.self), try $0.decode("referral_id", as: String.self),
                    try $0.decode("beneficiary", as: String.self)
                )
            }
        }
        let expected = plan.expectedRewards
        let issued = await ledger.issued
        var verdict = Verdict(
            scenario: scenario, events: plan.eventCount, faults: faults, expected: expected.count,
            lost: 0, duplicated: 0, redelivered: 0, unexpected: 0, recovery: recovery)
        var delivered = Set<LeadReward>()
        for (rewardId, entry) in issued {
            verdict.duplicated += entry.cloudEventIds.count - 1
            verdict.redelivered += entry.cloudEventIds.values.reduce(0, +) - entry.cloudEventIds.count
            let key = leadOf[entry.referral].map { LeadReward(lead: $0, beneficiary: entry.beneficiary) }
            if let key, expected.contains(key), rewardId == "rwd-\(entry.referral.dropFirst(4))-\(entry.beneficiary)" {
                delivered.insert(key)
            } else {
                verdict.unexpected += 1
                verdict.notes.append("unexpected reward \(rewardId)")
            }
        }
        verdict.lost = expected.subtracting(delivered).count
        verdict.unexpected += await ledger.reversed + ledger.malformed
        if await ledger.reversed > 0 { verdict.failures.append("\(await ledger.reversed) reward(s) reversed") }

        // The ledger in the database: exactly one row per expected (referral, beneficiary).
        var rows = Set<LeadReward>()
        for (rewardId, referral, beneficiary) in stored {
            guard let lead = leadOf[referral], expected.contains(LeadReward(lead: lead, beneficiary: beneficiary))
            else {
                verdict.failures.append("rewards has unexpected row \(rewardId)")
                continue
            }
            if !rows.insert(LeadReward(lead: lead, beneficiary: beneficiary)).inserted {
                verdict.failures.append("rewards has two rows for \(referral) \(beneficiary)")
            }
        }
        if rows.count != expected.count {
            verdict.failures.append("rewards has \(rows.count) of \(expected.count) expected rows")
        }
        // The budget's counters, kept by differences in the decisions' transactions across the
        // crashes and the instances: every reward counted once, at its amount, and none still
        // counted as in its hold once every reward went out.
        let budget = try await world.db { c in
            try c.query(
                """
                SELECT (SELECT coalesce(sum(committed_minor), 0) FROM budget_counters)::int8 AS counted,
                       (SELECT coalesce(sum(amount_minor), 0) FROM rewards)::int8
                         - (SELECT coalesce(sum(amount_minor), 0) FROM rewards WHERE state = 'reversed')::int8 AS ledger,
                       (SELECT count(*) FROM rewards w FULL JOIN budget_commitments b USING (reward_id)
                        WHERE b.reward_id IS NULL OR w.reward_id IS NULL OR NOT b.issued
                           OR b.amount_minor <> w.amount_minor)::int8 AS stray
                """
            ).first.map {
                (
                    try $0.decode("counted", as: Int64.self), try $0.decode("ledger", as: Int64.self),
                    try $0.decode("stray", as: Int64.self)
                )
            }
        }
        if let (counted, ledger, stray) = budget, counted != ledger || stray != 0 {
            verdict.failures.append(
                "budget counters \(counted) against the ledger's \(ledger), \(stray) commitment row(s) not matching a reward"
            )
        }
        if recovery == nil { verdict.failures.append("did not recover within the drain timeout") }
        let dead = await world.queueDepth(world.settings.deadLetterQueue) ?? 0
        if !deadLettersExpected, dead > 0 {
            verdict.failures.append("\(dead) message(s) dead-lettered: a transient fault became a dead letter")
        }
        return verdict
    }
}
