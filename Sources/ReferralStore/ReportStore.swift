import Postgres
import ReferralCore

/// What `referrald report` asks for: a half-open period [from, to) of lead (or ask) fact times,
/// optionally one program.
public struct ReportScope: Sendable {
    public var from: Instant
    public var to: Instant
    public var programId: String?
    /// How long after an ask a referrer's lead still counts as following it.
    public var askFollowWindow: Span

    public init(from: Instant, to: Instant, programId: String?, askFollowWindow: Span = .days(30)) {
        self.from = from
        self.to = to
        self.programId = programId
        self.askFollowWindow = askFollowWindow
    }
}

/// The raw figures of a report, as counted by the database; ratios are derived by the caller.
public struct ReportFigures: Sendable, Equatable {
    public struct Stage: Sendable, Equatable {
        public var stage: String
        /// Referrals that reached this step or any later one.
        public var reached: Int64
        /// Median of (this step's time − the previous step's time) over referrals with both.
        public var medianSecondsFromPrevious: Double?
    }
    public struct Outcome: Sendable, Equatable {
        public var stage: String
        public var reason: String?
        public var count: Int64
    }
    public struct Money: Sendable, Equatable {
        public var count: Int64
        public var amountMinor: Int64
    }
    public struct Cost: Sendable, Equatable {
        public var currency: String
        public var issued: Money, applied: Money, pending: Money, reversed: Money, failed: Money
        public var referrerAmountMinor: Int64, friendAmountMinor: Int64
    }
    public struct Moment: Sendable, Equatable {
        public var moment: String
        public var asks: Int64
        public var customers: Int64
        public var leadsFollowing: Int64
    }
    public struct Week: Sendable, Equatable {
        public var weekStart: Instant
        public var leads: Int64, activated: Int64, qualified: Int64
    }

    public var customersAsked: Int64 = 0
    public var asksSent: Int64 = 0
    public var referrers: Int64 = 0
    public var askedReferrers: Int64 = 0
    public var funnel: [Stage] = []
    public var unattributedWithoutCode: Int64 = 0
    public var unattributedUnknownCode: Int64 = 0
    public var outcomes: [Outcome] = []
    public var costs: [Cost] = []
    public var repeatAdvocates: Int64 = 0
    public var moments: [Moment] = []
    public var weeks: [Week] = []
    /// Version 2 (`ReportBreakdownStore.swift`, `ReportBudgetStore.swift`).
    public var byPlan: [GroupSpend] = []
    public var byMoment: [GroupSpend] = []
    public var channels: [Channel] = []
    public var months: [Month] = []
    public var budgets: [Budget] = []
    public var monthToDate = MonthToDate()

    public init() {}
}

