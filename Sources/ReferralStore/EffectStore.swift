import Foundation
import Postgres
import ReferralCore

/// Recorded effects (each once, by its key) and the reward ledger they keep.
public enum EffectStore {
    /// Every effect recorded for these referrals (each referral's in recording order), and the
    /// codes issued to these accounts (`codeIssued`, recorded like any effect, under the account).
    /// With a cache, the caller must hold the referrals' locks.
    public static func loadEffects(
        _ c: isolated PostgresConnection, referrals: [String], accounts: [String],
        cache: EffectCache? = nil
    ) throws -> [Effect] {
        var effects: [Effect]
        if let cache {
            effects = try loadEffects(c, referrals: referrals, cache: cache)
        } else {
            effects = try c.query(
                """
                SELECT effect::text AS effect FROM effects WHERE referral_id = ANY($1::text[]) ORDER BY seq
                """, [.textArray(referrals)]
            ).map {
                try storedEffect($0)
            }
        }
        for row in try c.query(
            """
            SELECT effect::text AS effect FROM effects WHERE kind = 'code_issued' AND account_id = ANY($1::text[]) ORDER BY seq
            """, [.textArray(accounts)])
        {
            effects.append(try storedEffect(row))
        }
        return effects
    }

    /// Reads only the effects recorded after the last one the cache saw of each referral (see
    /// `EffectCache` for why that is all there is), decodes those, and keeps them. The LATERAL
    /// subquery, fenced with OFFSET 0, keeps the plan an index lookup per referral: as a plain
    /// join of the unnested pairs, the planner chose a sequential scan of all of `effects`.
    static func loadEffects(_ c: isolated PostgresConnection, referrals: [String], cache: EffectCache) throws
        -> [Effect]
    {
        var known = cache.snapshot(referrals)
        var changed: Set<String> = []
        for row in try c.query(
            """
            SELECT k.referral_id, e.seq, e.effect::text AS effect
            FROM unnest($1::text[], $2::int8[]) AS k(referral_id, seen)
            CROSS JOIN LATERAL (SELECT seq, effect FROM effects
                                WHERE referral_id = k.referral_id AND seq > k.seen OFFSET 0) e
            ORDER BY e.seq
            """, [.textArray(referrals), .int8Array(referrals.map { known[$0]?.lastSeq ?? 0 })])
        {
            let id = try row.decode("referral_id", as: String.self)
            // Without free text: the cache outlives an erasure that rewrites the row in place (in
            // this process and in every other), and decisions read a recorded failure by its key.
            let effect = try storedEffect(row)
            known[id, default: (0, [])].effects.append(effect.withoutFreeText)
            known[id]!.lastSeq = try row.decode("seq", as: Int64.self)
            changed.insert(id)
        }
        // A referral with no effects yet is kept too, as an empty entry: the effects its first
        // decision records can then join it after the commit (`appendCommitted`).
        for id in referrals where known[id] == nil {
            known[id] = (0, [])
            changed.insert(id)
        }
        cache.store(known.filter { changed.contains($0.key) })
        return referrals.flatMap { known[$0]?.effects ?? [] }
    }

    /// Records effects; returns those that were new. An effect whose key is already recorded (a
    /// concurrent instance, a replay) is dropped here and so never published twice. With a
    /// cache, also returns the new ones of referrals it holds, for `EffectCache.appendCommitted`
    /// once the transaction commits.
    public static func recordEffects(
        _ c: isolated PostgresConnection, _ effects: [Effect], at: Instant,
        cache: EffectCache? = nil
    ) throws -> (fresh: [Effect], recorded: [EffectCache.Recorded]) {
        if effects.isEmpty { return ([], []) }
        let keys = effects.map { $0.key.storageKey }
        let json = PackedBytes(effects.map { $0.storedJSON() })
        let inserted = try c.query(
            """
            INSERT INTO effects (effect_key, referral_id, account_id, kind, effect, recorded_at)
            SELECT k, r, a, kd, convert_from(substring($5::bytea FROM o::int4 FOR n::int4), 'UTF8')::jsonb, $6::timestamptz
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $7::int8[], $8::int8[])
                 WITH ORDINALITY AS t(k, r, a, kd, o, n, i)
            ORDER BY i
            ON CONFLICT (effect_key) DO NOTHING
            RETURNING effect_key, seq
            """,
            [
                .textArray(keys), .textArray(effects.map(\.referralId)), .textArray(effects.map(\.accountId)),
                .textArray(effects.map(\.kindName)), json.blob, .text(at.rfc3339), json.offsets, json.lengths,
            ]
        ).map { (try $0.decode("effect_key", as: String.self), try $0.decode("seq", as: Int64.self)) }
        let seqOf = Dictionary(inserted, uniquingKeysWith: { a, _ in a })
        let fresh = effects.filter { seqOf[$0.key.storageKey] != nil }
        try updateLedger(c, fresh, at: at)
        var recorded: [EffectCache.Recorded] = []
        if let cache {
            let seen = cache.lastSeqs(Array(Set(fresh.compactMap(\.referralId))))
            for effect in fresh {
                guard let id = effect.referralId, let seenSeq = seen[id], let seq = seqOf[effect.key.storageKey] else {
                    continue
                }
                recorded.append(EffectCache.Recorded(referralId: id, seenSeq: seenSeq, seq: seq, effect: effect))
            }
        }
        return (fresh, recorded)
    }

