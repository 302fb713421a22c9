import Postgres
import ReferralCore

extension ReportFigures {
    /// Reward spend of the cohort's referrals in one group (a friend's plan, an ask moment) and
    /// currency, with the group's referrals that qualified.
    public struct GroupSpend: Sendable, Equatable {
        public var group: String
        public var currency: String
        public var issued: Money, reversed: Money
        /// Referrals of the group that reached `qualified` (whatever their currency).
        public var qualified: Int64
    }

    /// Leads of one sales channel (`facts.channel`; "unknown" when none was sent).
    public struct Channel: Sendable, Equatable {
        public var channel: String
        /// Referral leads of the cohort.
        public var leads: Int64
        public var activated: Int64, qualified: Int64
        /// Leads of the period that became no referral (every program: they have none).
        public var unattributed: Int64
    }
}

extension ReportStore {
    /// The cohort's rewards, per referral and currency (`report_spend`), for the breakdowns by
    /// plan and by moment: issued (every state), and reversed (clawed back).
    static func cohortSpend(_ c: isolated PostgresConnection) throws {
        try c.execute(
            """
            CREATE TEMP TABLE report_spend ON COMMIT DROP AS
            SELECT w.referral_id, w.currency, count(*)::int8 AS issued_n, sum(w.amount_minor)::int8 AS issued_a,
                   count(*) FILTER (WHERE w.state = 'reversed')::int8 AS reversed_n,
                   coalesce(sum(w.amount_minor) FILTER (WHERE w.state = 'reversed'), 0)::int8 AS reversed_a
            FROM rewards w JOIN report_cohort USING (referral_id)
            GROUP BY w.referral_id, w.currency
            """)
    }

    /// `groups`: one row per referral of the cohort with its group (`grp`), and whether it qualified.
    private static func groupSpend(_ c: isolated PostgresConnection, groups: String, _ parameters: [PostgresValue] = [])
        throws -> [ReportFigures.GroupSpend]
    {
        try c.query(
            """
            WITH g AS (\(groups)),
            q AS (SELECT grp, count(DISTINCT referral_id) FILTER (WHERE qualified)::int8 AS qualified FROM g GROUP BY grp)
            SELECT g.grp, s.currency, sum(s.issued_n)::int8 AS issued_n, sum(s.issued_a)::int8 AS issued_a,
                   sum(s.reversed_n)::int8 AS reversed_n, sum(s.reversed_a)::int8 AS reversed_a, max(q.qualified) AS qualified
            FROM g JOIN report_spend s USING (referral_id) JOIN q USING (grp)
            GROUP BY g.grp, s.currency ORDER BY g.grp, s.currency
            """, parameters
        ).map { r in
            .init(
                group: try r.decode("grp", as: String.self), currency: try r.decode("currency", as: String.self),
                issued: .init(
                    count: try r.decode("issued_n", as: Int64.self),
                    amountMinor: try r.decode("issued_a", as: Int64.self)),
                reversed: .init(
                    count: try r.decode("reversed_n", as: Int64.self),
                    amountMinor: try r.decode("reversed_a", as: Int64.self)),
                qualified: try r.decode("qualified", as: Int64.self))
        }
    }

    private static let qualified = "num_nonnulls(qualified_at, rewarded_at) > 0"

    /// By the friend's plan of their first activation ("none": no plan named, or no activation).
    static func spendByPlan(_ c: isolated PostgresConnection) throws -> [ReportFigures.GroupSpend] {
        try groupSpend(c, groups: "SELECT referral_id, plan AS grp, \(qualified) AS qualified FROM report_cohort")
    }

    /// By the moment of the asks a referral's lead followed, attributed as `moments` attributes
    /// leads (an ask of the period to the referrer within the follow window before the lead): a
    /// referral that followed asks of two moments counts in both; "none" when it followed none.
    static func spendByMoment(_ c: isolated PostgresConnection, followWindow: Span) throws -> [ReportFigures.GroupSpend]
    {
        try groupSpend(
            c,
            groups: """
                SELECT r.referral_id, coalesce(f.moment, 'none') AS grp, \(qualified) AS qualified
                FROM report_cohort r
                LEFT JOIN (SELECT DISTINCT a.moment, r.referral_id FROM report_asks a
                           JOIN report_cohort r ON r.referrer = a.account_id
                                AND r.lead_at >= a.sent_at AND r.lead_at < a.sent_at + make_interval(secs => $1)) f USING (referral_id)
                """, [.double(Double(followWindow.microseconds) / 1_000_000)])
    }

    /// The cohort's leads by channel, with the unattributed leads of the period by channel.
    static func channels(_ c: isolated PostgresConnection, unattributed: [String: Int64]) throws -> [ReportFigures
        .Channel]
    {
        var rows: [String: ReportFigures.Channel] = [:]
        for r in try c.query(
            """
            SELECT coalesce(channel, 'unknown') AS channel, count(*)::int8 AS leads,
                   count(*) FILTER (WHERE num_nonnulls(activated_at, qualified_at, rewarded_at) > 0)::int8 AS activated,
                   count(*) FILTER (WHERE \(qualified))::int8 AS qualified
            FROM report_cohort GROUP BY 1
            """)
        {
            let channel = try r.decode("channel", as: String.self)
            rows[channel] = .init(
                channel: channel, leads: try r.decode("leads", as: Int64.self),
                activated: try r.decode("activated", as: Int64.self),
                qualified: try r.decode("qualified", as: Int64.self), unattributed: 0)
        }
        for (channel, n) in unattributed {
            rows[channel, default: .init(channel: channel, leads: 0, activated: 0, qualified: 0, unattributed: 0)]
                .unattributed = n
        }
        return rows.values.sorted { $0.channel < $1.channel }
    }
}