public enum ReportStore {
    /// Every figure of the program report, from one snapshot (REPEATABLE READ): the funnel, the
    /// costs and the asks never mix two states of a database the worker is writing to.
    ///
    /// The cohort is the referrals whose lead's first fact time in the period lies in it; each
    /// step's time is a fact time (order by lead, install and activation of the friend account,
    /// credit applied by reward) except "qualified", which is when the first reward was issued
    /// (the worker issues at qualification; the core's exact qualification instant is derived,
    /// not stored). The cohort goes to a temporary table once, so the half-dozen aggregates do
    /// not each redo the joins over `facts`. Temporary tables need a writable session: run it
    /// against the primary or a writable replica, not a hot standby.
    ///
    /// `now` dates the month-to-date spend the forecast extrapolates.
    public static func report(_ c: isolated PostgresConnection, _ scope: ReportScope, now: Instant) throws
        -> ReportFigures
    {
        try c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        let period: [PostgresValue] = [
            .text(scope.from.rfc3339), .text(scope.to.rfc3339), PostgresValue(scope.programId),
        ]
        // A report reads a large part of the tables once: hashing and sorting in memory rather
        // than in batches on disk (4 MB default) halves the time of a year-long report.
        try c.execute("SET LOCAL work_mem = '256MB'")
        try c.execute(
            """
            CREATE TEMP TABLE report_referrals ON COMMIT DROP AS
            SELECT r.referral_id, r.lead_id, r.referrer_account_id AS referrer, r.friend_account_id AS friend,
                   r.stage, r.reason, first.at AS lead_at, first.channel
            FROM (SELECT DISTINCT ON (lead_id) lead_id, at, channel FROM facts
                  WHERE kind = 'lead' AND at >= $1::timestamptz AND at < $2::timestamptz ORDER BY lead_id, at) first
            JOIN referrals r USING (lead_id)
            WHERE $3::text IS NULL OR r.program_id = $3::text
            """, period)
        // The cohort's size decides between looking each referral's facts up in the indexes
        // (a week) and hashing whole tables (a year); without statistics on the temporary
        // table the planner guesses, and guessed nested loops over a year's cohort took 3x longer.
        try c.execute("ANALYZE report_referrals")
        try c.execute(
            """
            CREATE TEMP TABLE report_cohort ON COMMIT DROP AS
            WITH o AS (SELECT f.lead_id, min(f.at) AS at FROM facts f JOIN report_referrals l USING (lead_id)
                       WHERE f.kind = 'order' GROUP BY f.lead_id),
            acc AS (SELECT f.account_id, min(f.at) FILTER (WHERE f.kind = 'installed') AS installed_at,
                           min(f.at) FILTER (WHERE f.kind = 'activated') AS activated_at
                    FROM facts f WHERE f.kind IN ('installed', 'activated')
                      AND f.account_id IN (SELECT friend FROM report_referrals WHERE friend IS NOT NULL)
                    GROUP BY f.account_id),
            rw AS (SELECT w.referral_id, min(w.issued_at) AS qualified_at, min(a.at) AS rewarded_at
                   FROM rewards w JOIN report_referrals l USING (referral_id)
                   LEFT JOIN facts a ON a.kind = 'credit_applied' AND a.reward_id = w.reward_id
                   GROUP BY w.referral_id),
            -- The friend's plan is that of their first activation, as rewards `by_plan` read it
            -- (`AccountInfo.firstPlans`); of two plans named at that instant, the first by name.
            plan AS (SELECT DISTINCT ON (p.account_id) p.account_id, p.plan_id FROM acc
                     JOIN facts p ON p.account_id = acc.account_id AND p.kind = 'plan' AND p.at = acc.activated_at
                     ORDER BY p.account_id, p.plan_id)
            SELECT l.referral_id, l.referrer, l.stage, l.reason, l.lead_at, o.at AS ordered_at,
                   acc.installed_at, acc.activated_at, rw.qualified_at, rw.rewarded_at, l.channel,
                   coalesce(plan.plan_id, 'none') AS plan
            FROM report_referrals l LEFT JOIN o USING (lead_id) LEFT JOIN acc ON acc.account_id = l.friend
            LEFT JOIN rw USING (referral_id) LEFT JOIN plan ON plan.account_id = l.friend
            """)

        var f = ReportFigures()
        // "Reached" is cumulative: a mobile line has no install, yet its activation counts as
        // having passed the install step, so no step shows more referrals than the one before.
        let funnel = try c.query(
            """
            SELECT count(*)::int8 AS lead,
                   count(*) FILTER (WHERE num_nonnulls(ordered_at, installed_at, activated_at, qualified_at, rewarded_at) > 0)::int8 AS ordered,
                   count(*) FILTER (WHERE num_nonnulls(installed_at, activated_at, qualified_at, rewarded_at) > 0)::int8 AS installed,
                   count(*) FILTER (WHERE num_nonnulls(activated_at, qualified_at, rewarded_at) > 0)::int8 AS activated,
                   count(*) FILTER (WHERE num_nonnulls(qualified_at, rewarded_at) > 0)::int8 AS qualified,
                   count(*) FILTER (WHERE rewarded_at IS NOT NULL)::int8 AS rewarded,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ordered_at - lead_at)) AS m_ordered,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM installed_at - ordered_at)) AS m_installed,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM activated_at - installed_at)) AS m_activated,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM qualified_at - activated_at)) AS m_qualified,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM rewarded_at - qualified_at)) AS m_rewarded,
                   count(DISTINCT referrer)::int8 AS referrers
            FROM report_cohort
            """)[0]
        f.funnel = try ["lead", "ordered", "installed", "activated", "qualified", "rewarded"].map { s in
            ReportFigures.Stage(
                stage: s, reached: try funnel.decode(s, as: Int64.self),
                medianSecondsFromPrevious: s == "lead" ? nil : try funnel.decodeIfPresent("m_" + s, as: Double.self))
        }
        f.referrers = try funnel.decode("referrers", as: Int64.self)

        f.outcomes = try c.query(
            """
            SELECT stage, reason, count(*)::int8 AS n FROM report_cohort GROUP BY stage, reason ORDER BY stage, reason NULLS FIRST
            """
        ).map {
            .init(
                stage: try $0.decode("stage", as: String.self),
                reason: try $0.decodeIfPresent("reason", as: String.self),
                count: try $0.decode("n", as: Int64.self))
        }
        f.repeatAdvocates = try c.query(
            """
            SELECT count(*)::int8 AS n FROM (SELECT referrer FROM report_cohort WHERE qualified_at IS NOT NULL
                                          GROUP BY referrer HAVING count(*) >= 2) x
            """)[0].decode("n", as: Int64.self)

        f.costs = try c.query(
            """
            SELECT w.currency,
                   count(*)::int8 AS issued_n, sum(w.amount_minor)::int8 AS issued_a,
                   count(*) FILTER (WHERE w.state = 'applied')::int8 AS applied_n,
                   coalesce(sum(w.amount_minor) FILTER (WHERE w.state = 'applied'), 0)::int8 AS applied_a,
                   count(*) FILTER (WHERE w.state = 'issued')::int8 AS pending_n,
                   coalesce(sum(w.amount_minor) FILTER (WHERE w.state = 'issued'), 0)::int8 AS pending_a,
                   count(*) FILTER (WHERE w.state = 'reversed')::int8 AS reversed_n,
                   coalesce(sum(w.amount_minor) FILTER (WHERE w.state = 'reversed'), 0)::int8 AS reversed_a,
                   count(*) FILTER (WHERE w.state = 'failed')::int8 AS failed_n,
                   coalesce(sum(w.amount_minor) FILTER (WHERE w.state = 'failed'), 0)::int8 AS failed_a,
                   coalesce(sum(w.amount_minor) FILTER (WHERE w.beneficiary = 'referrer'), 0)::int8 AS referrer_a,
                   coalesce(sum(w.amount_minor) FILTER (WHERE w.beneficiary = 'friend'), 0)::int8 AS friend_a
            FROM rewards w JOIN report_cohort c USING (referral_id)
            GROUP BY w.currency ORDER BY w.currency
            """
        ).map { r in
            func money(_ p: String) throws -> ReportFigures.Money {
                .init(
                    count: try r.decode(p + "_n", as: Int64.self), amountMinor: try r.decode(p + "_a", as: Int64.self))
            }
            return .init(
                currency: try r.decode("currency", as: String.self), issued: try money("issued"),
                applied: try money("applied"), pending: try money("pending"), reversed: try money("reversed"),
                failed: try money("failed"), referrerAmountMinor: try r.decode("referrer_a", as: Int64.self),
                friendAmountMinor: try r.decode("friend_a", as: Int64.self))
        }

        f.weeks = try c.query(
            """
            SELECT date_trunc('week', lead_at) AS week, count(*)::int8 AS leads,
                   count(*) FILTER (WHERE num_nonnulls(activated_at, qualified_at, rewarded_at) > 0)::int8 AS activated,
                   count(*) FILTER (WHERE num_nonnulls(qualified_at, rewarded_at) > 0)::int8 AS qualified
            FROM report_cohort GROUP BY 1 ORDER BY 1
            """
        ).map {
            .init(
                weekStart: Instant(
                    microseconds: try $0.decode("week", as: PostgresTimestamp.self).microsecondsSinceEpoch),
                leads: try $0.decode("leads", as: Int64.self), activated: try $0.decode("activated", as: Int64.self),
                qualified: try $0.decode("qualified", as: Int64.self))
        }

        // Unattributed leads carry no program (no referral binds them to one), so this figure
        // covers every lead of the period whatever `programId` says. By channel, for `channels`.
        var unattributedByChannel: [String: Int64] = [:]
        for row in try c.query(
            """
            SELECT coalesce(channel, 'unknown') AS channel, count(*) FILTER (WHERE code IS NULL)::int8 AS no_code,
                   count(*) FILTER (WHERE code IS NOT NULL)::int8 AS unknown
            FROM (SELECT DISTINCT ON (lead_id) lead_id, code, channel FROM facts
                  WHERE kind = 'lead' AND at >= $1::timestamptz AND at < $2::timestamptz ORDER BY lead_id, at) l
            WHERE NOT EXISTS (SELECT 1 FROM referrals r WHERE r.lead_id = l.lead_id)
            GROUP BY 1
            """, Array(period.prefix(2)))
        {
            let (noCode, unknown) = (
                try row.decode("no_code", as: Int64.self), try row.decode("unknown", as: Int64.self)
            )
            f.unattributedWithoutCode += noCode
            f.unattributedUnknownCode += unknown
            unattributedByChannel[try row.decode("channel", as: String.self)] = noCode + unknown
        }
        f.channels = try channels(c, unattributed: unattributedByChannel)
        try cohortSpend(c)
        f.byPlan = try spendByPlan(c)

        try c.execute(
            """
            CREATE TEMP TABLE report_asks ON COMMIT DROP AS
            SELECT ask_key, account_id, moment, sent_at FROM asks
            WHERE sent_at >= $1::timestamptz AND sent_at < $2::timestamptz AND ($3::text IS NULL OR program_id = $3::text)
            """, period)
        let asked = try c.query(
            "SELECT count(DISTINCT account_id)::int8 AS customers, count(*)::int8 AS asks FROM report_asks")[0]
        f.customersAsked = try asked.decode("customers", as: Int64.self)
        f.asksSent = try asked.decode("asks", as: Int64.self)
        f.askedReferrers = try c.query(
            """
            SELECT count(DISTINCT referrer)::int8 AS n FROM report_cohort
            WHERE referrer IN (SELECT account_id FROM report_asks)
            """)[0].decode("n", as: Int64.self)
        try c.execute("ANALYZE report_asks")
        // A lead follows an ask when it is one of the period's referral leads (the cohort) of
        // the asked customer, dated within the window after the ask. Counting from the cohort
        // rather than from all of `facts` keeps a year-long report from joining every ask to
        // every lead ever; a lead after `to` belongs to the next period's report. A lead after
        // two asks of different moments counts for both moments.
        f.moments = try c.query(
            """
            WITH following AS (
                SELECT a.moment, count(DISTINCT r.referral_id)::int8 AS leads
                FROM report_asks a
                JOIN report_cohort r ON r.referrer = a.account_id
                     AND r.lead_at >= a.sent_at AND r.lead_at < a.sent_at + make_interval(secs => $1)
                GROUP BY a.moment
            )
            SELECT a.moment, count(*)::int8 AS asks, count(DISTINCT a.account_id)::int8 AS customers,
                   coalesce(max(following.leads), 0)::int8 AS leads
            FROM report_asks a LEFT JOIN following USING (moment)
            GROUP BY a.moment ORDER BY a.moment
            """, [.double(Double(scope.askFollowWindow.microseconds) / 1_000_000)]
        ).map {
            .init(
                moment: try $0.decode("moment", as: String.self), asks: try $0.decode("asks", as: Int64.self),
                customers: try $0.decode("customers", as: Int64.self),
                leadsFollowing: try $0.decode("leads", as: Int64.self))
        }
        f.byMoment = try spendByMoment(c, followWindow: scope.askFollowWindow)
        f.budgets = try programBudgets(c, programId: scope.programId)
        f.months = try months(c, scope)
        f.monthToDate = try monthToDate(c, programId: scope.programId, now: now)
        return f
    }
}

