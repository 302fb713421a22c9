import ReferralCore
import Synchronization

/// Decoded recorded effects per referral, shared by a process's pipelines, so that a batch
/// reads from `effects` only what was recorded since the cache last saw the referral.
///
/// Every decision re-reads the recorded effects of every referral it decides. Reading and
/// JSON-decoding all of them again on every batch made a referral's cost grow with its
/// history, although effects never change once recorded.
///
/// Why `seq > last seen` cannot miss an effect: effects of a referral are only recorded by a
/// transaction that holds the referral's row lock (`lockReferrals`), and the cache is only read
/// and filled under that lock. So when we read, every effect of the referral with a lower seq
/// has committed. Only rows read from the table enter the cache, never the effects our own
/// transaction records (it could still roll back); they are read back, once, next time.
public final class EffectCache: Sendable {
    struct Entry {
        var lastSeq: Int64
        var effects: [Effect]
        var used: UInt64
    }

    struct State {
        var entries: [String: Entry] = [:]
        var clock: UInt64 = 0
    }

    /// Referrals kept; about 2 KiB each on the realistic mix (8 effects), so the default
    /// bounds the cache near 20 MiB whatever the size of the table.
    public let capacity: Int
    private let state = Mutex(State())

    public init(capacity: Int = 10_000) {
        self.capacity = capacity
    }

    public var count: Int { state.withLock { $0.entries.count } }

    /// Forgets everything; called on every new database connection. After a failover to a
    /// standby or a point-in-time restore, the database may have lost effects the cache still
    /// holds, and a decision would then take them as recorded: a reward never issued again.
    public func removeAll() {
        state.withLock { $0.entries.removeAll() }
    }

    /// What the cache holds for these referrals: the last seq seen and the effects up to it.
    func snapshot(_ referrals: [String]) -> [String: (lastSeq: Int64, effects: [Effect])] {
        state.withLock { s in
            s.clock += 1
            var found: [String: (lastSeq: Int64, effects: [Effect])] = [:]
            for id in referrals {
                guard var entry = s.entries[id] else { continue }
                entry.used = s.clock
                s.entries[id] = entry
                found[id] = (entry.lastSeq, entry.effects)
            }
            return found
        }
    }

    /// An effect a transaction recorded for a referral whose cache entry it read under the
    /// referral's lock, held until that transaction commits.
    public struct Recorded: Sendable {
        let referralId: String
        /// Where the referral's entry ended when the transaction read it.
        let seenSeq: Int64
        let seq: Int64
        let effect: Effect
    }

    /// The last seq each of these referrals' entries holds, for those the cache has.
    func lastSeqs(_ referrals: [String]) -> [String: Int64] {
        state.withLock { s in
            var found: [String: Int64] = [:]
            for id in referrals { if let entry = s.entries[id] { found[id] = entry.lastSeq } }
            return found
        }
    }

    /// Adds what a transaction recorded, once it committed, so that the next decision of these
    /// referrals does not read back and decode the effects this process just wrote, which
    /// would double the effects' cost of every busy referral. Added only to an entry that still ends where the
    /// transaction read it: if it was evicted, emptied by a reconnect or moved on by a later
    /// read, the next read fills it from the table as before. Nothing can have been recorded
    /// for the referral in between: recording takes its row lock, which the transaction held.
    public func appendCommitted(_ recorded: [Recorded]) {
        if recorded.isEmpty { return }
        state.withLock { s in
            for (id, group) in Dictionary(grouping: recorded, by: \.referralId) {
                guard var entry = s.entries[id], let seen = group.first?.seenSeq, entry.lastSeq == seen else {
                    continue
                }
                for r in group.sorted(by: { $0.seq < $1.seq }) { entry.effects.append(r.effect.withoutFreeText) }
                entry.lastSeq = group.map(\.seq).max() ?? seen
                s.entries[id] = entry
            }
        }
    }

    /// Stores what a read under the referrals' locks returned. Past the capacity, the least
    /// recently used tenth goes.
    func store(_ updated: [String: (lastSeq: Int64, effects: [Effect])]) {
        state.withLock { s in
            s.clock += 1
            for (id, value) in updated {
                s.entries[id] = Entry(lastSeq: value.lastSeq, effects: value.effects, used: s.clock)
            }
            guard s.entries.count > capacity else { return }
            let keep = capacity - capacity / 10
            let victims = s.entries.sorted { $0.value.used < $1.value.used }.prefix(s.entries.count - keep)
            for (id, _) in victims { s.entries[id] = nil }
        }
    }
}
