import Postgres
import ReferralCore

/// Every SQL statement of the daemon's hot path. Functions take an isolated connection so that a
/// whole batch runs as synchronous calls on the connection's own thread, inside one transaction
/// the caller opened.
public enum Store {}

/// An event that the inbox accepted, with the keys the fact queries look it up by.
public struct InboxEntry: Sendable {
    public var source: String
    public var eventId: String
    public var type: String
    public var accountId: String?
    public var leadId: String?
    /// The reward billing answered about: a `billing.credit.rejected` names no account, and an
    /// erasure finds its body (with its free-text reason) by the erased account's rewards.
    public var rewardId: String?
    public var factTime: Instant
    public var body: [UInt8]

    public init(
        source: String, eventId: String, type: String, accountId: String?, leadId: String?,
        rewardId: String? = nil, factTime: Instant, body: [UInt8]
    ) {
        self.source = source
        self.eventId = eventId
        self.type = type
        self.accountId = accountId
        self.leadId = leadId
        self.rewardId = rewardId
        self.factTime = factTime
        self.body = body
    }
}

/// A row of the outbox, ready to publish.
public struct OutboxRow: Sendable, Equatable {
    public var seq: Int64
    public var eventId: String
    public var type: String
    public var body: [UInt8]
}

extension Store {
    /// Session settings of a worker's connection.
    ///
    /// JIT off: a statement whose rows the planner cannot estimate (a recursive query did this,
    /// millions of rows expected for a few hundred found) passes `jit_above_cost`, and
    /// compiling it costs tens of milliseconds for a query that runs in a few (BENCHMARKS.md).
    /// The worker's statements are all short; JIT never pays for itself on them.
    ///
    /// No parallel query: on a 200,000-event database the planner chose parallel sequential
    /// scans for a batch's loads (facts, ask facts), starting background workers for a few
    /// milliseconds of work each time, on a machine whose cores the pipeline already uses.
    ///
    /// `random_page_cost` 1.1, the usual value for data in memory or on SSDs (the default 4
    /// prices spinning disks): with 4, a batch's lookups by several hundred keys became
    /// sequential scans once a table held some 10,000 rows (the view update of 570 referrals:
    /// 8.5 ms by seq scan and hash join, 4.5 ms by index), and their cost grew with the table —
    /// on a 1,000,000-event drain the view update alone averaged 19 ms a batch.
    ///
    /// The timeouts bound what the server holds for a client that went quiet: a statement
    /// stuck behind something (`statement_timeout`), a wait for another transaction's locks
    /// (`lock_timeout`: a transient error, the batch is retried), and a transaction whose client
    /// vanished mid-way (`idle_in_transaction_session_timeout`: without it a partitioned
    /// pipeline's transaction kept its row locks, and every later batch touching them waited,
    /// until the server's TCP noticed, hours later).
    public static func configureWorkerSession(_ c: isolated PostgresConnection, timeouts: SessionTimeouts) throws {
        try c.execute("SET jit = off")
        try c.execute("SET max_parallel_workers_per_gather = 0")
        try c.execute("SET random_page_cost = 1.1")
        // SET takes no parameters; the values are whole milliseconds formatted here.
        try c.execute("SET statement_timeout = \(timeouts.statement.microseconds / 1000)")
        try c.execute("SET lock_timeout = \(timeouts.lock.microseconds / 1000)")
        try c.execute("SET idle_in_transaction_session_timeout = \(timeouts.idleInTransaction.microseconds / 1000)")
    }

    /// The worker session's timeouts (REFERRALD_DB_*_TIMEOUT).
    public struct SessionTimeouts: Sendable {
        public var statement: Span
        public var lock: Span
        public var idleInTransaction: Span
        public init(statement: Span, lock: Span, idleInTransaction: Span) {
            self.statement = statement
            self.lock = lock
            self.idleInTransaction = idleInTransaction
        }
    }

    /// Records the batch's events in the inbox and returns the indexes of those seen for the
    /// first time. Duplicates, within the batch or from earlier deliveries, are dropped here:
    /// `(source, id)` is the primary key, so a redelivery after a crash between commit and ack
    /// finds its row and has no second effect.
    public static func recordInbox(_ c: isolated PostgresConnection, _ entries: [InboxEntry]) throws -> [Int] {
        if entries.isEmpty { return [] }
        let bodies = PackedBytes(entries.map(\.body))
        let rows = try c.query(
            """
            INSERT INTO inbox (source, event_id, type, account_id, lead_id, fact_time, body, reward_id)
            SELECT s, e, t, a, l, f, substring($7::bytea FROM o::int4 FOR n::int4), r
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                        $8::int8[], $9::int8[], $10::text[]) AS u(s, e, t, a, l, f, o, n, r)
            ON CONFLICT (source, event_id) DO NOTHING
            RETURNING source, event_id
            """,
            [
                .textArray(entries.map(\.source)), .textArray(entries.map(\.eventId)),
                .textArray(entries.map(\.type)), .textArray(entries.map(\.accountId)),
                .textArray(entries.map(\.leadId)),
                .textArray(entries.map { $0.factTime.rfc3339 }),
                bodies.blob, bodies.offsets, bodies.lengths, .textArray(entries.map(\.rewardId)),
            ])
        var fresh = Set<[String]>()
        for row in rows {
            fresh.insert([try row.decode("source", as: String.self), try row.decode("event_id", as: String.self)])
        }
        // RETURNING gives one row per inserted event; map back to the first index of each key
        // so that a duplicate inside the same batch is applied once.
        var result: [Int] = []
        for (i, e) in entries.enumerated() where fresh.remove([e.source, e.eventId]) != nil { result.append(i) }
        return result
    }

