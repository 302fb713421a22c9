import ReferralCore
import Testing

@testable import ReferralStore

/// What a committed transaction recorded joins the cache only where the cache still ends where
/// that transaction read it; anywhere else the next read fills it from the table.
@Suite struct EffectCacheTests {
    static func failed(_ n: Int, reason: String = "account closed") -> Effect {
        .rewardFailed(rewardId: "rwd-1-referrer", failure: n, reason: reason, final: false)
    }

    static func recorded(_ id: String, seen: Int64, seq: Int64, _ effect: Effect) -> EffectCache.Recorded {
        EffectCache.Recorded(referralId: id, seenSeq: seen, seq: seq, effect: effect)
    }

    @Test func joinsAnEntryThatEndsWhereTheTransactionReadIt() {
        let cache = EffectCache()
        cache.store([
            "ref-1": (lastSeq: 5, effects: [.rewardApplied(rewardId: "a")]), "ref-2": (lastSeq: 0, effects: []),
        ])
        cache.appendCommitted([
            Self.recorded("ref-1", seen: 5, seq: 9, Self.failed(2)),
            Self.recorded("ref-1", seen: 5, seq: 7, Self.failed(1)),
            Self.recorded("ref-2", seen: 0, seq: 8, .rewardApplied(rewardId: "b")),
        ])
        let held = cache.snapshot(["ref-1", "ref-2"])
        #expect(held["ref-1"]?.lastSeq == 9)
        // In recording order, and without billing's free text, as a read from the table keeps them.
        #expect(
            held["ref-1"]?.effects == [
                .rewardApplied(rewardId: "a"), Self.failed(1, reason: Erasure.redacted),
                Self.failed(2, reason: Erasure.redacted),
            ])
        #expect(held["ref-2"]?.lastSeq == 8 && held["ref-2"]?.effects == [.rewardApplied(rewardId: "b")])
    }

    @Test func leavesAnEntryThatMovedOnOrIsGone() {
        let cache = EffectCache()
        cache.store(["ref-1": (lastSeq: 12, effects: [.rewardApplied(rewardId: "a")])])
        // Read at 5, but another read has since taken the entry to 12: adding would misplace it.
        cache.appendCommitted([Self.recorded("ref-1", seen: 5, seq: 7, Self.failed(1))])
        #expect(cache.snapshot(["ref-1"])["ref-1"]?.lastSeq == 12)
        #expect(cache.snapshot(["ref-1"])["ref-1"]?.effects == [.rewardApplied(rewardId: "a")])
        // Emptied by a reconnect after the read: no entry is made from our effects alone.
        cache.removeAll()
        cache.appendCommitted([Self.recorded("ref-1", seen: 12, seq: 13, Self.failed(1))])
        #expect(cache.snapshot(["ref-1"]).isEmpty)
    }
}
