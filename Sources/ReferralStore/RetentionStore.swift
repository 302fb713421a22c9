import Postgres
import ReferralCore

/// Retention (`referrald prune`): what is deleted once it is old enough, in short transactions
/// of at most `chunk` rows each, so that no lock is held long enough to stall a batch.
///
/// An inbox row whose body was dropped keeps an empty `body` (the column is NOT NULL, and every
/// reader decodes it as bytes: an empty body is the mark, since a stored event is never
/// empty) and `scrubbed = true`, so the erasure's follow-up has nothing to rewrite in it.
public enum RetentionStore {
    public struct PruneCount: Sendable, Equatable {
        public var bodies = 0
        public var keys = 0
        public var referrals = 0
        public var rewards = 0
        public init(bodies: Int = 0, keys: Int = 0, referrals: Int = 0, rewards: Int = 0) {
            self.bodies = bodies
            self.keys = keys
            self.referrals = referrals
            self.rewards = rewards
        }
    }

    /// One pass over the inbox in key order, `chunk` keys a transaction: bodies received before
    /// `bodiesBefore` are emptied, rows received before `keysBefore` are deleted. A walk by the
    /// primary key needs no index of its own (an index on `received_at` would cost every
    /// batch's inserts one more entry, for a job that runs once a day) and visits each row once
    /// a run, where repeated "oldest first" queries re-read every emptied row on every chunk.
    /// Rows are locked with SKIP LOCKED: one the erasure follow-up holds is left to the next run.
    public static func pruneInbox(
        _ db: PostgresConnection, bodiesBefore: Instant?, keysBefore: Instant?,
        chunk: Int = 1000
    ) async throws -> PruneCount {
        var total = PruneCount()
        if bodiesBefore == nil && keysBefore == nil { return total }
        var after = (source: "", id: "")
        while true {
            let cursor = after
            let (count, next) = try await db.transaction { c -> (PruneCount, (String, String)?) in
                // octet_length of a stored bytea is read from its header, without fetching it.
                let page = try c.query(
                    """
                    SELECT source, event_id, received_at < $3::timestamptz AS old_key,
                           received_at < $4::timestamptz AND octet_length(body) > 0 AS old_body
                    FROM inbox WHERE (source, event_id) > ($1, $2) ORDER BY source, event_id LIMIT $5
                    """,
                    [
                        .text(cursor.source), .text(cursor.id), PostgresValue(keysBefore?.rfc3339),
                        PostgresValue(bodiesBefore?.rfc3339), .int(Int64(chunk)),
                    ])
                var keySources: [String] = []
                var keyIds: [String] = []
                var bodySources: [String] = []
                var bodyIds: [String] = []
                for row in page {
                    let source = try row.decode("source", as: String.self)
                    let id = try row.decode("event_id", as: String.self)
                    if try row.decodeIfPresent("old_key", as: Bool.self) == true {
                        keySources.append(source)
                        keyIds.append(id)
                    } else if try row.decodeIfPresent("old_body", as: Bool.self) == true {
                        bodySources.append(source)
                        bodyIds.append(id)
                    }
                }
                var n = PruneCount()
                if !keySources.isEmpty {
                    n.keys = try c.execute(
                        """
                        DELETE FROM inbox i WHERE (i.source, i.event_id) IN (
                            SELECT source, event_id FROM inbox WHERE (source, event_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                            FOR UPDATE SKIP LOCKED)
                        """, [.textArray(keySources), .textArray(keyIds)])
                }
                if !bodySources.isEmpty {
                    n.bodies = try c.execute(
                        """
                        UPDATE inbox i SET body = ''::bytea, scrubbed = true WHERE (i.source, i.event_id) IN (
                            SELECT source, event_id FROM inbox WHERE (source, event_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                            FOR UPDATE SKIP LOCKED)
                        """, [.textArray(bodySources), .textArray(bodyIds)])
                }
                guard page.count == chunk, let last = page.last else { return (n, nil) }
                return (n, (try last.decode("source", as: String.self), try last.decode("event_id", as: String.self)))
            }
            total.bodies += count.bodies
            total.keys += count.keys
            guard let next else { return total }
            after = next
        }
    }

