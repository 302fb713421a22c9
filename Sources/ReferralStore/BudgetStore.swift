import Postgres
import ReferralCore

/// The programs' monthly budgets (`ProgramBudget`): what each reward commits, kept per reward in
/// `budget_commitments` and summed per program and UTC month into `budget_counters`, and the
/// asks a budget holds (`asks_held`). Counters are updated in the decision's transaction, as
/// the reward ledger is, so reading a month's commitment is a sum of a few rows, never a scan of
/// the month's rewards.
public enum BudgetStore {
    /// Counter rows per (program, month, currency). Each session adds to the shard of its
    /// backend pid: with one row per month, every lane of every instance would queue on that
    /// row's lock until its transaction commits, the convoy a popular program cannot afford.
    static let budgetShards = 16

    /// Brings the kept commitments of these referrals in line with their decisions, and adds
    /// the difference, with the newly recorded reversals, to the month counters
    /// (`ProgramBudget.changes`).
    static func recordCommitments(
        _ c: isolated PostgresConnection, views: [ReferralView], newlyIssued: Set<String>,
        reversals: [(programId: String, currency: String, amountMinor: Int64)],
        now: Instant
    ) throws {
        let candidates = views.filter { ProgramBudget.needsKeptCommitments($0, newlyIssued: newlyIssued) }
        var stored: [String: [Commitment]] = [:]
        if !candidates.isEmpty {
            for row in try c.query(
                """
                SELECT referral_id, reward_id, program_id, month::timestamp AT TIME ZONE 'UTC' AS month, currency,
                       amount_minor, issued
                FROM budget_commitments WHERE referral_id = ANY($1::text[])
                """, [.textArray(candidates.map(\.referralId))])
            {
                stored[try row.decode("referral_id", as: String.self), default: []].append(
                    Commitment(
                        rewardId: try row.decode("reward_id", as: String.self),
                        programId: try row.decode("program_id", as: String.self), month: try instant(row, "month"),
                        currency: try row.decode("currency", as: String.self),
                        amountMinor: try row.decode("amount_minor", as: Int64.self),
                        issued: try row.decode("issued", as: Bool.self)))
            }
        }
        let changes = ProgramBudget.changes(views: candidates, stored: stored, reversals: reversals, now: now)
        let upserts = changes.upserts
        if !upserts.isEmpty {
            try c.executeDeferred(
                """
                INSERT INTO budget_commitments (reward_id, referral_id, program_id, month, currency, amount_minor, issued)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::text[], $6::int8[], $7::bool[])
                ON CONFLICT (reward_id) DO UPDATE SET program_id = excluded.program_id, month = excluded.month,
                    currency = excluded.currency, amount_minor = excluded.amount_minor, issued = excluded.issued
                """,
                [
                    .textArray(upserts.map(\.commitment.rewardId)), .textArray(upserts.map(\.referralId)),
                    .textArray(upserts.map(\.commitment.programId)),
                    .textArray(upserts.map { monthText($0.commitment.month) }),
                    .textArray(upserts.map(\.commitment.currency)), .int8Array(upserts.map(\.commitment.amountMinor)),
                    .boolArray(upserts.map(\.commitment.issued)),
                ])
        }
        if !changes.deletes.isEmpty {
            try c.executeDeferred(
                "DELETE FROM budget_commitments WHERE reward_id = ANY($1::text[])",
                [.textArray(changes.deletes.map(\.rewardId))])
        }
        if changes.deltas.isEmpty { return }
        // Rows in key order (`changes.deltas` is sorted): two sessions that share a shard lock
        // its rows in the same order and cannot deadlock.
        let deltas = changes.deltas
        try c.executeDeferred(
            """
            INSERT INTO budget_counters (program_id, month, currency, shard, committed_minor)
            SELECT p, m, cur, pg_backend_pid() % \(budgetShards), a
            FROM unnest($1::text[], $2::date[], $3::text[], $4::int8[]) WITH ORDINALITY AS d(p, m, cur, a, n)
            ORDER BY n
            ON CONFLICT (program_id, month, currency, shard)
            DO UPDATE SET committed_minor = budget_counters.committed_minor + excluded.committed_minor
            """,
            [
                .textArray(deltas.map(\.programId)), .textArray(deltas.map { monthText($0.month) }),
                .textArray(deltas.map(\.currency)), .int8Array(deltas.map(\.amountMinor)),
            ])
    }

    /// Each program's commitment for the UTC month of `month`, in the program's currency.
    public static func committed(
        _ c: isolated PostgresConnection, programs: [(id: String, currency: String)],
        month: Instant
    ) throws -> [String: Int64] {
        if programs.isEmpty { return [:] }
        var out: [String: Int64] = [:]
        for row in try c.query(
            """
            SELECT program_id, sum(committed_minor)::int8 AS committed FROM budget_counters
            WHERE (program_id, currency) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND month = $3::date
            GROUP BY program_id
            """, [.textArray(programs.map(\.id)), .textArray(programs.map(\.currency)), .text(monthText(month))])
        {
            out[try row.decode("program_id", as: String.self)] = try row.decode("committed", as: Int64.self)
        }
        return out
    }

    /// Records asks a budget holds; returns the program of each ask held for the first time
    /// (a held ask is looked at again at every decision of its account until it goes out or
    /// goes stale, and is counted once).
    static func recordHeldAsks(
        _ c: isolated PostgresConnection,
        _ held: [(
            key: String, accountId: String, programId: String, moment: String, dueAt: Instant, expiresAt: Instant
        )],
        now: Instant
    ) throws -> [String] {
        if held.isEmpty { return [] }
        return try c.query(
            """
            INSERT INTO asks_held (ask_key, account_id, program_id, moment, due_at, expires_at, held_at)
            SELECT k, a, p, m, d, e, $7::timestamptz
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[]) AS h(k, a, p, m, d, e)
            ON CONFLICT (ask_key) DO NOTHING
            RETURNING program_id
            """,
            [
                .textArray(held.map(\.key)), .textArray(held.map(\.accountId)), .textArray(held.map(\.programId)),
                .textArray(held.map(\.moment)), .textArray(held.map(\.dueAt.rfc3339)),
                .textArray(held.map(\.expiresAt.rfc3339)),
                .text(now.rfc3339),
            ]
        ).map { try $0.decode("program_id", as: String.self) }
    }

    /// Held asks whose freshness ended, removed: each comes back once, as sent (it went out
    /// after the hold lifted) or dropped (it went stale held). Any instance may sweep; the
    /// DELETE hands each row to one of them.
    public static func sweepHeldAsks(
        _ c: isolated PostgresConnection, now: Instant,
        limit: Int = 1000
    ) throws -> [(programId: String, sent: Bool)] {
        try c.query(
            """
            DELETE FROM asks_held h WHERE ask_key IN (
                SELECT ask_key FROM asks_held WHERE expires_at < $1::timestamptz ORDER BY expires_at LIMIT $2
                FOR UPDATE SKIP LOCKED)
            RETURNING program_id, EXISTS (SELECT 1 FROM asks a WHERE a.ask_key = h.ask_key) AS sent
            """, [.text(now.rfc3339), .int(Int64(limit))]
        ).map {
            (try $0.decode("program_id", as: String.self), try $0.decode("sent", as: Bool.self))
        }
    }

    static func monthText(_ month: Instant) -> String { String(month.rfc3339.prefix(10)) }
}
