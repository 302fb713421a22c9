import Postgres
import ReferralCore

/// The inbox: every event accepted, keyed by `(source, id)`, which makes a redelivery harmless.
public enum InboxStore {
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
}

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

/// Byte strings for a set-based write, sent as one `bytea` parameter with the 1-based offset
/// and length of each, cut apart in SQL with `substring`.
///
/// Bodies inside a `text[]` parameter (the hex form, quoted element by element) cost the daemon
/// much of its CPU under load: the array quoting walks every character. One `bytea` is hex-encoded in a single pass and needs no quoting at all.
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
