import Postgres
import ReferralCore

/// One reward of the ledger as `referrald ledger export` lists it, with its history.
public struct LedgerReward: Sendable, Equatable {
    public var rewardId: String
    public var referralId: String
    public var beneficiary: String
    public var accountId: String
    public var kind: String
    public var amountMinor: Int64
    public var currency: String
    public var programId: String
    /// The state in the snapshot: issued, applied, failed or reversed.
    public var state: String
    public var issuedAt: Instant
    /// Its recorded effects, oldest first.
    public var history: [LedgerChange]
}

/// One recorded change of a reward: a `reward_*` effect.
///
/// `recordedAt` is when referrald recorded it (the clock of the decision that wrote the effect,
/// `effects.recorded_at`); `billingAt` is the time billing's own event gives (the fact's time),
/// for the changes billing caused. The two differ by the event's transit and any backlog.
public struct LedgerChange: Sendable, Equatable {
    public enum Event: String, Sendable {
        /// Issued: the state becomes `issued`.
        case issued
        /// Billing rejected the credit (`failure` counts the rejections); the state becomes
        /// `failed`; `final` when no retry follows.
        case failed
        /// Issued again after a rejection (`attempt`); the state becomes `issued`.
        case retried
        /// Billing applied it as issued; the state becomes `applied`.
        case applied
        /// Clawed back (`reason`); the state becomes `reversed`.
        case reversed
        /// Billing applied another amount, currency or account (`billed`); the state does not change.
        case mismatch
    }

    public var event: Event
    public var recordedAt: Instant
    public var billingAt: Instant?
    /// The failure's number (`failed`) or the retry's attempt (`retried`).
    public var number: Int?
    public var final: Bool?
    public var reason: String?
    public var billed: (accountId: String, amountMinor: Int64, currency: String)?

    public init(
        event: Event, recordedAt: Instant, billingAt: Instant? = nil, number: Int? = nil, final: Bool? = nil,
        reason: String? = nil, billed: (accountId: String, amountMinor: Int64, currency: String)? = nil
    ) {
        self.event = event
        self.recordedAt = recordedAt
        self.billingAt = billingAt
        self.number = number
        self.final = final
        self.reason = reason
        self.billed = billed
    }

    public static func == (a: LedgerChange, b: LedgerChange) -> Bool {
        a.event == b.event && a.recordedAt == b.recordedAt && a.billingAt == b.billingAt && a.number == b.number
            && a.final == b.final && a.reason == b.reason && a.billed?.accountId == b.billed?.accountId
            && a.billed?.amountMinor == b.billed?.amountMinor && a.billed?.currency == b.billed?.currency
    }
}

/// A beneficiary account's rewards of one currency issued in a period (`referrald ledger totals`).
public struct LedgerTotal: Sendable, Equatable {
    public var accountId: String
    public var currency: String
    public var rewards: Int64
    public var issuedMinor: Int64
    /// Of those, the rewards reversed by the snapshot (whenever the reversal was).
    public var reversedMinor: Int64
    /// issued − reversed.
    public var netMinor: Int64
    /// Of those, the rewards billing has rejected and not applied since (state `failed`).
    public var failedMinor: Int64

    public init(
        accountId: String, currency: String, rewards: Int64, issuedMinor: Int64, reversedMinor: Int64,
        netMinor: Int64, failedMinor: Int64
    ) {
        self.accountId = accountId
        self.currency = currency
        self.rewards = rewards
        self.issuedMinor = issuedMinor
        self.reversedMinor = reversedMinor
        self.netMinor = netMinor
        self.failedMinor = failedMinor
    }
}

/// A stored row the ledger cannot read: which one and what is wrong, never the values.
public struct LedgerError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

public enum LedgerStore {
    /// Rows per FETCH: a page's rewards, effects and billing facts in memory at once, a few MB.
    public static let ledgerPageSize = 2_000

