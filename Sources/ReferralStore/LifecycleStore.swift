import Foundation
import Postgres
import ReferralCore

/// The lifecycle's persistence: facts, referral bindings, the neighbourhoods the oracle runs over,
/// recorded effects, the reward ledger and durable timers.
extension Store {
    // MARK: programs

    /// Registers the loaded programs (`ProgramVersions.registration` decides: a program whose
    /// canonical form is new gets the next version, in force from its `effective_from` or from
    /// now; an unchanged one keeps its version and its effective time). Throws a `ProgramError`
    /// for a file older than the database (unless `allowOlder`) or an effective time taken by
    /// other rules. Returns the version of each program of the file.
    public static func registerPrograms(
        _ c: isolated PostgresConnection, _ programs: [Program],
        file: String = "programs file", allowOlder: Bool = false
    ) throws -> [String: Int] {
        var registered: [String: Int] = [:]
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Two instances starting together with different files would each decide on the versions
        // stored before either wrote: both could register a version at the same effective time,
        // or the older file slip in after the newer. Registrations take turns (one lock for all
        // ids: per-id locks taken in two files' orders could deadlock; registering is rare).
        _ = try c.query("SELECT pg_advisory_xact_lock(3, 0)")
        let now = try instant(c.query("SELECT now() AS now")[0], "now")
        for (index, p) in programs.enumerated() {
            let stored = try programVersions(c, programId: p.id)
            switch try ProgramVersions.registration(
                of: p, index: index, file: file, stored: stored, now: now, allowOlder: allowOlder)
            {
            case .known(let version):
                registered[p.id] = version
            case .new(let effectiveFrom):
                let json = String(decoding: try encoder.encode(p), as: UTF8.self)
                let version = (stored.map(\.version).max() ?? 0) + 1
                try c.execute(
                    """
                    INSERT INTO program_versions (program_id, version, canonical, program, loaded_at, effective_from)
                    VALUES ($1, $2, $3, $4::jsonb, $5::timestamptz, $6::timestamptz)
                    """,
                    [
                        .text(p.id), .int(Int64(version)), .text(p.canonicalForm), .text(json), .text(now.rfc3339),
                        .text(effectiveFrom.rfc3339),
                    ])
                registered[p.id] = version
            }
        }
        return registered
    }

    /// Every stored version of a program, by version.
    public static func programVersions(_ c: isolated PostgresConnection, programId: String) throws
        -> [StoredProgramVersion]
    {
        try c.query(
            """
            SELECT version::int8 AS version, canonical, effective_from, loaded_at FROM program_versions
            WHERE program_id = $1 ORDER BY version
            """, [.text(programId)]
        ).map { row in
            StoredProgramVersion(
                version: Int(try row.decode("version", as: Int64.self)),
                canonical: try row.decode("canonical", as: String.self),
                effectiveFrom: try instant(row, "effective_from"), registeredAt: try instant(row, "loaded_at"))
        }
    }

    /// The program ids that have versions.
    public static func programIds(_ c: isolated PostgresConnection) throws -> [String] {
        try c.query("SELECT DISTINCT program_id FROM program_versions ORDER BY program_id").map {
            try $0.decode("program_id", as: String.self)
        }
    }

    // MARK: facts

