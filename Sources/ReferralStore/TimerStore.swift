import Foundation
import Postgres
import ReferralCore

/// Durable timers: the referrals and accounts whose decision is due at a time.
public enum TimerStore {
    /// Sets (or clears, with nil) each referral's wake-up. A timer already due then is not
    /// rewritten: an upsert that writes anyway costs a new row version and index entries.
    public static func setTimers(_ c: isolated PostgresConnection, _ timers: [(referralId: String, due: Instant?)])
        throws
    {
        if timers.isEmpty { return }
        let set = timers.filter { $0.due != nil }
        let cleared = timers.filter { $0.due == nil }.map(\.referralId)
        if !set.isEmpty {
            try c.executeDeferred(
                """
                INSERT INTO timers (referral_id, due_at) SELECT * FROM unnest($1::text[], $2::timestamptz[])
                ON CONFLICT (referral_id) DO UPDATE SET due_at = excluded.due_at
                WHERE timers.due_at IS DISTINCT FROM excluded.due_at
                """, [.textArray(set.map(\.referralId)), .textArray(set.map { $0.due?.rfc3339 })])
        }
        if !cleared.isEmpty {
            try c.executeDeferred("DELETE FROM timers WHERE referral_id = ANY($1::text[])", [.textArray(cleared)])
        }
    }

    /// The two tables of durable timers: a referral's (it is re-decided) and an
    /// account's (its asks are re-decided).
    public enum TimerTable: Sendable {
        case referrals, accounts

        var table: String { self == .referrals ? "timers" : "account_timers" }
        var key: String { self == .referrals ? "referral_id" : "account_id" }
    }

    /// Claims up to `limit` due timers of `table` by leasing them: their due time moves
    /// `leaseSeconds` ahead, in the caller's short transaction, and the caller decides them in a
    /// second one that sets their real next due time. Holding the timer rows locked while
    /// deciding would take the locks in the order timers → referrals (or accounts), against the
    /// batch path's referrals → timers, and two instances would deadlock (40P01). SKIP
    /// LOCKED lets instances claim disjoint timers; a claimer
    /// that dies leaves its timers to fire again when the lease ends. Returns the claimed keys.
    public static func claimDueTimers(
        _ c: isolated PostgresConnection, _ table: TimerTable, now: Instant, limit: Int,
        leaseSeconds: Int = 30
    ) throws -> [String] {
        try c.query(
            """
            UPDATE \(table.table) t SET due_at = $1::timestamptz + make_interval(secs => $3)
            FROM (SELECT \(table.key) FROM \(table.table) WHERE due_at <= $1::timestamptz
                  ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED) d
            WHERE t.\(table.key) = d.\(table.key)
            RETURNING t.\(table.key) AS key
            """, [.text(now.rfc3339), .int(Int64(limit)), .int(Int64(leaseSeconds))]
        )
        .map { try $0.decode("key", as: String.self) }
    }

    /// Timers due now and how late the oldest is, for metrics.
    public static func backlog(_ c: isolated PostgresConnection, now: Instant) throws -> (
        due: Int64, lagSeconds: Double
    ) {
        let row = try c.query(
            """
            SELECT count(*)::int8 AS n, coalesce(extract(epoch FROM $1::timestamptz - min(due_at)), 0)::float8 AS lag
            FROM timers WHERE due_at <= $1::timestamptz
            """, [.text(now.rfc3339)]
        ).first
        return (try row?.decode("n", as: Int64.self) ?? 0, try row?.decode("lag", as: Double.self) ?? 0)
    }
}
