import Testing

@testable import ReferralCore
@testable import ReferralWorker

/// The intake's pure parts: which tags may be acked when lanes finish out of order, which
/// deliveries a lane may take, and the story codes that keep a referrer's friends in one lane.
@Suite("Lane dispatch and acks (no broker)")
struct DispatchTests {
    // MARK: AckLedger

    @Test func anAckWaitsForEveryEarlierDelivery() {
        var ledger = AckLedger()
        ledger.received([1, 2, 3, 4, 5])
        // The second lane finished first: acking 4 with `multiple` would drop 1-2 in a crash.
        let later = ledger.settle(acked: [3, 4])
        #expect(later == nil)
        let earlier = ledger.settle(acked: [1, 2])
        #expect(earlier == 4)
        #expect(ledger.unsettled == 1)
        let last = ledger.settle(acked: [5])
        #expect(last == 5)
        #expect(ledger.unsettled == 0)
    }

    /// A requeued tag is no longer outstanding at the broker: naming it in an ack closes the
    /// channel (406), so the ack names the highest tag of the prefix that still needs one.
    @Test func anAckNeverNamesATagSettledOnItsOwn() {
        var ledger = AckLedger()
        ledger.received([1, 2, 3, 4])
        let first = ledger.settle(acked: [1, 2, 4], individually: [3])
        #expect(first == 4)
        ledger.received([5, 6])
        let requeuedLast = ledger.settle(acked: [5], individually: [6])
        #expect(requeuedLast == 5)
        ledger.received([7])
        let onlyRequeued = ledger.settle(acked: [UInt64](), individually: [7])
        #expect(onlyRequeued == nil)
        #expect(ledger.unsettled == 0)
    }

    /// Two lanes' reads resume in either order: the later deliveries can reach the ledger
    /// first. Acking them with `multiple` would also ack the earlier ones, not applied yet, and
    /// the earlier ones' own ack would then name a tag the broker no longer has (406).
    @Test func anAckWaitsForDeliveriesAReadHasNotHandedOverYet() {
        var ledger = AckLedger()
        ledger.received([5, 6, 7, 8])
        #expect(ledger.settle(acked: [5, 6, 7, 8]) == nil)
        ledger.received([1, 2, 3, 4])
        #expect(ledger.settle(acked: [1, 2, 3]) == 3)
        #expect(ledger.unsettled == 5)
        #expect(ledger.settle(acked: [4]) == 8)
        #expect(ledger.unsettled == 0)
    }

    /// Thousands of deliveries through the ledger: its memory is compacted and it keeps
    /// answering with the right tag.
    @Test func theLedgerStaysCorrectPastItsCompaction() {
        var ledger = AckLedger()
        var acked: UInt64 = 0
        for start in stride(from: UInt64(1), through: 10_000, by: 100) {
            let tags = Array(start..<start + 100)
            ledger.received(tags)
            // Each block settles back to front: only the last call acks, and names its end.
            for tag in tags.reversed() {
                if let target = ledger.settle(acked: [tag]) { acked = target }
            }
            #expect(acked == start + 99)
        }
        #expect(ledger.unsettled == 0)
    }

    // MARK: LaneSelection

    private func candidate(_ keys: String..., bytes: Int = 10) -> LaneSelection.Candidate {
        .init(keys: keys, bytes: bytes)
    }

    @Test func aLaneTakesNothingAnotherLaneHolds() {
        let waiting = [candidate("a:1"), candidate("a:2"), candidate("a:3", "l:9")]
        let taken = LaneSelection.take(waiting, blocked: ["a:2", "l:9"], max: 10, maxBytes: 1000)
        #expect(taken == [0])
    }

    /// An event held back holds back every later event of its keys, so one key's events are
    /// still applied in the order they arrived.
    @Test func laterEventsOfAHeldKeyWaitToo() {
        let waiting = [
            candidate("a:1", "l:1"), candidate("l:1"), candidate("a:7"), candidate("l:1", "a:8"), candidate("a:8"),
        ]
        let taken = LaneSelection.take(waiting, blocked: ["a:1"], max: 10, maxBytes: 1000)
        #expect(taken == [2])
    }

    @Test func badInputGoesWithAnyLaneAndBatchesKeepTheirLimits() {
        let waiting = [candidate(), candidate("a:1"), candidate("a:2"), candidate("a:3")]
        #expect(LaneSelection.take(waiting, blocked: ["a:1"], max: 2, maxBytes: 1000) == [0, 2])
        let sized = [candidate("a:1", bytes: 600), candidate("a:2", bytes: 600), candidate("a:3", bytes: 10)]
        #expect(LaneSelection.take(sized, blocked: [], max: 10, maxBytes: 1000) == [0])
        // A body larger than the batch's bytes still goes, alone.
        let huge = [candidate("a:1", bytes: 5000), candidate("a:2")]
        #expect(LaneSelection.take(huge, blocked: [], max: 10, maxBytes: 1000) == [0])
    }