/// One stored event for `referrald export-events`.
public struct ExportedEvent: Sendable {
    public var body: [UInt8]
    public var receivedAt: Instant
}

extension ReportStore {
    /// Inbox bodies in the order the worker received them (`received_at`, then fact time, then
    /// id: the rows of one batch share a `received_at`), with fact time in [from, to). Bodies
    /// dropped by retention (empty: `RetentionStore`) are left out: an empty line is no event.
    ///
    /// Received order, not fact order, because a replay must feed the core what the worker saw
    /// when it saw it: referral numbers follow first sight, and a late fact has to arrive late.
    public static func exportEvents(
        _ c: isolated PostgresConnection, from: Instant?, to: Instant?,
        each: (ExportedEvent) throws -> Void
    ) throws {
        // Keyset pages keep memory flat on a large inbox (a single SELECT would hold every body).
        var after: (received: String, fact: String, source: String, id: String)?
        while true {
            let rows = try c.query(
                """
                SELECT body, received_at, fact_time, source, event_id,
                       to_char(received_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS rk,
                       to_char(fact_time, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS fk
                FROM inbox
                WHERE octet_length(body) > 0
                  AND ($1::timestamptz IS NULL OR fact_time >= $1::timestamptz)
                  AND ($2::timestamptz IS NULL OR fact_time < $2::timestamptz)
                  AND ($3::timestamptz IS NULL
                       OR (received_at, fact_time, source, event_id) > ($3::timestamptz, $4::timestamptz, $5, $6))
                ORDER BY received_at, fact_time, source, event_id
                LIMIT 1000
                """,
                [
                    PostgresValue(from?.rfc3339), PostgresValue(to?.rfc3339), PostgresValue(after?.received),
                    PostgresValue(after?.fact), PostgresValue(after?.source), PostgresValue(after?.id),
                ])
            for row in rows {
                try each(
                    ExportedEvent(
                        body: try row.decode("body", as: [UInt8].self),
                        receivedAt: Instant(
                            microseconds: try row.decode("received_at", as: PostgresTimestamp.self)
                                .microsecondsSinceEpoch)))
            }
            guard rows.count == 1000, let last = rows.last else { return }
            after = (
                try last.decode("rk", as: String.self), try last.decode("fk", as: String.self),
                try last.decode("source", as: String.self), try last.decode("event_id", as: String.self)
            )
        }
    }