    /// Keeps the `rewards` ledger in step with the recorded effects. Issued rewards, most of a
    /// busy batch's ledger changes, go in one set-based INSERT (one statement per reward costs a
    /// round trip per reward, dozens in a busy batch); the rarer state changes stay one UPDATE
    /// each, in effect order.
    static func updateLedger(_ c: isolated PostgresConnection, _ effects: [Effect], at: Instant) throws {
        let issued = effects.compactMap { if case .rewardIssued(let g) = $0 { g } else { nil } }
        if !issued.isEmpty {
            try c.executeDeferred(
                """
                INSERT INTO rewards (reward_id, referral_id, beneficiary, account_id, kind, amount_minor, currency,
                                     program_id, state, issued_at, updated_at)
                SELECT r, rf, b, a, k, m, cu, p, 'issued', $9::timestamptz, $9::timestamptz
                FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[],
                            $8::text[]) AS t(r, rf, b, a, k, m, cu, p)
                """,
                [
                    .textArray(issued.map(\.rewardId)), .textArray(issued.map(\.referralId)),
                    .textArray(issued.map(\.beneficiary.rawValue)), .textArray(issued.map(\.accountId)),
                    .textArray(issued.map(\.kind.rawValue)), .int8Array(issued.map(\.amountMinor)),
                    .textArray(issued.map(\.currency)), .textArray(issued.map(\.programId)), .text(at.rfc3339),
                ])
        }
        for effect in effects {
            switch effect {
            case .rewardIssued:
                break
            case .rewardRetried(let g, _):
                try setRewardState(c, g.rewardId, state: "issued", note: nil, at: at, onlyFrom: ["failed"])
            case .rewardReversed(let r):
                try setRewardState(
                    c, r.rewardId, state: "reversed", note: r.reason, at: at, onlyFrom: ["issued", "applied", "failed"])
            case .rewardApplied(let id):
                try setRewardState(c, id, state: "applied", note: nil, at: at, onlyFrom: ["issued", "failed"])
            case .rewardMismatch(let id, let account, let amount, let currency):
                try c.executeDeferred(
                    "UPDATE rewards SET note = $2, updated_at = $3::timestamptz WHERE reward_id = $1",
                    [
                        .text(id), .text("billing applied \(amount) \(currency) to \(account): mismatch, not applied"),
                        .text(at.rfc3339),
                    ])
            case .rewardFailed(let id, let failure, let reason, let final):
                try c.executeDeferred(
                    """
                    UPDATE rewards SET state = 'failed', failures = greatest(failures, $2), note = $3,
                                       updated_at = $4::timestamptz
                    WHERE reward_id = $1 AND state IN ('issued', 'failed')
                    """,
                    [
                        .text(id), .int(Int64(failure)), .text(final ? "failed for good: \(reason)" : reason),
                        .text(at.rfc3339),
                    ])
            case .codeIssued, .friendOfferGranted, .statusChanged:
                break
            }
        }
    }

    /// Every UPDATE names the states it may leave: a late or repeated effect never moves a
    /// reward backwards (a reversed reward is never "applied" again).
    static func setRewardState(
        _ c: isolated PostgresConnection, _ id: String, state: String, note: String?,
        at: Instant, onlyFrom: [String]
    ) throws {
        try c.executeDeferred(
            """
            UPDATE rewards SET state = $2, note = coalesce($3, note), updated_at = $4::timestamptz
            WHERE reward_id = $1 AND state = ANY($5::text[])
            """, [.text(id), .text(state), PostgresValue(note), .text(at.rfc3339), .textArray(onlyFrom)])
    }

    /// The row's `effect` column (selected as text), read back as the effect it stores.
    static func storedEffect(_ row: PostgresRow) throws -> Effect {
        try Effect(storedJSON: Array(try row.decode("effect", as: String.self).utf8))
    }
}

extension Effect.Key {
    /// The text form stored in `effects.effect_key` (unique).
    var storageKey: String {
        switch self {
        case .code(let a): return "code:\(a)"
        case .offer(let r): return "offer:\(r)"
        case .status(let r, let n): return "status:\(r):\(n)"
        case .issue(let id, let n): return "issue:\(id):\(n)"
        case .reverse(let id): return "reverse:\(id)"
        case .applied(let id): return "applied:\(id)"
        case .mismatch(let id, let a, let m, let c): return "mismatch:\(id):\(a):\(m):\(c)"
        case .failed(let id, let n): return "failed:\(id):\(n)"
        }
    }
}

extension Effect {
    var accountId: String? {
        switch self {
        case .codeIssued(let a, _, _): return a
        case .rewardIssued(let g), .rewardRetried(let g, _): return g.accountId
        case .rewardReversed(let r): return r.accountId
        case .rewardMismatch(_, let a, _, _): return a
        default: return nil
        }
    }

    var kindName: String {
        switch self {
        case .codeIssued: return "code_issued"
        case .friendOfferGranted: return "friend_offer_granted"
        case .statusChanged: return "status_changed"
        case .rewardIssued: return "reward_issued"
        case .rewardRetried: return "reward_retried"
        case .rewardReversed: return "reward_reversed"
        case .rewardApplied: return "reward_applied"
        case .rewardMismatch: return "reward_mismatch"
        case .rewardFailed: return "reward_failed"
        }
    }
}