    /// Every reward issued in [from, to) (either bound optional), in `reward_id` order (bytewise),
    /// handed over a page at a time with their histories. Run it inside one transaction
    /// (`TransactionMode.readOnlySnapshot`): the cursor and the per-page lookups of effects and
    /// facts then all read the same snapshot, and the cursor ends with it.
    ///
    /// A cursor rather than one SELECT: libpq holds a whole result in memory, and a million
    /// rewards would be one result. A cursor rather than keyset pages: one statement planned
    /// once walks the primary key once, and `ledgerTotals`, an aggregate, could not be paged by
    /// key without aggregating again for every page; both commands page the same way.
    public static func rewards(
        _ c: isolated PostgresConnection, from: Instant?, to: Instant?,
        pageSize: Int = ledgerPageSize, each: ([LedgerReward]) throws -> Void
    ) throws {
        try c.execute(
            """
            DECLARE ledger_rewards NO SCROLL CURSOR FOR
            SELECT reward_id, referral_id, beneficiary, account_id, kind, amount_minor, currency, program_id, state,
                   \(micros("issued_at"))
            FROM rewards
            WHERE ($1::timestamptz IS NULL OR issued_at >= $1::timestamptz)
              AND ($2::timestamptz IS NULL OR issued_at < $2::timestamptz)
            ORDER BY reward_id
            """, [PostgresValue(from?.rfc3339), PostgresValue(to?.rfc3339)])
        while true {
            let rows = try c.query("FETCH FORWARD \(pageSize) FROM ledger_rewards")
            if rows.isEmpty { break }
            // By position: a million rows decoded by name spent a tenth of the export hashing names.
            var page = try rows.map { row in
                LedgerReward(
                    rewardId: try row.decode(0), referralId: try row.decode(1), beneficiary: try row.decode(2),
                    accountId: try row.decode(3), kind: try row.decode(4), amountMinor: try row.decode(5),
                    currency: try row.decode(6), programId: try row.decode(7), state: try row.decode(8),
                    issuedAt: Instant(microseconds: try row.decode(9)), history: [])
            }
            try attachHistories(c, &page)
            try each(page)
            if rows.count < pageSize { break }
        }
        try c.execute("CLOSE ledger_rewards")
    }

    /// Fills each reward's history from its referral's `reward_*` effects (`effects_referral_seq`)
    /// and billing's answers for it (`facts_reward`): two indexed lookups per page.
    static func attachHistories(_ c: isolated PostgresConnection, _ page: inout [LedgerReward]) throws {
        let ids = page.map(\.rewardId)
        var index: [String: Int] = [:]
        for (i, id) in ids.enumerated() { index[id] = i }
        // Billing's times: the n-th rejection by time is failure n, as the core counts them
        // (`fulfilmentStatus`); an application is matched by the account, amount and currency it names.
        var rejections: [String: [Instant]] = [:]
        var applications: [String: [(account: String, amount: Int64, currency: String, at: Instant)]] = [:]
        for row in try c.query(
            """
            SELECT reward_id, kind, \(micros("at")), account_id, amount_minor, currency FROM facts
            WHERE reward_id = ANY($1::text[]) AND kind IN ('credit_applied', 'credit_rejected')
            ORDER BY reward_id, at
            """, [.textArray(ids)])
        {
            let id: String = try row.decode(0)
            let at = Instant(microseconds: try row.decode(2))
            if try row.decode(1, as: String.self) == "credit_rejected" {
                rejections[id, default: []].append(at)
            } else {
                applications[id, default: []].append((try row.decode(3), try row.decode(4), try row.decode(5), at))
            }
        }
        func billed(_ id: String, _ account: String, _ amount: Int64, _ currency: String) -> Instant? {
            applications[id]?.first { $0.account == account && $0.amount == amount && $0.currency == currency }?.at
        }
        for row in try c.query(
            """
            SELECT seq, \(micros("recorded_at")), effect::text AS effect FROM effects
            WHERE referral_id = ANY($1::text[])
              AND kind IN ('reward_issued', 'reward_retried', 'reward_applied', 'reward_failed', 'reward_reversed', 'reward_mismatch')
            ORDER BY seq
            """, [.textArray(Array(Set(page.map(\.referralId))))])
        {
            let at = Instant(microseconds: try row.decode(1))
            let effect: Effect
            do { effect = try EffectStore.storedEffect(row) } catch {
                throw LedgerError(description: "effect seq \(try row.decode("seq", as: Int64.self)): \(error)")
            }
            let change: (String, LedgerChange)
            switch effect {
            case .rewardIssued(let g):
                change = (g.rewardId, LedgerChange(event: .issued, recordedAt: at))
            case .rewardRetried(let g, let attempt):
                change = (g.rewardId, LedgerChange(event: .retried, recordedAt: at, number: attempt))
            case .rewardFailed(let id, let failure, _, let final):
                // Billing's free-text reason stays out: it is personal data an erasure scrubs.
                let times = rejections[id] ?? []
                change = (
                    id,
                    LedgerChange(
                        event: .failed, recordedAt: at, billingAt: failure <= times.count ? times[failure - 1] : nil,
                        number: failure, final: final)
                )
            case .rewardApplied(let id):
                guard let i = index[id] else { continue }
                let r = page[i]
                change = (
                    id,
                    LedgerChange(
                        event: .applied, recordedAt: at, billingAt: billed(id, r.accountId, r.amountMinor, r.currency))
                )
            case .rewardMismatch(let id, let account, let amount, let currency):
                change = (
                    id,
                    LedgerChange(
                        event: .mismatch, recordedAt: at, billingAt: billed(id, account, amount, currency),
                        billed: (account, amount, currency))
                )
            case .rewardReversed(let r):
                change = (r.rewardId, LedgerChange(event: .reversed, recordedAt: at, reason: r.reason))
            case .codeIssued, .friendOfferGranted, .statusChanged:
                continue
            }
            // The referral's other reward (or one outside the period) is in the same rows.
            guard let i = index[change.0] else { continue }
            page[i].history.append(change.1)
        }
    }

