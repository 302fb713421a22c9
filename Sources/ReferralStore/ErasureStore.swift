import Foundation
import Logging
import Postgres
import ReferralCore

/// Right to erasure (`crm.customer.erased`): the erased account's household, contact hashes and
/// free text leave every row; ids, amounts, states and times (the reward ledger) stay.
///
/// Two steps, so that the erasure itself can never be held up by the scrub of old bodies:
/// - in the batch's transaction (`scrubErased`), the typed rows: facts, the reward notes and
///   recorded effects holding billing's free text, and a durable `erasure_scrubs` row;
/// - after the commit, a follow-up (`scrubPendingErasures`, every second in each worker) that
///   rewrites the raw inbox bodies in Swift, `chunk` rows a transaction, and removes the
///   household/contact links the incremental state still holds. A failed chunk is retried on
///   the next pass; the erasure's own effects (no more asks, the `erased` fact) have committed.
public enum ErasureStore {
    /// Scrubs what is stored about the erased accounts among these keys: the accounts
    /// themselves, the accounts these leads were ordered by (a lead that arrives after its order
    /// to an erased account), and the beneficiaries of these rewards (billing's rejection names
    /// only the reward). Runs in every batch, so late facts are scrubbed before they commit;
    /// costs one indexed query when no account among them is erased.
    public static func scrubErased(
        _ c: isolated PostgresConnection, accounts: [String], leads: [String] = [],
        rewards: [String] = []
    ) throws {
        if accounts.isEmpty && leads.isEmpty && rewards.isEmpty { return }
        var keys = KeyUnion()
        if !accounts.isEmpty { keys.add("SELECT unnest(\(keys.parameter(Array(Set(accounts))))) AS a") }
        if !leads.isEmpty {
            keys.add(
                "SELECT account_id AS a FROM facts WHERE kind = 'order' AND lead_id = ANY(\(keys.parameter(Array(Set(leads)))))"
            )
        }
        if !rewards.isEmpty {
            keys.add(
                "SELECT account_id AS a FROM rewards WHERE reward_id = ANY(\(keys.parameter(Array(Set(rewards)))))")
        }
        let erased = try c.query(
            """
            WITH k AS (\(keys.sql))
            SELECT DISTINCT f.account_id FROM facts f JOIN k ON f.account_id = k.a WHERE f.kind = 'erased'
            ORDER BY 1
            """, keys.parameters
        ).map { try $0.decode("account_id", as: String.self) }
        if erased.isEmpty { return }
        try scrubRows(c, erased: erased)
        // A new generation tells a follow-up that is finishing this account's bodies right now
        // that this batch stored another one (see `scrubPendingErasures`).
        try c.execute(
            """
            INSERT INTO erasure_scrubs (account_id) SELECT unnest($1::text[])
            ON CONFLICT (account_id) DO UPDATE SET generation = erasure_scrubs.generation + 1
            """, [.textArray(erased)])
    }

    /// The erased accounts' leads (by their orders) and rewards (as beneficiary).
    static func erasedKeys(_ c: isolated PostgresConnection, _ erased: [String]) throws -> (
        leads: [String], rewards: [String]
    ) {
        let leads = try c.query(
            """
            SELECT DISTINCT lead_id FROM facts WHERE kind = 'order' AND account_id = ANY($1::text[]) ORDER BY 1
            """, [.textArray(erased)]
        ).map { try $0.decode("lead_id", as: String.self) }
        let rewards = try c.query(
            "SELECT reward_id FROM rewards WHERE account_id = ANY($1::text[]) ORDER BY 1",
            [.textArray(erased)]
        ).map { try $0.decode("reward_id", as: String.self) }
        return (leads, rewards)
    }

    /// The leads an account ordered and the rewards it was paid: `referrald dlq erase` matches
    /// dead letters by them too (a lead and a credit rejection do not name the account).
    public static func accountKeys(_ c: isolated PostgresConnection, account: String) throws -> (
        leads: [String], rewards: [String]
    ) {
        try erasedKeys(c, [account])
    }