    /// Adds events to the outbox in the caller's transaction and returns their rows, in order.
    ///
    /// With `leaseSeconds`, the rows are born leased: the worker that commits them publishes
    /// them from memory right after the commit, and the lease keeps other instances' relays
    /// from publishing the same rows at the same moment. Without it (`enroll`, which does not
    /// publish), the daemon's relay picks them up. Each row costs one UPDATE less than leasing
    /// it afterwards, and the batch one commit less.
    @discardableResult
    public static func enqueue(
        _ c: isolated PostgresConnection, _ events: [OutgoingEvent],
        leaseSeconds: Int? = nil
    ) throws -> [OutboxRow] {
        if events.isEmpty { return [] }
        let encoded = events.map { $0.encoded() }
        let bodies = PackedBytes(encoded)
        var seqOf: [String: Int64] = [:]
        for row in try c.query(
            """
            INSERT INTO outbox (event_id, type, subject, body, leased_until)
            SELECT e, t, s, substring($4::bytea FROM o::int4 FOR n::int4),
                   now() + make_interval(secs => $7::int4)
            FROM unnest($1::text[], $2::text[], $3::text[], $5::int8[], $6::int8[]) WITH ORDINALITY AS u(e, t, s, o, n, i)
            ORDER BY i
            RETURNING seq, event_id
            """,
            [
                .textArray(events.map(\.id)), .textArray(events.map(\.type.rawValue)),
                .textArray(events.map(\.subject)), bodies.blob, bodies.offsets, bodies.lengths,
                PostgresValue(leaseSeconds.map(Int64.init)),
            ])
        {
            seqOf[try row.decode("event_id", as: String.self)] = try row.decode("seq", as: Int64.self)
        }
        return zip(events, encoded).compactMap { event, body in
            seqOf[event.id].map { OutboxRow(seq: $0, eventId: event.id, type: event.type.rawValue, body: body) }
        }.sorted { $0.seq < $1.seq }
    }

    /// Leases up to `limit` unpublished rows, oldest first. SKIP LOCKED lets several instances
    /// claim disjoint rows without waiting on each other; the lease (rather than a lock held
    /// across the publish) means no transaction stays open while the broker is slow, and a
    /// publisher that dies mid-way only delays its rows until the lease expires.
    public static func leaseOutbox(_ c: isolated PostgresConnection, limit: Int, leaseSeconds: Int) throws
        -> [OutboxRow]
    {
        let rows = try c.query(
            """
            UPDATE outbox o SET leased_until = now() + make_interval(secs => $2)
            FROM (SELECT seq FROM outbox
                  WHERE published_at IS NULL AND (leased_until IS NULL OR leased_until < now())
                  ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) claimed
            WHERE o.seq = claimed.seq
            RETURNING o.seq, o.event_id, o.type, o.body
            """, [.int(Int64(limit)), .int(Int64(leaseSeconds))])
        return try rows.map {
            OutboxRow(
                seq: try $0.decode("seq", as: Int64.self), eventId: try $0.decode("event_id", as: String.self),
                type: try $0.decode("type", as: String.self), body: try $0.decode("body", as: [UInt8].self))
        }.sorted { $0.seq < $1.seq }
    }

    /// Deletes rows once the broker confirmed them: the outbox holds what is still to be
    /// published, nothing more. Kept with a `published_at` instead, it grew by every event ever
    /// published, and each mark was a non-HOT update writing three index entries per row (the
    /// costliest write of a batch on the realistic mix). What was decided stays in `effects`,
    /// `rewards` and `asks`.
    public static func removePublished(_ c: isolated PostgresConnection, seqs: [Int64]) throws {
        if seqs.isEmpty { return }
        try c.executeDeferred("DELETE FROM outbox WHERE seq = ANY($1::int8[])", [.int8Array(seqs.map { Optional($0) })])
    }