    /// Serialises batches that carry facts about the same leads or accounts, taken before
    /// anything is read. Without it, two instances each missed the other's uncommitted fact: one
    /// stored an order linking a lead to an account while the other stored that account's
    /// activation, found no referral for the account yet (the link was not committed), and
    /// nobody re-decided the referral, which stayed `installed` with its rewards never issued
    /// (the three-instance fault run). Leads and accounts already linked by a committed order
    /// are locked together, so a fact about either waits for the other.
    ///
    /// A referral decided on the timer or repair path (`referrals`), or through billing's answer
    /// about its reward, is locked by its lead, as a batch with a fact about that lead locks it.
    ///
    /// A referrer is locked (`r:`) only where a fact about it can change referrals other
    /// batches decide without touching it: the owner of the code a new lead carries, and an
    /// account whose cancellation arrives; a referrer's new household or contact locks that
    /// pair (`p:<account>/<key>`), which a batch giving a friend the same key locks too
    /// (`Lifecycle.personalLockKeys`). These come as `referrerKeys`. Without them, a lead
    /// decided beside its referrer's cancellation would see neither the other's fact nor the
    /// other's referral, and be attributed. Not the
    /// referrers of every referral touched: with the cluster gone nothing needs them, and two
    /// pipelines queued on them (a referrer in common is likely between two batches of 512).
    /// The rankings a changed standing moves are locked later, by key (`lockCompetitionKeys`).
    ///
    /// Locks are taken in hash order in one statement (no two batches wait on each other in a
    /// cycle) and end with the transaction.
    public static func lockFactKeys(
        _ c: isolated PostgresConnection, leads: [String], accounts: [String],
        referrerKeys: [String] = [], codes: [String] = [], rewards: [String] = [],
        referrals: [String] = []
    ) throws {
        if leads.isEmpty && accounts.isEmpty && referrals.isEmpty && rewards.isEmpty { return }
        // Only the branches this batch needs (`KeyUnion`): planned on every call while batches
        // are small, the full union cost more than it ran.
        var keys = KeyUnion()
        if !leads.isEmpty {
            let p = keys.parameter(leads)
            keys.add("SELECT 'l:' || unnest(\(p)) AS k")
            keys.add("SELECT 'a:' || account_id AS k FROM facts WHERE kind = 'order' AND lead_id = ANY(\(p))")
        }
        if !accounts.isEmpty {
            let p = keys.parameter(accounts)
            keys.add("SELECT 'a:' || unnest(\(p)) AS k")
            keys.add("SELECT 'l:' || lead_id AS k FROM facts WHERE kind = 'order' AND account_id = ANY(\(p))")
        }
        if !referrals.isEmpty {
            keys.add("SELECT 'l:' || lead_id AS k FROM referrals WHERE referral_id = ANY(\(keys.parameter(referrals)))")
        }
        if !rewards.isEmpty {
            keys.add(
                """
                SELECT 'l:' || r.lead_id AS k FROM rewards w JOIN referrals r USING (referral_id)
                WHERE w.reward_id = ANY(\(keys.parameter(rewards)))
                """)
        }
        if !referrerKeys.isEmpty { keys.add("SELECT unnest(\(keys.parameter(referrerKeys))) AS k") }
        if !codes.isEmpty {
            keys.add("SELECT 'r:' || account_id AS k FROM referral_codes WHERE code = ANY(\(keys.parameter(codes)))")
        }
        try c.executeDeferred(
            """
            WITH keys AS (\(keys.sql))
            SELECT pg_advisory_xact_lock(1, h) FROM (SELECT DISTINCT hashtext(k) AS h FROM keys ORDER BY h) s
            """, keys.parameters)
    }

    /// `channels`: the sales channel of lead facts (`InboundEvent.leadChannels`), written on the
    /// lead's row for the report.
    public static func insertFacts(
        _ c: isolated PostgresConnection, _ facts: [Fact],
        channels: [Fact: LeadChannel] = [:]
    ) throws {
        if facts.isEmpty { return }
        let rows = facts.map { FactRow($0, channel: channels[$0]) }
        try c.executeDeferred(
            """
            INSERT INTO facts (kind, at, lead_id, account_id, invoice_id, reward_id, code, household_id,
                               contact_hash, segment, sequence, amount_minor, currency, reason, plan_id, channel)
            SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[], $12::int8[],
                                 $13::text[], $14::text[], $15::text[], $16::text[])
            """,
            [
                .textArray(rows.map(\.kind)), .textArray(rows.map { $0.at.rfc3339 }), .textArray(rows.map(\.lead)),
                .textArray(rows.map(\.account)), .textArray(rows.map(\.invoice)), .textArray(rows.map(\.reward)),
                .textArray(rows.map(\.code)), .textArray(rows.map(\.household)), .textArray(rows.map(\.contact)),
                .textArray(rows.map(\.segment)), .textArray(rows.map { $0.sequence.map(String.init) }),
                .int8Array(rows.map(\.amount)), .textArray(rows.map(\.currency)), .textArray(rows.map(\.reason)),
                .textArray(rows.map(\.plan)), .textArray(rows.map(\.channel)),
            ])
    }

