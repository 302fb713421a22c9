import Postgres
import ReferralCore

extension ReportFigures {
    /// One program's spend in one UTC calendar month: rewards issued in it (by issue time,
    /// whatever their referral's lead time), rewards reversed in it (by the time of the
    /// reversal), and what the monthly budget's counters committed (`budget_counters`).
    public struct Month: Sendable, Equatable {
        /// `YYYY-MM`.
        public var month: String
        public var programId: String
        public var currency: String
        public var issued: Money, reversed: Money
        public var committedMinor: Int64
    }

    /// A program's budget, from the latest version registered (`program_versions`): what the
    /// daemon runs with, so the report needs no programs file of its own.
    public struct Budget: Sendable, Equatable {
        public var programId: String
        public var currency: String
        public var monthlyMinor: Int64
        public var pauseAsksAt: Double
    }

    /// The month that holds `now`, and its spend so far by program and currency.
    public struct MonthToDate: Sendable, Equatable {
        public struct Spend: Sendable, Equatable {
            public var programId: String
            public var currency: String
            public var issuedMinor: Int64, reversedMinor: Int64
        }
        public var month = ""
        public var start = Instant(microseconds: 0), end = Instant(microseconds: 0)
        public var spend: [Spend] = []
        public init() {}
    }
}

extension ReportStore {
    static func programBudgets(_ c: isolated PostgresConnection, programId: String?) throws -> [ReportFigures.Budget] {
        try c.query(
            """
            SELECT program_id, currency, monthly, pause FROM (
                SELECT DISTINCT ON (program_id) program_id, program ->> 'currency' AS currency,
                       (program -> 'budget' ->> 'monthly_minor')::int8 AS monthly,
                       (program -> 'budget' ->> 'pause_asks_at')::float8 AS pause
                FROM program_versions WHERE $1::text IS NULL OR program_id = $1::text
                ORDER BY program_id, version DESC) latest
            WHERE monthly IS NOT NULL ORDER BY program_id
            """, [PostgresValue(programId)]
        ).map {
            .init(
                programId: try $0.decode("program_id", as: String.self),
                currency: try $0.decode("currency", as: String.self),
                monthlyMinor: try $0.decode("monthly", as: Int64.self),
                pauseAsksAt: try $0.decode("pause", as: Double.self))
        }
    }