    /// Gives a lease back so that the rows are retried at once rather than after the lease.
    public static func releaseLease(_ c: isolated PostgresConnection, seqs: [Int64]) throws {
        if seqs.isEmpty { return }
        try c.execute(
            "UPDATE outbox SET leased_until = NULL WHERE seq = ANY($1::int8[]) AND published_at IS NULL",
            [.int8Array(seqs.map { Optional($0) })])
    }

    /// Rows waiting to be published and the age of the oldest, for metrics and `/readyz`.
    public static func outboxBacklog(_ c: isolated PostgresConnection) throws -> (
        count: Int64, oldestAgeSeconds: Double
    ) {
        let row = try c.query(
            """
            SELECT count(*)::int8 AS n,
                   coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age
            FROM outbox WHERE published_at IS NULL
            """
        ).first
        return (try row?.decode("n", as: Int64.self) ?? 0, try row?.decode("age", as: Double.self) ?? 0)
    }

    /// Rewards issued that billing has not applied yet (state `issued`: awaiting its answer, a
    /// retry re-issued after a rejection, or a mismatched credit), and how long ago the oldest
    /// was first issued, at `now`, for metrics. Every instance samples it every few seconds:
    /// the partial index `rewards_unapplied` (migration 8) holds only these rows, so the count
    /// and the minimum are read from it alone instead of from the whole ledger, which keeps
    /// every reward for years. Measured from the first issue: a reward rejected and re-issued
    /// is still one the customer has been waiting for since then.
    public static func unappliedRewards(_ c: isolated PostgresConnection, now: Instant) throws
        -> (count: Int64, oldestAgeSeconds: Double)
    {
        let row = try c.query(
            """
            SELECT count(*)::int8 AS n, coalesce(extract(epoch FROM $1::timestamptz - min(issued_at)), 0)::float8 AS age
            FROM rewards WHERE state = 'issued'
            """, [.text(now.rfc3339)]
        ).first
        return (try row?.decode("n", as: Int64.self) ?? 0, try row?.decode("age", as: Double.self) ?? 0)
    }
}

extension Store {
    /// The codes already issued to these accounts.
    public static func codes(_ c: isolated PostgresConnection, accounts: [String]) throws -> [String: String] {
        if accounts.isEmpty { return [:] }
        var result: [String: String] = [:]
        for row in try c.query(
            "SELECT account_id, code FROM referral_codes WHERE account_id = ANY($1::text[])",
            [.textArray(accounts)])
        {
            result[try row.decode("account_id", as: String.self)] = try row.decode("code", as: String.self)
        }
        return result
    }

    /// Inserts codes; returns the accounts whose insert did not happen because the drawn code
    /// was taken by another account (the caller redraws). An account that already has a code
    /// keeps it: the first activation's code is the account's code for life.
    public static func insertCodes(
        _ c: isolated PostgresConnection, _ codes: [(account: String, code: String, program: String, issuedAt: Instant)]
    ) throws -> Set<String> {
        if codes.isEmpty { return [] }
        let rows = try c.query(
            """
            INSERT INTO referral_codes (account_id, code, program_id, issued_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
            ON CONFLICT DO NOTHING
            RETURNING account_id
            """,
            [
                .textArray(codes.map(\.account)), .textArray(codes.map(\.code)),
                .textArray(codes.map(\.program)), .textArray(codes.map { $0.issuedAt.rfc3339 }),
            ])
        var inserted = Set<String>()
        for row in rows { inserted.insert(try row.decode("account_id", as: String.self)) }
        let notInserted = Set(codes.map(\.account)).subtracting(inserted)
        let existing = try Self.codes(c, accounts: Array(notInserted))
        return notInserted.subtracting(existing.keys)
    }
}

/// Byte strings for a set-based write, sent as one `bytea` parameter with the 1-based offset
/// and length of each, cut apart in SQL with `substring`.
///
/// Bodies inside a `text[]` parameter (the hex form, quoted element by element) cost the daemon
/// about a quarter of its CPU under load, measured with perf: the array quoting walks every
/// character. One `bytea` is hex-encoded in a single pass and needs no quoting at all.
struct PackedBytes {
    let blob: PostgresValue
    let offsets: PostgresValue
    let lengths: PostgresValue

    init(_ items: [[UInt8]]) {
        var blob: [UInt8] = []
        blob.reserveCapacity(items.reduce(0) { $0 + $1.count })
        var offsets: [Int64?] = []
        var lengths: [Int64?] = []
        offsets.reserveCapacity(items.count)
        lengths.reserveCapacity(items.count)
        for item in items {
            offsets.append(Int64(blob.count + 1))
            lengths.append(Int64(item.count))
            blob.append(contentsOf: item)
        }
        self.blob = .bytes(blob)
        self.offsets = .int8Array(offsets)
        self.lengths = .int8Array(lengths)
    }
}
