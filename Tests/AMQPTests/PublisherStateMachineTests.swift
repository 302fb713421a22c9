import Testing

@testable import AMQP

/// Every transition of the publishing side, without a broker. Callers are strings; deadlines are
/// instants after a fixed `start`. The broker numbers publishes 1, 2, 3... per channel.
@Suite("PublisherStateMachine (no broker)")
struct PublisherStateMachineTests {
    typealias Machine = PublisherStateMachine<String>

    private let start = ContinuousClock.now
    private let noRoute = PublishOutcome.returned(replyCode: 312, replyText: "NO_ROUTE")
    private let channelClosed = AMQPError(.channelClosed, operation: "publish", replyCode: 404, replyText: "NOT_FOUND")
    private let connectionLost = AMQPError(.connectionLost, operation: "read", replyCode: 320, replyText: "FORCED")

    private func message(_ routingKey: String, _ body: String = "x") -> OutgoingMessage {
        OutgoingMessage(exchange: "ex", routingKey: routingKey, body: Array(body.utf8))
    }

    private func publish(
        _ machine: inout Machine, _ waiter: String, _ messages: [OutgoingMessage], timeout: Duration = .seconds(30)
    ) -> Machine.Action {
        machine.publishRequested(messages, deadline: start + timeout, waiter: waiter)
    }

    private func expectTimeout(_ action: Machine.Action, _ waiter: String, blocked: Bool) {
        guard case .fail(waiter, let error) = action else {
            Issue.record("expected \(waiter) to time out, got \(action)")
            return
        }
        #expect(error.code == .timeout)
        #expect((error.detail?.contains("connection.blocked") == true) == blocked)
    }

    @Test func anEmptyBatchCompletesAtOnce() {
        var machine = Machine()
        #expect(publish(&machine, "a", []) == .complete("a", []))
        #expect(machine.earliestDeadline == nil)
    }

    @Test func aBatchIsSentAndCompletesWithItsLastConfirm() {
        var machine = Machine()
        let batch = [message("a"), message("b")]
        #expect(publish(&machine, "a", batch) == .send(batch))
        #expect(machine.earliestDeadline == start + .seconds(30))
        #expect(machine.confirmed(tag: 1, multiple: false, ack: true).isEmpty)
        #expect(machine.confirmed(tag: 2, multiple: false, ack: true) == [.complete("a", [.confirmed, .confirmed])])
        #expect(machine.earliestDeadline == nil)
    }

    @Test func confirmsOutOfOrderCompleteEachBatchWhenItsLastArrives() {
        var machine = Machine()
        _ = publish(&machine, "a", [message("1"), message("2")])
        _ = publish(&machine, "b", [message("3")])
        #expect(machine.confirmed(tag: 3, multiple: false, ack: true) == [.complete("b", [.confirmed])])
        #expect(machine.confirmed(tag: 2, multiple: false, ack: false).isEmpty)
        #expect(machine.confirmed(tag: 1, multiple: false, ack: true) == [.complete("a", [.confirmed, .nacked])])
    }

