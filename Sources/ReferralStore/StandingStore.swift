import Foundation
import Logging
import Postgres
import ReferralCore

/// The incremental state of the competition rules (see `ReferralCore/Lifecycle/Competition.swift`):
/// each referral's standing in `referrals` (lead time, the code it ranks under, cap-slot
/// milestone) and `referral_links` (friend keys with the lead's time, for claims), and the size
/// of each ranking in `ranking_sizes`. Every read here is an index range scan bounded by a
/// limit, so a decision costs the same for a referrer with 100,000 referrals as for one with 3.
///
/// Ids are compared in the C collation everywhere (`COLLATE "C"`), because the core orders them
/// by their bytes: under a linguistic collation a tie on time would rank two leads differently
/// in SQL and in the oracle.
public enum StandingStore {
    /// The stored standings of these referrals; a referral whose standing was never computed
    /// (bound by a release before the incremental state) is absent.
    public static func loadStandings(_ c: isolated PostgresConnection, _ ids: [String]) throws -> [String:
        ReferralStanding]
    {
        if ids.isEmpty { return [:] }
        var out: [String: ReferralStanding] = [:]
        for row in try c.query(
            """
            SELECT r.referral_id, r.lead_id, r.referrer_account_id, r.code, r.lead_at, r.lead_code,
                   r.friend_account_id, r.milestone_at,
                   coalesce((SELECT string_agg(link, E'\\n' ORDER BY link COLLATE "C") FROM referral_links l
                             WHERE l.referral_id = r.referral_id), '') AS links
            FROM referrals r WHERE r.referral_id = ANY($1::text[]) AND r.lead_at IS NOT NULL
            """, [.textArray(ids)])
        {
            let links = try row.decode("links", as: String.self).split(separator: "\n").map(String.init)
            let code = try row.decode("code", as: String.self)
            let s = ReferralStanding(
                referralId: try row.decode("referral_id", as: String.self),
                leadId: try row.decode("lead_id", as: String.self),
                referrerAccountId: try row.decode("referrer_account_id", as: String.self), code: code,
                leadAt: try instant(row, "lead_at"),
                leadCode: try row.decodeIfPresent("lead_code", as: String.self),
                friendAccountId: try row.decodeIfPresent("friend_account_id", as: String.self),
                claimKeys: links.filter { !$0.hasPrefix("c:") }, contactKeys: links.filter { $0.hasPrefix("c:") },
                milestoneAt: try row.decodeIfPresent("milestone_at", as: PostgresTimestamp.self)
                    .map { Instant(microseconds: $0.microsecondsSinceEpoch) })
            out[s.referralId] = s
        }
        return out
    }

    static func instant(_ row: PostgresRow, _ column: String) throws -> Instant {
        Instant(microseconds: try row.decode(column, as: PostgresTimestamp.self).microsecondsSinceEpoch)
    }

    /// Serialises decisions that change the same ranking: who claims a friend key (referrals
    /// sharing a household may belong to referrers that two instances handle at once, and each
    /// would otherwise see itself as the first claimant), a code's day, a referrer's year (two
    /// batches each adding a milestone one short of the cap would each see itself inside it,
    /// and neither would re-decide the other). Taken before any standing is written, in hash
    /// order, after the batch's fact-key locks (`lockFactKeys`), always in that order.
    ///
    /// The keys of a change: the friend keys and rankings of its old and new standing, and the
    /// household/contact pairs it newly gives its referrer (`Lifecycle.personalLockKeys`).
    public static func lockCompetitionKeys(
        _ c: isolated PostgresConnection,
        _ changes: [(old: ReferralStanding?, new: ReferralStanding)]
    ) throws {
        let keys = changes.flatMap { change in
            [change.old, change.new].compactMap { $0 }.flatMap { s in
                s.claimKeys + [s.codeDay?.rankingKey, s.capYear?.rankingKey].compactMap { $0 }
            } + Lifecycle.personalLockKeys(change)
        }
        if keys.isEmpty { return }
        try c.executeDeferred(
            """
            SELECT pg_advisory_xact_lock(2, h) FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($1::text[]) k ORDER BY h) s
            """, [.textArray(keys)])
    }

