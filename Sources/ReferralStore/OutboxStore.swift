import Postgres
import ReferralCore

/// The outbox: events decided and committed, waiting for the broker to confirm them.
public enum OutboxStore {
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
    public static func backlog(_ c: isolated PostgresConnection) throws -> (
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
}

/// A row of the outbox, ready to publish.
public struct OutboxRow: Sendable, Equatable {
    public var seq: Int64
    public var eventId: String
    public var type: String
    public var body: [UInt8]
}

extension Database {
    /// Leases up to `limit` unpublished rows for a relay pass (`OutboxStore.leaseOutbox`).
    public func leaseOutbox(limit: Int, leaseSeconds: Int) async throws -> [OutboxRow] {
        try await run { c in try OutboxStore.leaseOutbox(c, limit: limit, leaseSeconds: leaseSeconds) }
    }

    /// Deletes rows the broker confirmed, in a statement of their own.
    public func removePublished(seqs: [Int64]) async throws {
        try await run { c in try OutboxStore.removePublished(c, seqs: seqs) }
    }

    /// Gives a lease back so that the rows are retried at once rather than after the lease.
    public func releaseLease(seqs: [Int64]) async throws {
        try await run { c in try OutboxStore.releaseLease(c, seqs: seqs) }
    }
}