    @Test func aMultipleConfirmCompletesEveryBatchItCovers() {
        var machine = Machine()
        _ = publish(&machine, "a", [message("1"), message("2")])
        _ = publish(&machine, "b", [message("3")])
        _ = publish(&machine, "c", [message("4")])
        #expect(
            machine.confirmed(tag: 3, multiple: true, ack: true) == [
                .complete("a", [.confirmed, .confirmed]), .complete("b", [.confirmed]),
            ])
        #expect(machine.earliestDeadline == start + .seconds(30))
        #expect(machine.confirmed(tag: 4, multiple: true, ack: true) == [.complete("c", [.confirmed])])
    }

    @Test func nacksSingleAndMultipleAreReportedPerMessage() {
        var machine = Machine()
        _ = publish(&machine, "a", [message("1"), message("2"), message("3")])
        #expect(machine.confirmed(tag: 1, multiple: false, ack: true).isEmpty)
        #expect(
            machine.confirmed(tag: 3, multiple: true, ack: false) == [.complete("a", [.confirmed, .nacked, .nacked])])
    }

    @Test func aBasicReturnIsMatchedToItsPublish() {
        var machine = Machine()
        let routed = message("rk", "routed")
        let lost = message("rk", "lost")
        _ = publish(&machine, "a", [routed, lost, routed])
        // The unroutable message comes back before its ack, without a sequence number.
        let matched = machine.returned(ConfirmTracker.ReturnKey(lost), replyCode: 312, replyText: "NO_ROUTE")
        let unmatched = machine.returned(ConfirmTracker.ReturnKey(message("other")), replyCode: 312, replyText: "x")
        #expect(matched)
        #expect(!unmatched)
        #expect(
            machine.confirmed(tag: 3, multiple: true, ack: true) == [.complete("a", [.confirmed, noRoute, .confirmed])])
    }

    @Test func aBatchUnconfirmedAtItsDeadlineFailsAndItsLateConfirmsAreIgnored() {
        var machine = Machine()
        _ = publish(&machine, "a", [message("1")], timeout: .seconds(1))
        _ = publish(&machine, "b", [message("2")], timeout: .seconds(5))
        #expect(machine.deadlinesPassed(now: start + .milliseconds(999)).isEmpty)
        let expired = machine.deadlinesPassed(now: start + .seconds(1))
        #expect(expired.count == 1)
        expectTimeout(expired[0], "a", blocked: false)
        #expect(machine.confirmed(tag: 1, multiple: false, ack: true).isEmpty)
        #expect(machine.confirmed(tag: 2, multiple: true, ack: true) == [.complete("b", [.confirmed])])
    }

    // MARK: connection.blocked

    @Test func publishesHeldWhileBlockedAreSentInOrderAfterUnblock() {
        var machine = Machine()
        machine.connectionBlocked()
        #expect(machine.isBlocked)
        let first = [message("1"), message("2")]
        let second = [message("3")]
        #expect(publish(&machine, "a", first, timeout: .seconds(10)) == .hold)
        #expect(publish(&machine, "b", second, timeout: .seconds(20)) == .hold)
        #expect(machine.earliestDeadline == start + .seconds(10))
        #expect(machine.confirmed(tag: 1, multiple: true, ack: true).isEmpty)
        #expect(machine.connectionUnblocked() == [.send(first), .send(second)])
        #expect(!machine.isBlocked)
        // Numbered in release order: 1, 2 for the first batch, 3 for the second.
        #expect(machine.confirmed(tag: 3, multiple: false, ack: true) == [.complete("b", [.confirmed])])
        #expect(machine.confirmed(tag: 2, multiple: true, ack: true) == [.complete("a", [.confirmed, .confirmed])])
        #expect(publish(&machine, "c", second) == .send(second))
    }

    @Test func aHeldPublishWhoseDeadlinePassesFailsAndIsNeverSent() {
        var machine = Machine()
        machine.connectionBlocked()
        _ = publish(&machine, "a", [message("1")], timeout: .seconds(1))
        _ = publish(&machine, "b", [message("2")], timeout: .seconds(5))
        let expired = machine.deadlinesPassed(now: start + .seconds(2))
        #expect(expired.count == 1)
        expectTimeout(expired[0], "a", blocked: true)
        #expect(machine.connectionUnblocked() == [.send([message("2")])])
        #expect(machine.confirmed(tag: 1, multiple: false, ack: true) == [.complete("b", [.confirmed])])
    }

    // MARK: Channel and connection loss

    @Test func aLostChannelFailsUnconfirmedBatchesKeepsHeldOnesAndRestartsNumbering() {
        var machine = Machine()
        _ = publish(&machine, "a", [message("1")])
        _ = publish(&machine, "b", [message("2")])
        machine.connectionBlocked()
        _ = publish(&machine, "held", [message("3")])
        #expect(machine.channelLost(channelClosed) == [.fail("a", channelClosed), .fail("b", channelClosed)])
        // A confirm from the old channel's numbering settles nothing now.
        #expect(machine.confirmed(tag: 2, multiple: true, ack: true).isEmpty)
        #expect(machine.connectionUnblocked() == [.send([message("3")])])
        #expect(machine.confirmed(tag: 1, multiple: false, ack: true) == [.complete("held", [.confirmed])])
    }

    @Test func aLostConnectionFailsUnconfirmedAndHeldBatchesAndEveryLaterPublish() {
        var machine = Machine()
        _ = publish(&machine, "a", [message("1")])
        _ = publish(&machine, "b", [message("2")])
        machine.connectionBlocked()
        _ = publish(&machine, "held", [message("3")])
        #expect(
            machine.connectionLost(connectionLost) == [
                .fail("a", connectionLost), .fail("b", connectionLost), .fail("held", connectionLost),
            ])
        #expect(machine.earliestDeadline == nil)
        #expect(machine.connectionLost(AMQPError(.closed, operation: "close")).isEmpty)
        #expect(machine.failure == connectionLost)
        #expect(publish(&machine, "c", [message("4")]) == .fail("c", connectionLost))
        #expect(machine.confirmed(tag: 1, multiple: true, ack: true).isEmpty)
    }

    /// The write of the first released batch fails: the connection is lost while the second
    /// one is registered but not yet written, and both callers fail (once each).
    @Test func aConnectionLostWhileReleasingHeldBatchesFailsEachOfThem() {
        var machine = Machine()
        machine.connectionBlocked()
        _ = publish(&machine, "a", [message("1")])
        _ = publish(&machine, "b", [message("2")])
        #expect(machine.connectionUnblocked().count == 2)
        #expect(machine.connectionLost(connectionLost) == [.fail("a", connectionLost), .fail("b", connectionLost)])
    }
}