    /// Writes changed standings: the referral's columns, its links (keys leave as well as
    /// arrive, after an earlier order to another account or an erasure: the links that went are
    /// deleted and the new ones inserted; all of them when the lead's time moved, which every
    /// link carries), and the sizes of the rankings it left and joined.
    public static func saveStandings(
        _ c: isolated PostgresConnection,
        _ changes: [(old: ReferralStanding?, new: ReferralStanding)], countSizes: Bool = true
    ) throws {
        let changed = changes.filter { $0.old != $0.new }.map(\.new)
        if changed.isEmpty { return }
        // The row itself only when its indexed columns moved: a change of friend keys alone
        // (an order, an activation) touches the links, and rewriting the row anyway was a
        // non-HOT update with an entry in each of its eight indexes.
        let rowsMoved = changes.filter { old, new in
            old?.leadAt != new.leadAt || old?.leadCode != new.leadCode || old?.milestoneAt != new.milestoneAt
        }.map(\.new)
        if !rowsMoved.isEmpty {
            try c.executeDeferred(
                """
                UPDATE referrals r SET lead_at = v.lead_at, lead_code = v.lead_code, milestone_at = v.milestone_at
                FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::timestamptz[]) AS v(id, lead_at, lead_code, milestone_at)
                WHERE r.referral_id = v.id
                """,
                [
                    .textArray(rowsMoved.map(\.referralId)), .textArray(rowsMoved.map { $0.leadAt.rfc3339 }),
                    .textArray(rowsMoved.map(\.leadCode)), .textArray(rowsMoved.map { $0.milestoneAt?.rfc3339 }),
                ])
        }
        var ids: [String] = []
        var links: [String] = []
        var leadAt: [String] = []
        var leads: [String] = []
        var goneIds: [String] = []
        var gone: [String] = []
        for (old, new) in changes where old != new {
            let keep = old.map { $0.leadAt == new.leadAt ? Set($0.claimKeys + $0.contactKeys) : [] } ?? []
            let now = Set(new.claimKeys + new.contactKeys)
            for link in now.subtracting(keep).sorted() {
                ids.append(new.referralId)
                links.append(link)
                leadAt.append(new.leadAt.rfc3339)
                leads.append(new.leadId)
            }
            // A standing computed for the first time (the backfill: the previous release's links,
            // `r:<referrer>` among them, go) or whose lead time moved: every old link goes.
            if keep.isEmpty {
                goneIds.append(new.referralId)
                gone.append("*")
            }
            for link in keep.subtracting(now).sorted() {
                goneIds.append(new.referralId)
                gone.append(link)
            }
        }
        if !goneIds.isEmpty {
            try c.executeDeferred(
                """
                DELETE FROM referral_links l USING unnest($1::text[], $2::text[]) AS g(referral_id, link)
                WHERE l.referral_id = g.referral_id AND (g.link = '*' OR l.link = g.link)
                """, [.textArray(goneIds), .textArray(gone)])
        }
        if !ids.isEmpty {
            try c.executeDeferred(
                """
                INSERT INTO referral_links (referral_id, link, lead_at, lead_id)
                SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])
                ON CONFLICT DO NOTHING
                """, [.textArray(ids), .textArray(links), .textArray(leadAt), .textArray(leads)])
        }
        if !countSizes { return }
        var delta: [String: Int64] = [:]
        for (old, new) in changes where old != new {
            if let k = old?.codeDay?.rankingKey { delta[k, default: 0] -= 1 }
            if let k = old?.capYear?.rankingKey { delta[k, default: 0] -= 1 }
            if let k = new.codeDay?.rankingKey { delta[k, default: 0] += 1 }
            if let k = new.capYear?.rankingKey { delta[k, default: 0] += 1 }
        }
        let moved = delta.filter { $0.value != 0 }.sorted { $0.key < $1.key }
        if moved.isEmpty { return }
        try c.executeDeferred(
            """
            INSERT INTO ranking_sizes (ranking, size) SELECT * FROM unnest($1::text[], $2::int8[])
            ON CONFLICT (ranking) DO UPDATE SET size = ranking_sizes.size + excluded.size
            """, [.textArray(moved.map(\.key)), .int8Array(moved.map(\.value))])
    }

