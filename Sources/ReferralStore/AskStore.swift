import Postgres
import ReferralCore

/// Persistence of the ask rules and follow-ups: ask facts, asks sent, follow-ups sent, account
/// timers.
public enum AskStore {
    public static func insertAskFacts(_ c: isolated PostgresConnection, _ facts: [AskFact]) throws {
        if facts.isEmpty { return }
        let rows = facts.map(AskFactRow.init)
        try c.executeDeferred(
            """
            INSERT INTO ask_facts (account_id, at, kind, segment, ticket_id, csat, measured_mbps, plan_mbps, prompts,
                                   invoice_id, credits_minor, first_ask_at)
            SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int4[],
                                 $7::float8[], $8::float8[], $9::bool[], $10::text[], $11::int8[], $12::timestamptz[])
            """,
            [
                .textArray(facts.map(\.accountId)), .textArray(facts.map { $0.at.rfc3339 }),
                .textArray(rows.map(\.kind)),
                .textArray(rows.map(\.segment)), .textArray(rows.map(\.ticket)),
                .textArray(rows.map { $0.csat.map(String.init) }),
                .textArray(rows.map { $0.measured.map { "\($0)" } }), .textArray(rows.map { $0.plan.map { "\($0)" } }),
                .boolArray(rows.map(\.prompts)), .textArray(rows.map(\.invoice)), .int8Array(rows.map(\.credits)),
                .textArray(rows.map { $0.firstAsk?.rfc3339 }),
            ])
    }

    /// Serialises ask decisions per account across instances: without it two instances could
    /// each send a different ask to one account at the same moment, breaking `min_gap`. Locks
    /// are taken in sorted order so that two batches never wait on each other in a cycle;
    /// they end with the transaction.
    public static func lockAccounts(_ c: isolated PostgresConnection, _ accounts: [String]) throws {
        if accounts.isEmpty { return }
        // The sort is in a subquery: in `SELECT f(x) ... ORDER BY`, f runs before the sort.
        try c.executeDeferred(
            """
            SELECT pg_advisory_xact_lock(2, h) FROM (SELECT DISTINCT hashtext(a) AS h FROM unnest($1::text[]) AS a ORDER BY h) s
            """, [.textArray(Array(Set(accounts)))])
    }

    public static func loadAskFacts(_ c: isolated PostgresConnection, accounts: [String]) throws -> [String: [AskFact]]
    {
        var out: [String: [AskFact]] = [:]
        for row in try c.query(
            """
            SELECT account_id, at, kind, segment, ticket_id, csat::int8 AS csat, measured_mbps, plan_mbps, prompts,
                   invoice_id, credits_minor, first_ask_at
            FROM ask_facts WHERE account_id = ANY($1::text[]) ORDER BY seq
            """, [.textArray(accounts)])
        {
            if let fact = try AskFactRow.fact(row) { out[fact.accountId, default: []].append(fact) }
        }
        return out
    }

    /// The ask facts of these accounts that can still change a decision at `now`: the rows
    /// `ReferralAsks.relevantFacts` keeps (see there why they are enough), selected by index
    /// ranges so that an account's old speed tests are never read. The worker's decisions use
    /// this; `explain` reads every fact (`loadAskFacts`), to list old skipped asks too.
    /// Ranges on (account_id, kind, at): each branch reads its own kinds; tickets and invoices
    /// are read per account and kind (few tickets; invoices grow by one a month) to find the
    /// open ones and those with a fact in the window.
    public static func loadRelevantAskFacts(
        _ c: isolated PostgresConnection, accounts: [String], now: Instant,
        freshness: Span
    ) throws -> [String: [AskFact]] {
        if accounts.isEmpty { return [:] }
        var out: [String: [AskFact]] = [:]
        for row in try c.query(
            """
            WITH acc AS (SELECT DISTINCT unnest($1::text[]) AS account_id),
            picked AS (
                -- Everything in the window or ahead of now.
                SELECT f.seq FROM acc CROSS JOIN LATERAL (
                    SELECT seq FROM ask_facts f WHERE f.account_id = acc.account_id AND f.kind = ANY($3::text[]) AND f.at >= $2::timestamptz
                ) f
                UNION
                -- The once-per-account facts.
                SELECT f.seq FROM ask_facts f
                WHERE f.account_id = ANY($1::text[]) AND f.kind IN ('installed', 'activated', 'cancelled', 'erased', 'enrolled')
                UNION
                -- Tickets with a fact in the window, and tickets never resolved.
                SELECT f.seq FROM ask_facts f
                WHERE f.account_id = ANY($1::text[]) AND f.kind IN ('ticket_opened', 'ticket_resolved')
                  AND (EXISTS (SELECT 1 FROM ask_facts r WHERE r.account_id = f.account_id AND r.ticket_id = f.ticket_id
                                 AND r.kind IN ('ticket_opened', 'ticket_resolved') AND r.at >= $2::timestamptz)
                       OR (f.kind = 'ticket_opened'
                           AND NOT EXISTS (SELECT 1 FROM ask_facts r WHERE r.account_id = f.account_id AND r.ticket_id = f.ticket_id
                                             AND r.kind = 'ticket_resolved')))
                UNION
                -- Invoices with a fact in the window, and invoices overdue and never paid.
                SELECT f.seq FROM ask_facts f
                WHERE f.account_id = ANY($1::text[]) AND f.kind = 'overdue'
                  AND NOT EXISTS (SELECT 1 FROM ask_facts r WHERE r.account_id = f.account_id AND r.invoice_id = f.invoice_id
                                    AND r.kind = 'paid')
                UNION
                SELECT f.seq FROM ask_facts f
                JOIN (SELECT DISTINCT account_id, invoice_id FROM ask_facts
                      WHERE account_id = ANY($1::text[]) AND kind IN ('overdue', 'paid') AND at >= $2::timestamptz) w
                  ON w.account_id = f.account_id AND w.invoice_id = f.invoice_id
                WHERE f.kind IN ('overdue', 'paid')
                UNION
                -- The latest preference before the window (all of those at that instant).
                SELECT f.seq FROM acc CROSS JOIN LATERAL (
                    SELECT p.seq FROM ask_facts p WHERE p.account_id = acc.account_id AND p.kind = 'preferences'
                      AND p.at = (SELECT max(q.at) FROM ask_facts q WHERE q.account_id = acc.account_id
                                    AND q.kind = 'preferences' AND q.at < $2::timestamptz)
                ) f
            )
            SELECT account_id, at, kind, segment, ticket_id, csat::int8 AS csat, measured_mbps, plan_mbps, prompts,
                   invoice_id, credits_minor, first_ask_at
            FROM ask_facts WHERE seq IN (SELECT seq FROM picked) ORDER BY seq
            """, [.textArray(accounts), .text((now - freshness).rfc3339), .textArray(AskFactRow.kinds)])
        {
            if let fact = try AskFactRow.fact(row) { out[fact.accountId, default: []].append(fact) }
        }
        return out
    }