    /// The typed rows: household and contact of the accounts' facts and of their leads' facts
    /// go; billing's rejection reasons of their rewards become `Erasure.redacted` in `facts`, in
    /// `rewards.note` and in the recorded `reward_failed` effects. Idempotent, and each
    /// statement touches only rows that still hold something, so a re-run writes nothing.
    ///
    /// Two rejections of one reward at the same microsecond with different reasons become one
    /// fact (the rules treat a rejection as its time and reason): the reward then counts one
    /// failure less. That needs billing to answer twice within a microsecond.
    static func scrubRows(_ c: isolated PostgresConnection, erased: [String]) throws {
        let (leads, rewards) = try erasedKeys(c, erased)
        try c.execute(
            """
            UPDATE facts SET household_id = NULL, contact_hash = NULL
            WHERE (account_id = ANY($1::text[]) OR lead_id = ANY($2::text[]))
              AND (household_id IS NOT NULL OR contact_hash IS NOT NULL)
            """, [.textArray(erased), .textArray(leads)])
        if rewards.isEmpty { return }
        // Notes first: a note is free text exactly when it is a rejection's reason (as the
        // ledger writes it), which the facts still say until the next statement.
        try c.execute(
            """
            UPDATE rewards w SET note = CASE WHEN w.note LIKE 'failed for good: %' THEN 'failed for good: ' || $2
                                             ELSE $2 END
            WHERE w.reward_id = ANY($1::text[])
              AND EXISTS (SELECT 1 FROM facts f WHERE f.kind = 'credit_rejected' AND f.reward_id = w.reward_id
                            AND f.reason <> $2 AND (w.note = f.reason OR w.note = 'failed for good: ' || f.reason))
            """, [.textArray(rewards), .text(Erasure.redacted)])
        try c.execute(
            """
            UPDATE facts SET reason = $2 WHERE kind = 'credit_rejected' AND reward_id = ANY($1::text[]) AND reason <> $2
            """, [.textArray(rewards), .text(Erasure.redacted)])
        try scrubEffects(c, rewards: rewards)
    }

    /// Recorded `reward_failed` effects of these rewards, rewritten without billing's reason.
    /// Decoded and encoded in Swift as they were recorded. The effect cache never holds this
    /// text (`loadEffects` keeps effects `withoutFreeText`), in this process or any other, so
    /// nothing cached has to be invalidated.
    static func scrubEffects(_ c: isolated PostgresConnection, rewards: [String]) throws {
        let wanted = Set(rewards)
        var seqs: [Int64?] = []
        var bodies: [[UInt8]] = []
        for row in try c.query(
            """
            SELECT seq, effect::text AS effect FROM effects
            WHERE kind = 'reward_failed' AND referral_id = ANY($1::text[]) ORDER BY seq
            """, [.textArray(Array(Set(rewards.compactMap { referralId(ofReward: $0) })))])
        {
            let effect = try EffectStore.storedEffect(row)
            guard case .rewardFailed(let id, _, _, _) = effect, wanted.contains(id), effect.withoutFreeText != effect
            else { continue }
            seqs.append(try row.decode("seq", as: Int64.self))
            bodies.append(effect.withoutFreeText.storedJSON())
        }
        if seqs.isEmpty { return }
        let packed = PackedBytes(bodies)
        try c.execute(
            """
            UPDATE effects e SET effect = convert_from(substring($2::bytea FROM u.o::int4 FOR u.n::int4), 'UTF8')::jsonb
            FROM unnest($1::int8[], $3::int8[], $4::int8[]) AS u(seq, o, n)
            WHERE e.seq = u.seq
            """, [.int8Array(seqs), packed.blob, packed.offsets, packed.lengths])
    }

    /// The follow-up of erasures: for up to `accounts` pending erasures, the links of the
    /// incremental state keyed by their households and contacts go, and their inbox bodies are
    /// rewritten by `Erasure.scrub`, `chunk` bodies a transaction, at most `maxChunks` chunks a
    /// call (a busy worker's loop is not held up; the rest follows on the next call). An
    /// erasure is done when no body of it is left unscrubbed, and its row goes unless a batch
    /// stored another body meanwhile (its generation moved). Returns the bodies rewritten.
    @discardableResult
    public static func scrubPendingErasures(
        _ db: PostgresConnection, accounts: Int = 10, chunk: Int = 200,
        maxChunks: Int = 20
    ) async throws -> Int {
        let pending = try await db.run { c in
            try c.query(
                "SELECT account_id, generation FROM erasure_scrubs ORDER BY account_id LIMIT $1",
                [.int(Int64(accounts))]
            )
            .map { (try $0.decode("account_id", as: String.self), try $0.decode("generation", as: Int64.self)) }
        }
        var written = 0
        var chunks = 0
        for (account, generation) in pending {
            var done = false
            while !done && chunks < maxChunks {
                chunks += 1
                let (n, finished) = try await db.transaction { c in
                    let (leads, rewards) = try erasedKeys(c, [account])
                    // The batch path's first locks, in its order: a batch storing a fact of this
                    // account or its leads and this scrub queue instead of each rewriting the
                    // other's rows.
                    try FactStore.lockFactKeys(c, leads: leads, accounts: [account])
                    try scrubRows(c, erased: [account])
                    try scrubLinks(c, account: account, leads: leads)
                    let n = try scrubBodies(c, account: account, leads: leads, rewards: rewards, limit: chunk)
                    if n < chunk {
                        try c.execute(
                            "DELETE FROM erasure_scrubs WHERE account_id = $1 AND generation = $2",
                            [.text(account), .int(generation)])
                    }
                    return (n, n < chunk)
                }
                written += n
                done = finished
            }
        }
        return written
    }