    /// The first lane always takes what waits; the others only a backlog of a quarter batch.
    @Test func laterLanesJoinOnlyABacklog() {
        #expect(LaneSelection.joins(lane: 0, waiting: 1, batchSize: 512))
        #expect(!LaneSelection.joins(lane: 1, waiting: 127, batchSize: 512))
        #expect(LaneSelection.joins(lane: 1, waiting: 128, batchSize: 512))
        #expect(LaneSelection.joins(lane: 3, waiting: 1, batchSize: 1))
        #expect(!LaneSelection.joins(lane: 1, waiting: 0, batchSize: 1))
    }

    // MARK: StoryCodes and dispatch keys

    private let at = Instant(microseconds: 1_700_000_000_000_000)

    @Test func aFriendsLaterEventsCarryTheirReferrersCode() {
        var stories = StoryCodes()
        let lead = stories.keys(for: [
            .leadCreated(
                leadId: "L1", at: at, code: "ABCD-2345", householdId: nil,
                contactHash: nil, segment: nil)
        ])
        let order = stories.keys(for: [.orderPlaced(leadId: "L1", accountId: "A1", at: at)])
        let install = stories.keys(for: [.installCompleted(accountId: "A1", at: at)])
        let stranger = stories.keys(for: [.installCompleted(accountId: "A2", at: at)])
        #expect(lead == ["c:ABCD-2345"])
        #expect(order == ["c:ABCD-2345"])
        #expect(install == ["c:ABCD-2345"])
        #expect(stranger.isEmpty)
    }

    /// Bounded: past two generations of its capacity, the oldest stories are forgotten.
    @Test func storyCodesForgetTheOldestStories() {
        var stories = StoryCodes(capacity: 2)
        for i in 1...5 {
            _ = stories.keys(for: [
                .leadCreated(
                    leadId: "L\(i)", at: at, code: "C\(i)", householdId: nil,
                    contactHash: nil, segment: nil)
            ])
        }
        let oldest = stories.keys(for: [.orderPlaced(leadId: "L1", accountId: "A1", at: at)])
        let newest = stories.keys(for: [.orderPlaced(leadId: "L5", accountId: "A5", at: at)])
        #expect(oldest.isEmpty)
        #expect(newest == ["c:C5"])
    }

    /// Events that lock something in common share a dispatch key; unrelated ones do not.
    @Test func dispatchKeysMeetWhereTransactionsWouldLock() throws {
        var stories = StoryCodes()
        func keys(_ json: String) throws -> Set<String> {
            let event = try classify(body: Array(json.utf8)).get()
            return Set(DispatchKeys.of(event, stories: &stories))
        }
        let lead = try keys(
            #"{"specversion":"1.0","id":"e1","source":"provisioning","type":"provisioning.lead.created","time":"2026-01-05T10:00:00Z","data":{"lead_id":"L1","referral_code":"k7qm-42xd-e","household_id":"H1"}}"#
        )
        let otherLead = try keys(
            #"{"specversion":"1.0","id":"e2","source":"provisioning","type":"provisioning.lead.created","time":"2026-01-05T10:00:00Z","data":{"lead_id":"L2","household_id":"H1"}}"#
        )
        let order = try keys(
            #"{"specversion":"1.0","id":"e3","source":"provisioning","type":"provisioning.order.placed","time":"2026-01-05T11:00:00Z","data":{"lead_id":"L1","account_id":"A1"}}"#
        )
        let install = try keys(
            #"{"specversion":"1.0","id":"e4","source":"provisioning","type":"provisioning.install.completed","time":"2026-01-06T11:00:00Z","data":{"account_id":"A1","completed_at":"2026-01-06T11:00:00Z"}}"#
        )
        let unrelated = try keys(
            #"{"specversion":"1.0","id":"e5","source":"provisioning","type":"provisioning.install.completed","time":"2026-01-06T11:00:00Z","data":{"account_id":"A9","completed_at":"2026-01-06T11:00:00Z"}}"#
        )
        #expect(!lead.isDisjoint(with: otherLead))  // the household both claim
        let code = try #require(lead.first { $0.hasPrefix("c:") })
        #expect(order.contains(code) && install.contains(code))
        #expect(!order.isDisjoint(with: install))
        #expect(unrelated.isDisjoint(with: lead.union(order).union(install)))
    }
}