    /// Every fact a decision of these referrals reads: their leads' (versions, orders), their
    /// friends' and referrers' accounts, and billing's answers about their rewards. Billing's
    /// answers are read by reward, never by account: the beneficiary of most of them is a
    /// referrer, and reading them by account would read every answer about every reward it was
    /// ever paid. `accounts` adds accounts decided for a code of their own.
    ///
    /// One branch per key array, not one scan with the three conditions OR-ed: under a generic
    /// plan the OR became a filter that compared every row read with every element of the
    /// three arrays in turn (hundreds of elements each at batches of 512), which made this the
    /// costliest read of a batch (BENCHMARKS.md). A fact reached by two keys (an order, by its lead
    /// and by its account) comes twice and is kept once, by `seq`.
    public static func loadFacts(_ c: isolated PostgresConnection, referrals: [BoundReferral], accounts: [String])
        throws -> [Fact]
    {
        let all = Array(Set(referrals.flatMap(\.accounts) + accounts))
        let leads = referrals.map(\.binding.leadId)
        let rewards = referrals.flatMap(\.rewardIds)
        let columns = """
            seq, kind, at, lead_id, account_id, invoice_id, reward_id, code, household_id, contact_hash,
            segment, sequence::int8 AS sequence, amount_minor, currency, reason, plan_id
            """
        var load = KeyUnion()
        load.keepsDuplicates = true
        if !leads.isEmpty { load.add("SELECT \(columns) FROM facts WHERE lead_id = ANY(\(load.parameter(leads)))") }
        if !all.isEmpty {
            load.add(
                """
                SELECT \(columns) FROM facts
                WHERE account_id = ANY(\(load.parameter(all))) AND kind NOT IN ('credit_applied', 'credit_rejected')
                """)
        }
        if !rewards.isEmpty {
            load.add("SELECT \(columns) FROM facts WHERE reward_id = ANY(\(load.parameter(rewards)))")
        }
        if load.isEmpty { return [] }
        var seen = Set<Int64>()
        return try c.query(load.sql, load.parameters).compactMap { row in
            try seen.insert(row.decode("seq", as: Int64.self)).inserted ? try FactRow.fact(row) : nil
        }
    }

    // MARK: referrals

    /// Creates referrals for leads with a known code that have none yet, each bound to the version
    /// of its program in force at the lead's own time, as `ProgramVersions.inForce` chooses: the
    /// greatest effective time not after it, else the earliest version. Read from
    /// `program_versions`, not from this instance's file: during a rolling restart the instances
    /// hold different files, and a lead's version depended on which one took it. A program with
    /// no version stored binds nothing. Returns the leads bound now.
    public static func bindLeads(_ c: isolated PostgresConnection, _ leads: [LeadToBind]) throws -> [String] {
        if leads.isEmpty { return [] }
        return try c.query(
            """
            INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version)
            SELECT 'ref-' || nextval('referral_numbers'), l, cd, ra, p, v
            FROM (SELECT l, cd, ra, p, coalesce(
                      (SELECT version FROM program_versions WHERE program_id = p AND effective_from <= at
                       ORDER BY effective_from DESC, version DESC LIMIT 1),
                      (SELECT version FROM program_versions WHERE program_id = p
                       ORDER BY effective_from, version LIMIT 1)) AS v
                  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) AS t(l, cd, ra, p, at)) b
            WHERE v IS NOT NULL
            ORDER BY l
            ON CONFLICT (lead_id) DO NOTHING
            RETURNING lead_id
            """,
            [
                .textArray(leads.map(\.leadId)), .textArray(leads.map(\.code)),
                .textArray(leads.map(\.referrerAccountId)), .textArray(leads.map(\.programId)),
                .textArray(leads.map(\.at.rfc3339)),
            ]
        ).map { try $0.decode("lead_id", as: String.self) }
    }

    /// Lead ids that already have a referral.
    public static func boundLeads(_ c: isolated PostgresConnection, _ leads: [String]) throws -> Set<String> {
        Set(
            try c.query("SELECT lead_id FROM referrals WHERE lead_id = ANY($1::text[])", [.textArray(leads)])
                .map { try $0.decode("lead_id", as: String.self) })
    }