    /// Every issued code, for the snapshot lines of an export.
    public static func issuedCodes(_ c: isolated PostgresConnection) throws -> [(
        accountId: String, code: String, programId: String, issuedAt: Instant
    )] {
        try c.query("SELECT account_id, code, program_id, issued_at FROM referral_codes ORDER BY issued_at, account_id")
            .map {
                (
                    try $0.decode("account_id", as: String.self), try $0.decode("code", as: String.self),
                    try $0.decode("program_id", as: String.self),
                    Instant(microseconds: try $0.decode("issued_at", as: PostgresTimestamp.self).microsecondsSinceEpoch)
                )
            }
    }
}

extension Database {
    /// The report's figures, read in one snapshot (`ReportStore.report`).
    public func report(_ scope: ReportScope, now: Instant) async throws -> ReportFigures {
        try await transaction { c in try ReportStore.report(c, scope, now: now) }
    }

    /// Every issued code, then every inbox event of [from, to) in received order, from one
    /// snapshot, so that the codes and the events agree with each other. Returns the number of
    /// events.
    public func exportEvents(
        from: Instant?, to: Instant?,
        codes:
            @escaping @Sendable ([(accountId: String, code: String, programId: String, issuedAt: Instant)]) throws
            -> Void,
        each: @escaping @Sendable (ExportedEvent) throws -> Void
    ) async throws -> Int {
        try await transaction { c in
            try c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            try codes(try ReportStore.issuedCodes(c))
            var count = 0
            try ReportStore.exportEvents(c, from: from, to: to) { event in
                try each(event)
                count += 1
            }
            return count
        }
    }
}