    /// `h:` and `c:` links of the referrals whose friend is the account or whose lead it
    /// ordered. The erasure's batch already recomputed the standings of its friend referrals
    /// (the rules ignore an erased account's households and contacts, and so does the standing),
    /// which removed these links through `saveStandings`, with the boundaries that moves. What
    /// is left here is what no standing uses any more — a lead ordered by the account whose
    /// earliest order went to another — so deleting it changes no outcome.
    static func scrubLinks(_ c: isolated PostgresConnection, account: String, leads: [String]) throws {
        try c.execute(
            """
            DELETE FROM referral_links l USING referrals r
            WHERE l.referral_id = r.referral_id AND (l.link LIKE 'h:%' OR l.link LIKE 'c:%')
              AND (r.friend_account_id = $1 OR r.lead_id = ANY($2::text[]))
            """, [.text(account), .textArray(leads)])
    }

    /// Up to `limit` inbox bodies of the account not yet scrubbed (by account, by the leads it
    /// ordered, by its rewards), rewritten and marked. Returns how many.
    static func scrubBodies(
        _ c: isolated PostgresConnection, account: String, leads: [String], rewards: [String],
        limit: Int
    ) throws -> Int {
        let rows = try c.query(
            """
            SELECT source, event_id, body FROM inbox
            WHERE (account_id = $1 OR lead_id = ANY($2::text[]) OR reward_id = ANY($3::text[])) AND NOT scrubbed
            ORDER BY source, event_id LIMIT $4 FOR UPDATE
            """, [.text(account), .textArray(leads), .textArray(rewards), .int(Int64(limit))])
        if rows.isEmpty { return 0 }
        var sources: [String] = []
        var ids: [String] = []
        var bodies: [[UInt8]] = []
        for row in rows {
            sources.append(try row.decode("source", as: String.self))
            ids.append(try row.decode("event_id", as: String.self))
            bodies.append(Erasure.scrub(body: try row.decode("body", as: [UInt8].self)))
        }
        let packed = PackedBytes(bodies)
        try c.execute(
            """
            UPDATE inbox i SET body = substring($3::bytea FROM u.o::int4 FOR u.n::int4), scrubbed = true
            FROM unnest($1::text[], $2::text[], $4::int8[], $5::int8[]) AS u(s, e, o, n)
            WHERE i.source = u.s AND i.event_id = u.e
            """, [.textArray(sources), .textArray(ids), packed.blob, packed.offsets, packed.lengths])
        return rows.count
    }

    /// Migration 10: `inbox.reward_id` of the `billing.credit.rejected` bodies stored before
    /// version 9, read with our own parser (a `::jsonb` cast fails on a number it cannot hold),
    /// `chunk` rows a transaction in key order, so a stopped `migrate` resumes.
    public static func backfillInboxRewards(_ db: PostgresConnection, chunk: Int = 2000, logger: Logger) async throws {
        var after = (source: "", id: "")
        var filled = 0
        while true {
            let cursor = after
            let (n, next) = try await db.transaction { c -> (Int, (String, String)?) in
                let rows = try c.query(
                    """
                    SELECT source, event_id, body FROM inbox
                    WHERE type = 'billing.credit.rejected' AND reward_id IS NULL AND (source, event_id) > ($1, $2)
                    ORDER BY source, event_id LIMIT $3
                    """, [.text(cursor.source), .text(cursor.id), .int(Int64(chunk))])
                var sources: [String] = []
                var ids: [String] = []
                var rewards: [String?] = []
                for row in rows {
                    sources.append(try row.decode("source", as: String.self))
                    ids.append(try row.decode("event_id", as: String.self))
                    let body = try? JSONValue.parse(try row.decode("body", as: [UInt8].self))
                    rewards.append(body?.objectValue?["data"]?.objectValue?["reward_id"]?.stringValue)
                }
                if !sources.isEmpty {
                    try c.execute(
                        """
                        UPDATE inbox i SET reward_id = u.r FROM unnest($1::text[], $2::text[], $3::text[]) AS u(s, e, r)
                        WHERE i.source = u.s AND i.event_id = u.e
                        """, [.textArray(sources), .textArray(ids), .textArray(rewards)])
                }
                return (rows.count, rows.count == chunk ? (sources.last!, ids.last!) : nil)
            }
            filled += n
            guard let next else { break }
            after = next
        }
        logger.info("inbox reward ids backfilled", metadata: ["rows": "\(filled)"])
    }
}

extension Database {
    /// The leads and rewards of an account, by which its dead letters are found.
    public func accountKeys(account: String) async throws -> (leads: [String], rewards: [String]) {
        try await run { c in try ErasureStore.accountKeys(c, account: account) }
    }

    /// Scrubs the stored bodies of erasures that committed (`ErasureStore.scrubPendingErasures`).
    @discardableResult
    public func scrubPendingErasures() async throws -> Int {
        try await Self.converting { try await ErasureStore.scrubPendingErasures(connection) }
    }
}