    /// Sets, for referrals of these leads, the friend account: the account of the lead's
    /// earliest order (an earlier order to another account moves it). Only a fact about the
    /// lead can change it: its order, or the lead itself, bound after its order arrived.
    public static func refreshFriendAccounts(_ c: isolated PostgresConnection, leads: [String]) throws {
        if leads.isEmpty { return }
        try c.executeDeferred(
            """
            UPDATE referrals r SET friend_account_id = o.account_id
            FROM (SELECT DISTINCT ON (lead_id) lead_id, account_id FROM facts
                  WHERE kind = 'order' AND lead_id = ANY($1::text[])
                  ORDER BY lead_id, at, account_id COLLATE "C") o
            WHERE r.lead_id = o.lead_id AND r.friend_account_id IS DISTINCT FROM o.account_id
            """, [.textArray(leads)])
    }

    /// The referrals a batch's facts touch directly: by lead, by friend account, by reward. Not
    /// by referrer account: a fact about a referrer's own account changes only the referrals
    /// `Lifecycle.referrerBoundaries` names, never all of them.
    public static func referralsTouched(
        _ c: isolated PostgresConnection, leads: [String], accounts: [String],
        rewards: [String]
    ) throws -> [String] {
        var touched = KeyUnion()
        if !leads.isEmpty {
            touched.add("SELECT referral_id FROM referrals WHERE lead_id = ANY(\(touched.parameter(leads)))")
        }
        if !accounts.isEmpty {
            touched.add(
                "SELECT referral_id FROM referrals WHERE friend_account_id = ANY(\(touched.parameter(accounts)))")
        }
        if !rewards.isEmpty {
            touched.add("SELECT referral_id FROM rewards WHERE reward_id = ANY(\(touched.parameter(rewards)))")
        }
        if touched.isEmpty { return [] }
        return try c.query(touched.sql, touched.parameters).map { try $0.decode("referral_id", as: String.self) }
    }