    /// The limits of every program version known: members of one ranking may be bound to
    /// different versions, each judged by its own.
    public static func rankingLimits(_ c: isolated PostgresConnection) throws -> (leads: Set<Int>, caps: Set<Int>) {
        var leads: Set<Int> = []
        var caps: Set<Int> = []
        for row in try c.query(
            """
            SELECT DISTINCT (program->'limits'->>'max_leads_per_code_per_day')::int8 AS leads,
                            (program->'limits'->>'max_rewards_per_referrer_per_year')::int8 AS caps
            FROM program_versions
            """)
        {
            leads.insert(Int(try row.decode("leads", as: Int64.self)))
            caps.insert(Int(try row.decode("caps", as: Int64.self)))
        }
        return (leads, caps)
    }

    static func rankingSizes(_ c: isolated PostgresConnection, _ keys: [String]) throws -> [String: Int] {
        if keys.isEmpty { return [:] }
        var out: [String: Int] = [:]
        for row in try c.query(
            "SELECT ranking, size FROM ranking_sizes WHERE ranking = ANY($1::text[])", [.textArray(keys)])
        {
            out[try row.decode("ranking", as: String.self)] = Int(try row.decode("size", as: Int64.self))
        }
        return out
    }

    /// The referral ids the boundary queries name, in one statement. A ranked query whose
    /// ranking has no entry at its first rank is dropped before it is sent (the sizes are
    /// kept for that), so a limit far above a ranking's size costs nothing.
    public static func resolveBoundaries(_ c: isolated PostgresConnection, _ queries: [BoundaryQuery]) throws -> Set<
        String
    > {
        var cd: [BoundaryQuery.CodeDayRank] = []
        var cap: [BoundaryQuery.CapRank] = []
        var claims: [(String, Int)] = []
        var cancelled: [(String, Instant)] = []
        var personal: [(String, String)] = []
        for q in queries {
            switch q {
            case .codeDay(let r): cd.append(r)
            case .cap(let r): cap.append(r)
            case .claim(let key, let n): claims.append((key, n))
            case .referrerCancelled(let r, let since): cancelled.append((r, since))
            case .referrerPersonal(let r, let keys): personal += keys.map { (r, $0) }
            }
        }
        let sizes = try rankingSizes(c, cd.map(\.codeDay.rankingKey) + cap.map(\.capYear.rankingKey))
        cd = cd.filter { (sizes[$0.codeDay.rankingKey] ?? 0) > $0.ranks.lowerBound }
        cap = cap.filter { (sizes[$0.capYear.rankingKey] ?? 0) > $0.ranks.lowerBound }
        if cd.isEmpty && cap.isEmpty && claims.isEmpty && cancelled.isEmpty && personal.isEmpty { return [] }
        return Set(
            try c.query(
                """
                SELECT x.referral_id FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int8[], $5::int8[])
                    AS q(code, f, t, lo, n)
                CROSS JOIN LATERAL (SELECT referral_id FROM referrals
                                    WHERE lead_code = q.code AND code = lead_code AND lead_at >= q.f AND lead_at < q.t
                                    ORDER BY lead_at, lead_id COLLATE "C" OFFSET q.lo LIMIT q.n) x
                UNION
                SELECT x.referral_id FROM unnest($6::text[], $7::timestamptz[], $8::timestamptz[], $9::int8[], $10::int8[])
                    AS q(referrer, f, t, lo, n)
                CROSS JOIN LATERAL (SELECT referral_id FROM referrals
                                    WHERE referrer_account_id = q.referrer AND milestone_at >= q.f AND milestone_at < q.t
                                    ORDER BY milestone_at, lead_id COLLATE "C" OFFSET q.lo LIMIT q.n) x
                UNION
                SELECT x.referral_id FROM unnest($11::text[], $12::int8[]) AS q(link, n)
                CROSS JOIN LATERAL (SELECT referral_id FROM referral_links WHERE link = q.link
                                    ORDER BY lead_at, lead_id LIMIT q.n) x
                UNION
                SELECT r.referral_id FROM unnest($13::text[], $14::timestamptz[]) AS q(referrer, since)
                JOIN referrals r ON r.referrer_account_id = q.referrer AND r.lead_at >= q.since
                UNION
                SELECT l.referral_id FROM unnest($15::text[], $16::text[]) AS q(referrer, link)
                JOIN referral_links l ON l.link = q.link
                JOIN referrals r ON r.referral_id = l.referral_id AND r.referrer_account_id = q.referrer
                """,
                [
                    .textArray(cd.map(\.codeDay.code)), .textArray(cd.map { $0.codeDay.bounds.from.rfc3339 }),
                    .textArray(cd.map { $0.codeDay.bounds.to.rfc3339 }),
                    .int8Array(cd.map { Int64($0.ranks.lowerBound) }),
                    .int8Array(cd.map { Int64($0.ranks.count) }),
                    .textArray(cap.map(\.capYear.referrer)), .textArray(cap.map { $0.capYear.bounds.from.rfc3339 }),
                    .textArray(cap.map { $0.capYear.bounds.to.rfc3339 }),
                    .int8Array(cap.map { Int64($0.ranks.lowerBound) }),
                    .int8Array(cap.map { Int64($0.ranks.count) }),
                    .textArray(claims.map(\.0)), .int8Array(claims.map { Int64($0.1) }),
                    .textArray(cancelled.map(\.0)), .textArray(cancelled.map { $0.1.rfc3339 }),
                    .textArray(personal.map(\.0)), .textArray(personal.map(\.1)),
                ]
            ).map { try $0.decode("referral_id", as: String.self) })
    }

