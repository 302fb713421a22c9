import Foundation
import Postgres
import ReferralCore

/// What `explain` reads: the oracle's neighbourhood of referrals and their recorded history,
/// read without locks. Never on the worker's path.
public enum ExplainStore {
    /// Referral ids for `explain`: the referral itself, or every referral where the account is
    /// the referrer or the friend.
    public static func referralIds(_ c: isolated PostgresConnection, referralOrAccount id: String) throws -> [String] {
        try c.query(
            """
            SELECT referral_id FROM referrals
            WHERE referral_id = $1 OR referrer_account_id = $1 OR friend_account_id = $1
            ORDER BY referral_id
            """, [.text(id)]
        ).map { try $0.decode("referral_id", as: String.self) }
    }

    /// The oracle's neighbourhood of `seeds`, for `explain`: everything that decides them
    /// exactly and nothing more — the seeds, every referral of their referrers (the code's day
    /// and the yearly cap rank among those), and every referral sharing a friend key or contact
    /// with a seed (who claims the friend). One level, not the transitive closure: the others
    /// are context for the seeds' ranks, and their own decisions are not shown. Never on the
    /// worker's path.
    static func neighbourhood(_ c: isolated PostgresConnection, seeds: [String]) throws -> [String] {
        try c.query(
            """
            WITH s AS (SELECT unnest($1::text[]) AS referral_id)
            SELECT referral_id FROM s
            UNION
            SELECT r2.referral_id FROM referrals r1 JOIN referrals r2 ON r2.referrer_account_id = r1.referrer_account_id
            WHERE r1.referral_id IN (SELECT referral_id FROM s)
            UNION
            SELECT l2.referral_id FROM referral_links l1 JOIN referral_links l2 ON l2.link = l1.link
            WHERE l1.referral_id IN (SELECT referral_id FROM s)
            ORDER BY 1
            """, [.textArray(seeds)]
        ).map { try $0.decode("referral_id", as: String.self) }
    }

    /// The recorded effects of these referrals with the time each was recorded, oldest first.
    public static func effectHistory(_ c: isolated PostgresConnection, referrals: [String]) throws -> [(
        Instant, Effect
    )] {
        return try c.query(
            """
            SELECT recorded_at, effect::text AS effect FROM effects WHERE referral_id = ANY($1::text[]) ORDER BY seq
            """, [.textArray(referrals)]
        ).map {
            (
                Instant(microseconds: try $0.decode("recorded_at", as: PostgresTimestamp.self).microsecondsSinceEpoch),
                try EffectStore.storedEffect($0)
            )
        }
    }

    /// Everything the oracle needs over these referrals: their bindings, every fact of their
    /// leads, accounts (referrers and friends) and rewards, and the recorded effects; read
    /// without locks.
    static func neighbourhoodInput(_ c: isolated PostgresConnection, _ ids: [String])
        throws -> (bound: [BoundReferral], facts: [Fact], recorded: [Effect])
    {
        let bound = try BindingStore.loadBindings(c, ids)
        return (
            bound, try FactStore.loadFacts(c, referrals: bound, accounts: []),
            try EffectStore.loadEffects(c, referrals: ids, accounts: Array(Set(bound.flatMap(\.accounts))))
        )
    }

    /// The input of `explain`: the oracle's neighbourhood of these referrals, read without locking.
    public static func explainInput(_ c: isolated PostgresConnection, referrals ids: [String]) throws
        -> (bound: [BoundReferral], facts: [Fact], recorded: [Effect])
    {
        try neighbourhoodInput(c, try neighbourhood(c, seeds: ids))
    }
}

extension Database {
    /// What `explain` shows for a referral id or an account: each referral's view decided with
    /// explanations over its neighbourhood at `now`, the effects recorded for them, and what
    /// operators did to each referral, its rewards, its code or its program (a support agent
    /// sees whether a rule or a person decided). Read in one hop, without locks.
    public func explain(_ id: String, now: Instant) async throws -> (
        views: [ReferralView], history: [(Instant, Effect)], actions: [String: [OperatorAction]]
    ) {
        try await run { c in
            let ids = try ExplainStore.referralIds(c, referralOrAccount: id)
            let input = try ExplainStore.explainInput(c, referrals: ids)
            let decision = Lifecycle.decide(
                LifecycleInput(
                    facts: input.facts, referrals: input.bound.map(\.binding), recorded: input.recorded, now: now,
                    explain: true,
                    pausedPrograms: Set(try OperatorStore.rewardPauses(c).map(\.programId))))
            var actions: [String: [OperatorAction]] = [:]
            for b in input.bound where ids.contains(b.binding.referralId) {
                let r = b.binding
                actions[r.referralId] = try OperatorStore.actions(
                    c, targets: [r.referralId, r.code, r.program.id, "*"] + b.rewardIds)
            }
            return (
                decision.referrals.filter { ids.contains($0.referralId) },
                try ExplainStore.effectHistory(c, referrals: ids), actions
            )
        }
    }
}
