import Testing

@testable import AMQP

/// The tracker is mutated step by step; `#expect` cannot take a mutating call, so each step
/// binds its result first.
@Suite("Publisher-confirm bookkeeping (no broker)")
struct AMQPConfirmTrackerTests {
    private func key(_ routingKey: String, _ body: String = "x") -> ConfirmTracker.ReturnKey {
        .init(exchange: "ex", routingKey: routingKey, messageId: nil, body: Array(body.utf8))
    }

    private let noRoute = PublishOutcome.returned(replyCode: 312, replyText: "NO_ROUTE")

    @Test func multipleAckSpansBatches() {
        var tracker = ConfirmTracker()
        let first = tracker.register([key("a"), key("b")])  // sequence 1, 2
        let second = tracker.register([key("c")])  // sequence 3
        let afterSingle = tracker.settle(tag: 1, multiple: false, ack: true)
        #expect(afterSingle.isEmpty)
        let afterMultiple = tracker.settle(tag: 3, multiple: true, ack: true)
        #expect(Set(afterMultiple) == [first, second])
        let firstOutcomes = tracker.takeOutcomes(first)
        let secondOutcomes = tracker.takeOutcomes(second)
        #expect(firstOutcomes == [.confirmed, .confirmed])
        #expect(secondOutcomes == [.confirmed])
        #expect(tracker.isEmpty)
    }

    @Test func outOfOrderAcksAndNacks() {
        var tracker = ConfirmTracker()
        let batch = tracker.register([key("a"), key("b"), key("c")])
        let step1 = tracker.settle(tag: 3, multiple: false, ack: true)
        let step2 = tracker.settle(tag: 1, multiple: false, ack: false)
        let step3 = tracker.settle(tag: 2, multiple: true, ack: true)
        #expect(step1.isEmpty)
        #expect(step2.isEmpty)
        #expect(step3 == [batch])
        let outcomes = tracker.takeOutcomes(batch)
        #expect(outcomes == [.nacked, .confirmed, .confirmed])
    }

    @Test func multipleNackMarksEveryEarlierMessage() {
        var tracker = ConfirmTracker()
        let batch = tracker.register([key("a"), key("b")])
        let completed = tracker.settle(tag: 2, multiple: true, ack: false)
        #expect(completed == [batch])
        let outcomes = tracker.takeOutcomes(batch)
        #expect(outcomes == [.nacked, .nacked])
    }

    @Test func returnMatchesTheMessageWithTheSameBodyNotJustTheRoutingKey() {
        var tracker = ConfirmTracker()
        let batch = tracker.register([key("rk", "routed"), key("rk", "lost")])
        // The unroutable second message comes back while the first still awaits its confirm.
        let matched = tracker.returned(key("rk", "lost"), replyCode: 312, replyText: "NO_ROUTE")
        #expect(matched)
        let completed = tracker.settle(tag: 2, multiple: true, ack: true)
        #expect(completed == [batch])
        let outcomes = tracker.takeOutcomes(batch)
        #expect(outcomes == [.confirmed, noRoute])
    }

    @Test func identicalMessagesAreReturnedInPublishOrder() {
        var tracker = ConfirmTracker()
        let batch = tracker.register([key("rk"), key("rk"), key("rk")])
        let first = tracker.returned(key("rk"), replyCode: 312, replyText: "NO_ROUTE")
        let second = tracker.returned(key("rk"), replyCode: 312, replyText: "NO_ROUTE")
        #expect(first && second)
        let completed = tracker.settle(tag: 3, multiple: true, ack: true)
        #expect(completed == [batch])
        let outcomes = tracker.takeOutcomes(batch)
        #expect(outcomes == [noRoute, noRoute, .confirmed])
    }

    @Test func unmatchedReturnAndStaleConfirmsChangeNothing() {
        var tracker = ConfirmTracker()
        let batch = tracker.register([key("a")])
        let matched = tracker.returned(key("other"), replyCode: 312, replyText: "NO_ROUTE")
        #expect(!matched)
        let beyondLastPublish = tracker.settle(tag: 99, multiple: false, ack: true)
        #expect(beyondLastPublish.isEmpty)
        let real = tracker.settle(tag: 1, multiple: true, ack: true)
        #expect(real == [batch])
        let duplicate = tracker.settle(tag: 1, multiple: true, ack: true)
        #expect(duplicate.isEmpty)
        let outcomes = tracker.takeOutcomes(batch)
        #expect(outcomes == [.confirmed])
    }

    @Test func abandonedBatchIgnoresLateConfirmsAndOthersStillComplete() {
        var tracker = ConfirmTracker()
        let abandoned = tracker.register([key("a")])
        let live = tracker.register([key("b")])
        tracker.abandon(abandoned)
        let completed = tracker.settle(tag: 2, multiple: true, ack: true)
        #expect(completed == [live])
        let outcomes = tracker.takeOutcomes(abandoned)
        #expect(outcomes.isEmpty)
    }

    @Test func resetRestartsNumberingAndReportsPendingBatches() {
        var tracker = ConfirmTracker()
        let pending = tracker.register([key("a"), key("b")])
        let failed = tracker.reset()
        #expect(failed == [pending])
        #expect(tracker.nextSequence == 1)
        let next = tracker.register([key("c")])
        #expect(next != pending)
        let completed = tracker.settle(tag: 1, multiple: false, ack: true)
        #expect(completed == [next])
    }
}