    /// The competition ranks of these referrals, in one statement: per lead, the leads of its
    /// code's day and the milestones of its referrer's year before it, counted up to the limit
    /// (and not at all when the ranking is no larger than the limit: nobody in it is past it);
    /// per friend key, its first claimant. Cap ranks are read only for referrals whose hold
    /// can be over by `now`: the cap is judged at qualification and nowhere before.
    public static func competition(
        _ c: isolated PostgresConnection, _ referrals: [(ReferralBinding, ReferralStanding)],
        now: Instant
    ) throws -> Competition {
        var out = Competition()
        let sizes = try rankingSizes(
            c, referrals.flatMap { [$0.1.codeDay?.rankingKey, $0.1.capYear?.rankingKey].compactMap { $0 } })
        var cd: [(ReferralStanding, Int)] = []
        var cap: [(ReferralStanding, Int)] = []
        var keys: Set<String> = []
        for (b, s) in referrals {
            if let day = s.codeDay {
                let limit = b.program.limits.maxLeadsPerCodePerDay
                if (sizes[day.rankingKey] ?? 0) > limit {
                    cd.append((s, limit))
                } else {
                    out.codeDayEarlier[s.leadId] = 0
                }
            }
            if let year = s.capYear, let m = s.milestoneAt, m + b.program.qualify.hold <= now {
                let limit = b.program.limits.maxRewardsPerReferrerPerYear
                if (sizes[year.rankingKey] ?? 0) > limit {
                    cap.append((s, limit))
                } else {
                    out.capEarlier[s.leadId] = 0
                }
            }
            keys.formUnion(s.claimKeys)
        }
        let keyList = keys.sorted()
        for row in try c.query(
            """
            SELECT 'cd' AS kind, q.lead AS id,
                   (SELECT count(*) FROM (SELECT 1 FROM referrals r
                                          WHERE r.lead_code = q.code AND r.code = r.lead_code AND r.lead_at >= q.f
                                            AND (r.lead_at, r.lead_id COLLATE "C") < (q.at, q.lead) LIMIT q.lim) s)::int8 AS n,
                   NULL::timestamptz AS at
            FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::int8[]) AS q(lead, code, f, at, lim)
            UNION ALL
            SELECT 'cap', q.lead,
                   (SELECT count(*) FROM (SELECT 1 FROM referrals r
                                          WHERE r.referrer_account_id = q.referrer AND r.milestone_at >= q.f
                                            AND (r.milestone_at, r.lead_id COLLATE "C") < (q.m, q.lead) LIMIT q.lim) s)::int8,
                   NULL
            FROM unnest($6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::int8[]) AS q(lead, referrer, f, m, lim)
            UNION ALL
            SELECT 'claim:' || q.link, w.lead_id, 0, w.lead_at
            FROM unnest($11::text[]) AS q(link)
            CROSS JOIN LATERAL (SELECT lead_id, lead_at FROM referral_links WHERE link = q.link
                                ORDER BY lead_at, lead_id LIMIT 1) w
            """,
            [
                .textArray(cd.map(\.0.leadId)), .textArray(cd.map { $0.0.codeDay?.code }),
                .textArray(cd.map { $0.0.codeDay?.bounds.from.rfc3339 }), .textArray(cd.map { $0.0.leadAt.rfc3339 }),
                .int8Array(cd.map { Int64($0.1) }),
                .textArray(cap.map(\.0.leadId)), .textArray(cap.map(\.0.referrerAccountId)),
                .textArray(cap.map { $0.0.capYear?.bounds.from.rfc3339 }),
                .textArray(cap.map { $0.0.milestoneAt?.rfc3339 }),
                .int8Array(cap.map { Int64($0.1) }),
                .textArray(keyList),
            ])
        {
            let kind = try row.decode("kind", as: String.self)
            let id = try row.decode("id", as: String.self)
            switch kind {
            case "cd": out.codeDayEarlier[id] = Int(try row.decode("n", as: Int64.self))
            case "cap": out.capEarlier[id] = Int(try row.decode("n", as: Int64.self))
            default:
                out.claimWinners[String(kind.dropFirst("claim:".count))] = Claim(at: try instant(row, "at"), leadId: id)
            }
        }
        return out
    }