    public static func sentAsks(_ c: isolated PostgresConnection, accounts: [String]) throws -> [String: [SentAsk]] {
        var out: [String: [SentAsk]] = [:]
        for row in try c.query(
            """
            SELECT ask_key, account_id, moment, due_at, sent_at FROM asks WHERE account_id = ANY($1::text[]) ORDER BY sent_at
            """, [.textArray(accounts)])
        {
            guard let moment = AskMoment(rawValue: try row.decode("moment", as: String.self)) else { continue }
            out[try row.decode("account_id", as: String.self), default: []].append(
                SentAsk(
                    key: try row.decode("ask_key", as: String.self), moment: moment,
                    dueAt: try instant(row, "due_at"), sentAt: try instant(row, "sent_at")))
        }
        return out
    }

    /// Records asks about to be published, in one statement; returns the keys recorded now. A
    /// key already recorded (another instance or an earlier delivery sent it) is left out, and
    /// then nothing must be published for it.
    public static func recordAsks(
        _ c: isolated PostgresConnection,
        _ asks: [(ask: SentAsk, accountId: String, programId: String)]
    ) throws -> Set<String> {
        if asks.isEmpty { return [] }
        return Set(
            try c.query(
                """
                INSERT INTO asks (ask_key, account_id, moment, program_id, due_at, sent_at)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[])
                ON CONFLICT (ask_key) DO NOTHING
                RETURNING ask_key
                """,
                [
                    .textArray(asks.map(\.ask.key)), .textArray(asks.map(\.accountId)),
                    .textArray(asks.map(\.ask.moment.rawValue)), .textArray(asks.map(\.programId)),
                    .textArray(asks.map(\.ask.dueAt.rfc3339)), .textArray(asks.map(\.ask.sentAt.rfc3339)),
                ]
            )
            .map { try $0.decode("ask_key", as: String.self) })
    }

    /// Sets each account's next wake-up, or clears it (nil), in two statements for the lot.
    public static func setAccountTimers(_ c: isolated PostgresConnection, _ timers: [(account: String, due: Instant?)])
        throws
    {
        let set = timers.compactMap { t in t.due.map { (t.account, $0) } }
        let cleared = timers.filter { $0.due == nil }.map(\.account)
        if !set.isEmpty {
            try c.executeDeferred(
                """
                INSERT INTO account_timers (account_id, due_at)
                SELECT * FROM unnest($1::text[], $2::timestamptz[])
                ON CONFLICT (account_id) DO UPDATE SET due_at = excluded.due_at
                WHERE account_timers.due_at IS DISTINCT FROM excluded.due_at
                """, [.textArray(set.map(\.0)), .textArray(set.map { $0.1.rfc3339 })])
        }
        if !cleared.isEmpty {
            try c.executeDeferred(
                "DELETE FROM account_timers WHERE account_id = ANY($1::text[])", [.textArray(cleared)])
        }
    }