    /// Totals per beneficiary account and currency of the rewards issued in [from, to), in
    /// (account, currency) order, a page at a time; only `kind` when given, only those whose net
    /// is at least `minNetMinor` when given. A cursor for the same reason as `ledgerRewards`:
    /// one row per account can be hundreds of thousands of rows.
    public static func totals(
        _ c: isolated PostgresConnection, from: Instant, to: Instant, kind: String?,
        minNetMinor: Int64?, pageSize: Int = ledgerPageSize,
        each: ([LedgerTotal]) throws -> Void
    ) throws {
        try c.execute(
            """
            DECLARE ledger_totals NO SCROLL CURSOR FOR
            SELECT account_id, currency, count(*)::int8 AS rewards, sum(amount_minor)::int8 AS issued,
                   coalesce(sum(amount_minor) FILTER (WHERE state = 'reversed'), 0)::int8 AS reversed,
                   coalesce(sum(amount_minor) FILTER (WHERE state = 'failed'), 0)::int8 AS failed
            FROM rewards
            WHERE issued_at >= $1::timestamptz AND issued_at < $2::timestamptz AND ($3::text IS NULL OR kind = $3::text)
            GROUP BY account_id, currency
            HAVING $4::int8 IS NULL
                OR sum(amount_minor) - coalesce(sum(amount_minor) FILTER (WHERE state = 'reversed'), 0) >= $4::int8
            ORDER BY account_id, currency
            """, [.text(from.rfc3339), .text(to.rfc3339), PostgresValue(kind), minNetMinor.map { .int($0) } ?? .null])
        while true {
            let rows = try c.query("FETCH FORWARD \(pageSize) FROM ledger_totals")
            if rows.isEmpty { break }
            try each(
                try rows.map { row in
                    let issued: Int64 = try row.decode("issued")
                    let reversed: Int64 = try row.decode("reversed")
                    return LedgerTotal(
                        accountId: try row.decode("account_id"), currency: try row.decode("currency"),
                        rewards: try row.decode("rewards"), issuedMinor: issued, reversedMinor: reversed,
                        netMinor: issued - reversed, failedMinor: try row.decode("failed"))
                })
            if rows.count < pageSize { break }
        }
        try c.execute("CLOSE ledger_totals")
    }

    /// A timestamp column as integer microseconds since the epoch (exact: `extract` is numeric):
    /// parsing the text form of three timestamps per reward was a tenth of the export's time.
    private static func micros(_ column: String) -> String {
        "(extract(epoch FROM \(column)) * 1000000)::int8"
    }
}

extension LedgerStore {
    /// Rewards issued that billing has not applied yet (state `issued`: awaiting its answer, a
    /// retry re-issued after a rejection, or a mismatched credit), and how long ago the oldest
    /// was first issued, at `now`, for metrics. Every instance samples it every few seconds:
    /// the partial index `rewards_unapplied` (migration 8) holds only these rows, so the count
    /// and the minimum are read from it alone instead of from the whole ledger, which keeps
    /// every reward for years. Measured from the first issue: a reward rejected and re-issued
    /// is still one the customer has been waiting for since then.
    public static func unappliedRewards(_ c: isolated PostgresConnection, now: Instant) throws
        -> (count: Int64, oldestAgeSeconds: Double)
    {
        let row = try c.query(
            """
            SELECT count(*)::int8 AS n, coalesce(extract(epoch FROM $1::timestamptz - min(issued_at)), 0)::float8 AS age
            FROM rewards WHERE state = 'issued'
            """, [.text(now.rfc3339)]
        ).first
        return (try row?.decode("n", as: Int64.self) ?? 0, try row?.decode("age", as: Double.self) ?? 0)
    }
}

extension Database {
    /// Every reward issued in [from, to), handed to `each` a page at a time, read from one
    /// read-only snapshot, so that pages never mix two states of the ledger. Returns how many
    /// rewards were handed out.
    public func ledgerRewards(
        from: Instant?, to: Instant?, each: @escaping @Sendable ([LedgerReward]) throws -> Void
    ) async throws -> Int {
        try await transaction(.readOnlySnapshot) { c in
            var count = 0
            try LedgerStore.rewards(c, from: from, to: to) { page in
                try each(page)
                count += page.count
            }
            return count
        }
    }

    /// Each account's totals over [from, to), a page at a time, from one read-only snapshot.
    /// Returns how many rows were handed out.
    public func ledgerTotals(
        from: Instant, to: Instant, kind: String?, minNetMinor: Int64?,
        each: @escaping @Sendable ([LedgerTotal]) throws -> Void
    ) async throws -> Int {
        try await transaction(.readOnlySnapshot) { c in
            var count = 0
            try LedgerStore.totals(c, from: from, to: to, kind: kind, minNetMinor: minNetMinor) { page in
                try each(page)
                count += page.count
            }
            return count
        }
    }
}