    /// Locks the rows of the referrals a transaction decides, in id order, so that two
    /// instances deciding the same referral queue instead of deadlocking, and the second sees the
    /// first's committed facts and effects (the effect cache relies on it).
    public static func lockReferrals(_ c: isolated PostgresConnection, _ ids: [String]) throws {
        if ids.isEmpty { return }
        try c.executeDeferred(
            "SELECT 1 FROM referrals WHERE referral_id = ANY($1::text[]) ORDER BY referral_id FOR UPDATE",
            [.textArray(ids)])
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

    public struct BoundReferral: Sendable {
        public var binding: ReferralBinding
        public var friendAccountId: String?

        /// The accounts whose facts decide it: its referrer's, and its friend's once ordered.
        public var accounts: [String] { [binding.referrerAccountId] + (friendAccountId.map { [$0] } ?? []) }
        /// Its rewards' ids, one per beneficiary.
        public var rewardIds: [String] {
            Beneficiary.allCases.map { rewardId(referralId: binding.referralId, beneficiary: $0) }
        }
    }

    /// The referrals' bindings, in id order. Their programs come from `cache` (by default a new
    /// one for this call), and only the versions it lacks are read.
    public static func loadBindings(
        _ c: isolated PostgresConnection, _ ids: [String],
        cache: ProgramVersionCache = ProgramVersionCache()
    ) throws -> [BoundReferral] {
        let rows = try c.query(
            """
            SELECT referral_id, lead_id, code, referrer_account_id, program_version::int8 AS version,
                   friend_account_id, program_id
            FROM referrals WHERE referral_id = ANY($1::text[])
            ORDER BY referral_id
            """, [.textArray(ids)]
        ).map { row in
            (
                referralId: try row.decode("referral_id", as: String.self),
                leadId: try row.decode("lead_id", as: String.self),
                code: try row.decode("code", as: String.self),
                referrerAccountId: try row.decode("referrer_account_id", as: String.self),
                programId: try row.decode("program_id", as: String.self),
                version: Int(try row.decode("version", as: Int64.self)),
                friendAccountId: try row.decodeIfPresent("friend_account_id", as: String.self)
            )
        }
        var missing: [String: (programId: String, version: Int)] = [:]
        for r in rows where cache.program(r.programId, version: r.version) == nil {
            missing[ProgramVersionCache.key(r.programId, r.version)] = (r.programId, r.version)
        }
        if !missing.isEmpty {
            let decoder = JSONDecoder()
            let wanted = Array(missing.values)
            for row in try c.query(
                """
                SELECT p.program_id, p.version::int8 AS version, p.program::text AS program
                FROM program_versions p JOIN unnest($1::text[], $2::int8[]) AS w(program_id, version)
                  ON p.program_id = w.program_id AND p.version = w.version
                """, [.textArray(wanted.map(\.programId)), .int8Array(wanted.map { Int64($0.version) })])
            {
                let program = try decoder.decode(
                    Program.self, from: Data(try row.decode("program", as: String.self).utf8))
                cache.insert(
                    program, programId: try row.decode("program_id", as: String.self),
                    version: Int(try row.decode("version", as: Int64.self)))
            }
        }
        return rows.compactMap { r in
            // The foreign key to `program_versions` keeps every version read; a row without one
            // (a damaged database) is left out, as the inner join that read them did.
            guard let program = cache.program(r.programId, version: r.version) else { return nil }
            return BoundReferral(
                binding: ReferralBinding(
                    referralId: r.referralId, leadId: r.leadId, code: r.code,
                    referrerAccountId: r.referrerAccountId, program: program, programVersion: r.version),
                friendAccountId: r.friendAccountId)
        }
    }

    /// Where each referral stands, for `explain`, reports and follow-ups.
    public static func saveViews(_ c: isolated PostgresConnection, _ views: [ReferralView]) throws {
        if views.isEmpty { return }
        try c.executeDeferred(
            """
            UPDATE referrals r SET stage = v.stage, reason = v.reason, rule = v.rule, updated_at = now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS v(id, stage, reason, rule)
            WHERE r.referral_id = v.id
              AND (r.stage, r.reason, r.rule) IS DISTINCT FROM (v.stage, v.reason, v.rule)
            """,
            [
                .textArray(views.map(\.referralId)), .textArray(views.map(\.stage.rawValue)),
                .textArray(views.map(\.reason)), .textArray(views.map(\.rule)),
            ])
    }

    // MARK: effects

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
    /// busy batch's ledger changes, go in one set-based INSERT (one statement per reward was a
    /// round trip per reward, measured at about 23 per batch of the realistic mix); the rarer
    /// state changes stay one UPDATE each, in effect order.
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

    // MARK: timers

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
    /// batch path's referrals → timers, and two instances would deadlock (40P01, seen in the
    /// three-instance fault run). SKIP LOCKED lets instances claim disjoint timers; a claimer
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
    public static func timerBacklog(_ c: isolated PostgresConnection, now: Instant) throws -> (
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

    // MARK: codes

    /// Code owners for binding leads: canonical code → (account, program id).
    public static func codeOwners(_ c: isolated PostgresConnection, codes: [String]) throws -> [String: (
        accountId: String, programId: String
    )] {
        var owners: [String: (accountId: String, programId: String)] = [:]
        for row in try c.query(
            "SELECT code, account_id, program_id FROM referral_codes WHERE code = ANY($1::text[])",
            [.textArray(codes)])
        {
            owners[try row.decode("code", as: String.self)] = (
                try row.decode("account_id", as: String.self),
                try row.decode("program_id", as: String.self)
            )
        }
        return owners
    }
}

/// A fact as a row of `facts`: one column per field any kind has.
struct FactRow {
    var kind: String
    var at: Instant
    var lead: String?, account: String?, invoice: String?, reward: String?, code: String?
    var household: String?, contact: String?, segment: String?
    var sequence: Int?, amount: Int64?, currency: String?, reason: String?, plan: String?
    /// A lead's sales channel: beside the fact, not in it (`InboundEvent.leadChannels`).
    var channel: String?

    init(_ fact: Fact, channel: LeadChannel? = nil) {
        at = fact.at
        self.channel = channel?.rawValue
        switch fact {
        case .leadCreated(let l, _, let code, let h, let ct, let seg):
            kind = "lead"
            lead = l
            self.code = code
            household = h
            contact = ct
            segment = seg?.rawValue
        case .orderPlaced(let l, let a, _):
            kind = "order"
            lead = l
            account = a
        case .installCompleted(let a, _):
            kind = "installed"
            account = a
        case .serviceActivated(let a, _, let h, let ct, let seg):
            kind = "activated"
            account = a
            household = h
            contact = ct
            segment = seg?.rawValue
        case .serviceCancelled(let a, _):
            kind = "cancelled"
            account = a
        case .invoiceOverdue(let a, let i, _):
            kind = "overdue"
            account = a
            invoice = i
        case .invoicePaid(let a, let i, let s, _):
            kind = "paid"
            account = a
            invoice = i
            sequence = s
        case .creditApplied(let r, let a, let m, let cur, _):
            kind = "credit_applied"
            reward = r
            account = a
            amount = m
            currency = cur
        case .creditRejected(let r, let why, _):
            kind = "credit_rejected"
            reward = r
            reason = why
        case .customerErased(let a, _):
            kind = "erased"
            account = a
        case .planChosen(let a, let p, _):
            kind = "plan"
            account = a
            plan = p
        case .operatorRejected(let l, _):
            kind = "operator_rejected"
            lead = l
        case .operatorReversed(let r, _):
            kind = "operator_reversed"
            reward = r
        }
    }

    /// The fact a row stores; nil for a kind this binary does not know (a newer release's row).
    static func fact(_ row: PostgresRow) throws -> Fact? {
        let at = Instant(microseconds: try row.decode("at", as: PostgresTimestamp.self).microsecondsSinceEpoch)
        func s(_ column: String) throws -> String? { try row.decodeIfPresent(column, as: String.self) }
        func req(_ column: String) throws -> String { try row.decode(column, as: String.self) }
        switch try req("kind") {
        case "lead":
            return .leadCreated(
                leadId: try req("lead_id"), at: at, code: try s("code"), householdId: try s("household_id"),
                contactHash: try s("contact_hash"), segment: try s("segment").flatMap(Segment.init(rawValue:)))
        case "order": return .orderPlaced(leadId: try req("lead_id"), accountId: try req("account_id"), at: at)
        case "installed": return .installCompleted(accountId: try req("account_id"), at: at)
        case "activated":
            return .serviceActivated(
                accountId: try req("account_id"), at: at, householdId: try s("household_id"),
                contactHash: try s("contact_hash"), segment: try s("segment").flatMap(Segment.init(rawValue:)))
        case "cancelled": return .serviceCancelled(accountId: try req("account_id"), at: at)
        case "overdue":
            return .invoiceOverdue(accountId: try req("account_id"), invoiceId: try req("invoice_id"), at: at)
        case "paid":
            return .invoicePaid(
                accountId: try req("account_id"), invoiceId: try req("invoice_id"),
                sequence: Int(try row.decode("sequence", as: Int64.self)), at: at)
        case "credit_applied":
            return .creditApplied(
                rewardId: try req("reward_id"), accountId: try req("account_id"),
                amountMinor: try row.decode("amount_minor", as: Int64.self), currency: try req("currency"), at: at)
        case "credit_rejected":
            return .creditRejected(rewardId: try req("reward_id"), reason: try req("reason"), at: at)
        case "erased": return .customerErased(accountId: try req("account_id"), at: at)
        case "plan": return .planChosen(accountId: try req("account_id"), planId: try req("plan_id"), at: at)
        case "operator_rejected": return .operatorRejected(leadId: try req("lead_id"), at: at)
        case "operator_reversed": return .operatorReversed(rewardId: try req("reward_id"), at: at)
        default: return nil
        }
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

extension Store {
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

    /// The row's `effect` column (selected as text), read back as the effect it stores.
    static func storedEffect(_ row: PostgresRow) throws -> Effect {
        try Effect(storedJSON: Array(try row.decode("effect", as: String.self).utf8))
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
                try storedEffect($0)
            )
        }
    }

    /// Everything the oracle needs over these referrals: their bindings, every fact of their
    /// leads, accounts (referrers and friends) and rewards, and the recorded effects; read
    /// without locks.
    static func neighbourhoodInput(_ c: isolated PostgresConnection, _ ids: [String])
        throws -> (bound: [BoundReferral], facts: [Fact], recorded: [Effect])
    {
        let bound = try loadBindings(c, ids)
        return (
            bound, try loadFacts(c, referrals: bound, accounts: []),
            try loadEffects(c, referrals: ids, accounts: Array(Set(bound.flatMap(\.accounts))))
        )
    }

    /// The input of `explain`: the oracle's neighbourhood of these referrals, read without locking.
    public static func explainInput(_ c: isolated PostgresConnection, referrals ids: [String]) throws
        -> (bound: [BoundReferral], facts: [Fact], recorded: [Effect])
    {
        try neighbourhoodInput(c, try neighbourhood(c, seeds: ids))
    }
}