    /// Every UTC month the period touches, whole, for each program with spend, commitments or a
    /// budget in it: a budget is monthly, so a period starting mid-month still compares the
    /// month's whole spend with it. A reversal is dated by the reward's last change, which for a
    /// reversed reward (an end state) is its reversal.
    static func months(_ c: isolated PostgresConnection, _ scope: ReportScope) throws -> [ReportFigures.Month] {
        try c.query(
            """
            WITH months AS (
                SELECT m::date AS month
                FROM generate_series(date_trunc('month', $1::timestamptz AT TIME ZONE 'UTC'),
                                     ($2::timestamptz AT TIME ZONE 'UTC') - interval '1 microsecond', interval '1 month') AS m),
            bounds AS (SELECT min(month)::timestamp AT TIME ZONE 'UTC' AS lo,
                              (max(month) + interval '1 month') AT TIME ZONE 'UTC' AS hi FROM months),
            issued AS (
                SELECT w.program_id, w.currency, date_trunc('month', w.issued_at AT TIME ZONE 'UTC')::date AS month,
                       count(*)::int8 AS n, sum(w.amount_minor)::int8 AS a
                FROM rewards w, bounds b
                WHERE w.issued_at >= b.lo AND w.issued_at < b.hi AND ($3::text IS NULL OR w.program_id = $3::text)
                GROUP BY 1, 2, 3),
            reversed AS (
                SELECT w.program_id, w.currency, date_trunc('month', w.updated_at AT TIME ZONE 'UTC')::date AS month,
                       count(*)::int8 AS n, sum(w.amount_minor)::int8 AS a
                FROM rewards w, bounds b
                WHERE w.state = 'reversed' AND w.updated_at >= b.lo AND w.updated_at < b.hi
                  AND ($3::text IS NULL OR w.program_id = $3::text)
                GROUP BY 1, 2, 3),
            committed AS (
                SELECT program_id, currency, month, sum(committed_minor)::int8 AS a FROM budget_counters
                WHERE month IN (SELECT month FROM months) AND ($3::text IS NULL OR program_id = $3::text)
                GROUP BY 1, 2, 3),
            budgeted AS (
                SELECT DISTINCT ON (program_id) program_id, program ->> 'currency' AS currency, program -> 'budget' AS budget
                FROM program_versions WHERE $3::text IS NULL OR program_id = $3::text ORDER BY program_id, version DESC),
            keys AS (
                SELECT program_id, currency, month FROM issued
                UNION SELECT program_id, currency, month FROM reversed
                UNION SELECT program_id, currency, month FROM committed
                UNION SELECT b.program_id, b.currency, m.month FROM budgeted b CROSS JOIN months m
                      WHERE jsonb_typeof(b.budget) = 'object')
            SELECT to_char(k.month, 'YYYY-MM') AS month, k.program_id, k.currency,
                   coalesce(i.n, 0)::int8 AS issued_n, coalesce(i.a, 0)::int8 AS issued_a,
                   coalesce(r.n, 0)::int8 AS reversed_n, coalesce(r.a, 0)::int8 AS reversed_a,
                   coalesce(c.a, 0)::int8 AS committed
            FROM keys k LEFT JOIN issued i USING (program_id, currency, month)
            LEFT JOIN reversed r USING (program_id, currency, month) LEFT JOIN committed c USING (program_id, currency, month)
            ORDER BY k.month, k.program_id, k.currency
            """, [.text(scope.from.rfc3339), .text(scope.to.rfc3339), PostgresValue(scope.programId)]
        ).map { r in
            .init(
                month: try r.decode("month", as: String.self), programId: try r.decode("program_id", as: String.self),
                currency: try r.decode("currency", as: String.self),
                issued: .init(
                    count: try r.decode("issued_n", as: Int64.self),
                    amountMinor: try r.decode("issued_a", as: Int64.self)),
                reversed: .init(
                    count: try r.decode("reversed_n", as: Int64.self),
                    amountMinor: try r.decode("reversed_a", as: Int64.self)),
                committedMinor: try r.decode("committed", as: Int64.self))
        }
    }

    /// Spend from the start of `now`'s UTC month up to `now`, for the forecast.
    static func monthToDate(_ c: isolated PostgresConnection, programId: String?, now: Instant) throws
        -> ReportFigures.MonthToDate
    {
        var m = ReportFigures.MonthToDate()
        let bounds = try c.query(
            """
            SELECT to_char(lo AT TIME ZONE 'UTC', 'YYYY-MM') AS month, lo, (lo AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC' AS hi
            FROM (SELECT date_trunc('month', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS lo) b
            """, [.text(now.rfc3339)])[0]
        m.month = try bounds.decode("month", as: String.self)
        m.start = Instant(microseconds: try bounds.decode("lo", as: PostgresTimestamp.self).microsecondsSinceEpoch)
        m.end = Instant(microseconds: try bounds.decode("hi", as: PostgresTimestamp.self).microsecondsSinceEpoch)
        m.spend = try c.query(
            """
            SELECT program_id, currency,
                   coalesce(sum(amount_minor) FILTER (WHERE issued_at >= $1::timestamptz AND issued_at < $2::timestamptz), 0)::int8 AS issued,
                   coalesce(sum(amount_minor) FILTER (WHERE state = 'reversed' AND updated_at >= $1::timestamptz
                                                       AND updated_at < $2::timestamptz), 0)::int8 AS reversed
            FROM rewards
            WHERE ((issued_at >= $1::timestamptz AND issued_at < $2::timestamptz)
                   OR (state = 'reversed' AND updated_at >= $1::timestamptz AND updated_at < $2::timestamptz))
              AND ($3::text IS NULL OR program_id = $3::text)
            GROUP BY 1, 2 ORDER BY 1, 2
            """, [.text(m.start.rfc3339), .text(now.rfc3339), PostgresValue(programId)]
        ).map {
            .init(
                programId: try $0.decode("program_id", as: String.self),
                currency: try $0.decode("currency", as: String.self),
                issuedMinor: try $0.decode("issued", as: Int64.self),
                reversedMinor: try $0.decode("reversed", as: Int64.self))
        }
        return m
    }
}