    /// Migration 7: the standing of every referral bound before the incremental state, derived
    /// from its stored facts as the oracle derives it, `chunk` referrals a transaction (each
    /// holds the rows it writes for milliseconds, so a daemon of the previous release still
    /// running beside it is not stalled). The ranking sizes are counted once at the end.
    /// Returns the referrals filled.
    @discardableResult
    public static func backfillStandings(_ db: PostgresConnection, chunk: Int = 2000, logger: Logger) async throws
        -> Int
    {
        let started = ContinuousClock.now
        var filled = 0
        while true {
            let n = try await db.transaction { c -> Int in
                let ids = try c.query(
                    """
                    SELECT referral_id FROM referrals WHERE lead_at IS NULL ORDER BY referral_id LIMIT $1 FOR UPDATE SKIP LOCKED
                    """, [.int(Int64(chunk))]
                ).map { try $0.decode("referral_id", as: String.self) }
                if ids.isEmpty { return 0 }
                let bound = try BindingStore.loadBindings(c, ids)
                let facts = try FactStore.loadFacts(c, referrals: bound, accounts: [])
                let standings = Lifecycle.standings(facts: facts, referrals: bound.map(\.binding))
                try saveStandings(c, standings.map { (old: nil, new: $0) }, countSizes: false)
                return ids.count
            }
            if n == 0 { break }
            filled += n
        }
        try await db.transaction { c in
            try c.execute("DELETE FROM ranking_sizes")
            try c.execute(
                """
                INSERT INTO ranking_sizes (ranking, size)
                SELECT 'cd:' || floor(extract(epoch FROM lead_at) / 86400)::int8 || ':' || code, count(*)
                FROM referrals WHERE lead_code = code GROUP BY 1
                UNION ALL
                SELECT 'cap:' || extract(year FROM milestone_at AT TIME ZONE 'UTC')::int8 || ':' || referrer_account_id, count(*)
                FROM referrals WHERE milestone_at IS NOT NULL GROUP BY 1
                """)
        }
        let seconds = (ContinuousClock.now - started).inSeconds
        logger.info(
            "standings backfilled",
            metadata: [
                "referrals": "\(filled)", "seconds": "\(String(format: "%.1f", seconds))",
                "seconds_per_million":
                    "\(filled > 0 ? String(format: "%.0f", seconds * 1_000_000 / Double(filled)) : "0")",
            ])
        return filled
    }
}

extension ReferralStanding.CodeDay {
    /// Its row in `ranking_sizes`.
    public var rankingKey: String { "cd:\(day):\(code)" }
}

extension ReferralStanding.CapYear {
    public var rankingKey: String { "cap:\(year):\(referrer)" }
}

extension StandingStore {
    /// The next `limit` referral ids after `after` (keyset paging, so a long run never rescans
    /// what it did), of one referrer or of all.
    public static func referralPage(
        _ c: isolated PostgresConnection, referrer: String?, after: String,
        limit: Int
    ) throws -> [String] {
        try c.query(
            """
            SELECT referral_id FROM referrals
            WHERE referral_id > $1 AND ($2::text IS NULL OR referrer_account_id = $2)
            ORDER BY referral_id LIMIT $3
            """, [.text(after), PostgresValue(referrer), .int(Int64(limit))]
        ).map { try $0.decode("referral_id", as: String.self) }
    }
}

extension Database {
    /// A page of referral ids after `after` (of one referrer, or all), for `reconcile`.
    public func referralPage(referrer: String?, after: String, limit: Int) async throws -> [String] {
        try await run { c in try StandingStore.referralPage(c, referrer: referrer, after: after, limit: limit) }
    }
}