    /// Whether the referral aliased `r` may go: ended (a stage `Stage.isEnd`) before $1, and
    /// none of its rewards changed at or after $2 (NULL: the ledger is kept for ever, so a
    /// referral with any reward stays). $3: the end stages.
    static func prunable(_ r: String) -> String {
        """
        (\(r).stage = ANY($3::text[]) AND \(r).updated_at < $1::timestamptz
         AND NOT EXISTS (SELECT 1 FROM rewards w WHERE w.referral_id = \(r).referral_id
                         AND ($2::timestamptz IS NULL OR w.updated_at >= $2::timestamptz)))
        """
    }

    /// Referrals that ended before `endedBefore`, with their lead's facts (lead, order), their
    /// rewards' facts (billing's answers), effects, follow-ups, timers, links, rewards and
    /// their lead's and rewards' inbox bodies; `chunk` referrals a transaction.
    ///
    /// A referral goes whole or not at all. Its recorded effects are what stops a re-decision
    /// from publishing them again: deleting them while the referral could still be decided
    /// (by a later fact of its friend's account, or as a boundary of a ranking) would send a
    /// friend offer or a reversal twice. Deleting the row ends that.
    ///
    /// Others rank against it: the first claimant of a friend key wins the friend "whatever
    /// becomes of it", and leads of a code's day and milestones of a referrer's year count
    /// against limits. So a referral goes only when every referral that shares a friend key
    /// with it, every lead of the same code within a day of its own, and (once it reached its
    /// milestone) every milestone of its referrer within a year, may go too: no referral that
    /// stays can see its rank or its claim move. The referrals are taken latest lead first, so
    /// that an earlier one is never deleted while a later one of its rankings is still there.
    /// Rankings' sizes (`ranking_sizes`) are left as they are: a size above the count only makes
    /// a rank be counted by index, never skipped.
    ///
    /// Each chunk takes the batches' fact-key locks of its leads and friend accounts (in their
    /// order, as the erasure does), then the referrals' rows with SKIP LOCKED, and checks the
    /// condition again under them: a batch deciding one of them meanwhile keeps it.
    public static func pruneReferrals(
        _ db: PostgresConnection, endedBefore: Instant, ledgerBefore: Instant?,
        chunk: Int = 200
    ) async throws -> PruneCount {
        let ends = Stage.allCases.filter(\.isEnd).map(\.rawValue)
        let params: [PostgresValue] = [
            .text(endedBefore.rfc3339), PostgresValue(ledgerBefore?.rfc3339), .textArray(ends),
        ]
        let condition = """
            \(prunable("r"))
            AND NOT EXISTS (SELECT 1 FROM referral_links l1 JOIN referral_links l2 ON l2.link = l1.link
                            JOIN referrals o ON o.referral_id = l2.referral_id
                            WHERE l1.referral_id = r.referral_id AND l1.link NOT LIKE 'r:%' AND o.referral_id <> r.referral_id
                              AND NOT \(prunable("o")))
            AND NOT EXISTS (SELECT 1 FROM referrals o WHERE o.lead_code = r.lead_code
                              AND o.lead_at BETWEEN r.lead_at - interval '2 days' AND r.lead_at + interval '2 days'
                              AND NOT \(prunable("o")))
            AND (r.milestone_at IS NULL OR NOT EXISTS (
                    SELECT 1 FROM referrals o WHERE o.referrer_account_id = r.referrer_account_id
                      AND o.milestone_at BETWEEN r.milestone_at - interval '367 days' AND r.milestone_at + interval '367 days'
                      AND NOT \(prunable("o"))))
            """
        var total = PruneCount()
        var after: (leadAt: String, leadId: String)?
        while true {
            let cursor = after
            let (count, next) = try await db.transaction { c -> (PruneCount, (String, String)?) in
                let page = try c.query(
                    """
                    SELECT r.referral_id, r.lead_id, r.friend_account_id,
                           to_char(r.lead_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS lk
                    FROM referrals r
                    WHERE \(condition)
                      AND ($4::timestamptz IS NULL OR (r.lead_at, r.lead_id) < ($4::timestamptz, $5::text))
                    ORDER BY r.lead_at DESC, r.lead_id DESC LIMIT $6
                    """, params + [PostgresValue(cursor?.leadAt), PostgresValue(cursor?.leadId), .int(Int64(chunk))])
                if page.isEmpty { return (PruneCount(), nil) }
                let ids = try page.map { try $0.decode("referral_id", as: String.self) }
                try FactStore.lockFactKeys(
                    c, leads: try page.map { try $0.decode("lead_id", as: String.self) },
                    accounts: try page.compactMap { try $0.decodeIfPresent("friend_account_id", as: String.self) },
                    referrals: ids)
                let locked = try c.query(
                    """
                    SELECT r.referral_id, r.lead_id FROM referrals r
                    WHERE r.referral_id = ANY($4::text[]) AND \(condition)
                    ORDER BY r.referral_id FOR UPDATE OF r SKIP LOCKED
                    """, params + [.textArray(ids)])
                var n = PruneCount()
                if !locked.isEmpty {
                    let gone = try locked.map { try $0.decode("referral_id", as: String.self) }
                    let leads = try locked.map { try $0.decode("lead_id", as: String.self) }
                    let rewards = try c.query(
                        "SELECT reward_id FROM rewards WHERE referral_id = ANY($1::text[])", [.textArray(gone)]
                    )
                    .map { try $0.decode("reward_id", as: String.self) }
                    // The raw bodies of its lead and rewards go with their facts: left behind, an
                    // erasure of the friend could no longer find the lead's body (it finds a lead
                    // by its order fact).
                    _ = try c.execute(
                        """
                        UPDATE inbox SET body = ''::bytea, scrubbed = true
                        WHERE (lead_id = ANY($1::text[]) OR reward_id = ANY($2::text[])) AND octet_length(body) > 0
                        """, [.textArray(leads), .textArray(rewards)])
                    _ = try c.execute(
                        "DELETE FROM facts WHERE lead_id = ANY($1::text[]) OR reward_id = ANY($2::text[])",
                        [.textArray(leads), .textArray(rewards)])
                    for table in ["effects", "followups", "timers", "referral_links", "budget_commitments"] {
                        _ = try c.execute(
                            "DELETE FROM \(table) WHERE referral_id = ANY($1::text[])", [.textArray(gone)])
                    }
                    n.rewards = try c.execute(
                        "DELETE FROM rewards WHERE referral_id = ANY($1::text[])", [.textArray(gone)])
                    n.referrals = try c.execute(
                        "DELETE FROM referrals WHERE referral_id = ANY($1::text[])", [.textArray(gone)])
                }
                guard page.count == chunk, let last = page.last else { return (n, nil) }
                return (n, (try last.decode("lk", as: String.self), try last.decode("lead_id", as: String.self)))
            }
            total.referrals += count.referrals
            total.rewards += count.rewards
            guard let next else { return total }
            after = next
        }
    }
}

extension Database {
    /// `RetentionStore.pruneInbox` on this database.
    public func pruneInbox(bodiesBefore: Instant?, keysBefore: Instant?) async throws -> RetentionStore.PruneCount {
        try await Self.converting {
            try await RetentionStore.pruneInbox(connection, bodiesBefore: bodiesBefore, keysBefore: keysBefore)
        }
    }

    /// `RetentionStore.pruneReferrals` on this database.
    public func pruneReferrals(endedBefore: Instant, ledgerBefore: Instant?) async throws -> RetentionStore.PruneCount {
        try await Self.converting {
            try await RetentionStore.pruneReferrals(connection, endedBefore: endedBefore, ledgerBefore: ledgerBefore)
        }
    }
}