    /// Accounts among these that `referrald enroll` already brought in: a re-run skips them.
    public static func enrolledAccounts(_ c: isolated PostgresConnection, _ accounts: [String]) throws -> Set<String> {
        Set(
            try c.query(
                """
                SELECT DISTINCT account_id FROM ask_facts WHERE kind = 'enrolled' AND account_id = ANY($1::text[])
                """, [.textArray(accounts)]
            ).map { try $0.decode("account_id", as: String.self) })
    }

    // MARK: follow-ups

    public static func followupKeys(_ c: isolated PostgresConnection, referrals: [String]) throws -> Set<String> {
        Set(
            try c.query(
                "SELECT followup_key FROM followups WHERE referral_id = ANY($1::text[])", [.textArray(referrals)]
            )
            .map { try $0.decode("followup_key", as: String.self) })
    }

    /// Records follow-ups; returns those that were new (the others were sent already).
    public static func recordFollowups(_ c: isolated PostgresConnection, _ due: [FollowupDue]) throws -> [FollowupDue] {
        if due.isEmpty { return [] }
        let inserted = Set(
            try c.query(
                """
                INSERT INTO followups (followup_key, referral_id, stage, stalled_since, sent_at)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
                ON CONFLICT (followup_key) DO NOTHING
                RETURNING followup_key
                """,
                [
                    .textArray(due.map(\.key)), .textArray(due.map(\.referralId)),
                    .textArray(due.map(\.stage.rawValue)),
                    .textArray(due.map { $0.stalledSince.rfc3339 }), .textArray(due.map { $0.sentAt.rfc3339 }),
                ]
            )
            .map { try $0.decode("followup_key", as: String.self) })
        return due.filter { inserted.contains($0.key) }
    }
}

func instant(_ row: PostgresRow, _ column: String) throws -> Instant {
    Instant(microseconds: try row.decode(column, as: PostgresTimestamp.self).microsecondsSinceEpoch)
}

/// An ask fact as a row of `ask_facts`.
struct AskFactRow {
    var kind: String
    var segment: String?, ticket: String?, csat: Int?, measured: Double?, plan: Double?
    var prompts: Bool?, invoice: String?, credits: Int64?, firstAsk: Instant?

    init(_ f: AskFact) {
        switch f.kind {
        case .installCompleted: kind = "installed"
        case .serviceActivated(let s):
            kind = "activated"
            segment = s?.rawValue
        case .serviceCancelled: kind = "cancelled"
        case .speedTest(let m, let p):
            kind = "speed_test"
            measured = m
            plan = p
        case .ticketOpened(let t):
            kind = "ticket_opened"
            ticket = t
        case .ticketResolved(let t, let c):
            kind = "ticket_resolved"
            ticket = t
            csat = c
        case .preferencesChanged(let on):
            kind = "preferences"
            prompts = on
        case .invoiceOverdue(let i):
            kind = "overdue"
            invoice = i
        case .invoicePaid(let i, let c):
            kind = "paid"
            invoice = i
            credits = c
        case .customerErased: kind = "erased"
        case .enrolled(let at):
            kind = "enrolled"
            firstAsk = at
        }
    }

    /// Every kind this binary stores, for queries that range over all of them by index.
    static let kinds = [
        "installed", "activated", "cancelled", "speed_test", "ticket_opened", "ticket_resolved",
        "preferences", "overdue", "paid", "erased", "enrolled",
    ]

    /// nil for a kind this binary does not know (a newer release's row).
    static func fact(_ row: PostgresRow) throws -> AskFact? {
        let account = try row.decode("account_id", as: String.self)
        let at = try instant(row, "at")
        func s(_ c: String) throws -> String? { try row.decodeIfPresent(c, as: String.self) }
        let kind: AskFact.Kind
        switch try row.decode("kind", as: String.self) {
        case "installed": kind = .installCompleted
        case "activated": kind = .serviceActivated(segment: try s("segment").flatMap(Segment.init(rawValue:)))
        case "cancelled": kind = .serviceCancelled
        case "speed_test":
            kind = .speedTest(
                measuredDownMbps: try row.decode("measured_mbps", as: Double.self),
                planDownMbps: try row.decode("plan_mbps", as: Double.self))
        case "ticket_opened": kind = .ticketOpened(ticketId: try s("ticket_id") ?? "")
        case "ticket_resolved":
            kind = .ticketResolved(
                ticketId: try s("ticket_id") ?? "",
                csat: try row.decodeIfPresent("csat", as: Int64.self).map { Int($0) })
        case "preferences": kind = .preferencesChanged(referralPrompts: try row.decode("prompts", as: Bool.self))
        case "overdue": kind = .invoiceOverdue(invoiceId: try s("invoice_id") ?? "")
        case "paid":
            kind = .invoicePaid(
                invoiceId: try s("invoice_id") ?? "",
                creditsMinor: try row.decodeIfPresent("credits_minor", as: Int64.self))
        case "erased": kind = .customerErased
        case "enrolled": kind = .enrolled(firstAskAt: try instant(row, "first_ask_at"))
        default: return nil
        }
        return AskFact(accountId: account, at: at, kind: kind)
    }
}
