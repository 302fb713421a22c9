import Testing

@testable import AMQP

/// Every transition of the consumer side, without a broker. Waiters are strings; deadlines are
/// instants after a fixed `start`.
@Suite("ConsumerStateMachine (no broker)")
struct ConsumerStateMachineTests {
    typealias Machine = ConsumerStateMachine<String>

    private let start = ContinuousClock.now

    private func delivery(_ tag: UInt64, bytes: Int = 1) -> Delivery {
        Delivery(
            deliveryTag: tag, redelivered: false, exchange: "", routingKey: "q",
            body: Array(repeating: UInt8(tag), count: bytes))
    }

    private func request(_ id: UInt64, max: Int = 10, maxBytes: Int = .max, wait: Duration = .seconds(1))
        -> Machine.Request
    {
        Machine.Request(id: id, max: max, maxBytes: maxBytes, wait: wait)
    }

    private func consuming(_ tags: UInt64...) -> Machine {
        var machine = Machine()
        machine.consumeStarted(tag: "ctag")
        for tag in tags { machine.deliveryArrived(delivery(tag)) }
        return machine
    }

    private let channelClosed = AMQPError(
        .channelClosed, operation: "declare", replyCode: 406, replyText: "PRECONDITION")
    private let connectionLost = AMQPError(.connectionLost, operation: "read", replyCode: 320, replyText: "FORCED")

    // MARK: Requests and waiters

    @Test func aRequestBeforeConsumeIsAUsageError() {
        var machine = Machine()
        let action = machine.deliveriesRequested(request(1), waiter: "a", now: start)
        guard case .fail("a", let error) = action else {
            Issue.record("expected a failure, got \(action)")
            return
        }
        #expect(error.code == .invalidUsage)
        #expect(machine.activeTag == nil)
    }

    @Test func bufferedDeliveriesAreHandedOutAtOnceUpToMax() {
        var machine = consuming(1, 2, 3)
        #expect(machine.activeTag == "ctag")
        let first = machine.deliveriesRequested(request(1, max: 2), waiter: "a", now: start)
        #expect(first == .resume("a", [delivery(1), delivery(2)]))
        let second = machine.deliveriesRequested(request(2, max: 2), waiter: "b", now: start)
        #expect(second == .resume("b", [delivery(3)]))
        #expect(machine.buffered.isEmpty)
    }

    @Test func anEmptyBufferRegistersTheWaiterUntilADeliveryArrives() {
        var machine = consuming()
        let action = machine.deliveriesRequested(request(1, wait: .seconds(2)), waiter: "a", now: start)
        #expect(action == .wait)
        #expect(machine.earliestDeadline == start + .seconds(2))
        #expect(machine.serveWaiters().isEmpty)
        machine.deliveryArrived(delivery(7))
        #expect(machine.serveWaiters() == [.resume("a", [delivery(7)])])
        #expect(machine.earliestDeadline == nil)
    }

    @Test func aZeroWaitReturnsAnEmptyBatchAtOnce() {
        var machine = consuming()
        let action = machine.deliveriesRequested(request(1, wait: .zero), waiter: "a", now: start)
        #expect(action == .resume("a", []))
        #expect(machine.earliestDeadline == nil)
    }

    @Test func theOldestWaiterIsServedFirst() {
        var machine = consuming()
        _ = machine.deliveriesRequested(request(1), waiter: "a", now: start)
        _ = machine.deliveriesRequested(request(2), waiter: "b", now: start)
        machine.deliveryArrived(delivery(1))
        #expect(machine.serveWaiters() == [.resume("a", [delivery(1)])])
        machine.deliveryArrived(delivery(2))
        #expect(machine.serveWaiters() == [.resume("b", [delivery(2)])])
    }

    @Test func aWaiterWhoseDeadlinePassesGetsAnEmptyBatch() {
        var machine = consuming()
        _ = machine.deliveriesRequested(request(1, wait: .seconds(1)), waiter: "a", now: start)
        _ = machine.deliveriesRequested(request(2, wait: .seconds(3)), waiter: "b", now: start)
        #expect(machine.deadlinesPassed(now: start + .milliseconds(999)).isEmpty)
        #expect(machine.deadlinesPassed(now: start + .seconds(1)) == [.resume("a", [])])
        #expect(machine.earliestDeadline == start + .seconds(3))
    }

    @Test func batchesAreCappedByBytesAndAnOversizedBodyComesAlone() {
        var machine = consuming()
        for (tag, size) in zip(UInt64(1)..., [400, 400, 400, 2500, 400]) {
            machine.deliveryArrived(delivery(tag, bytes: size))
        }
        var sizes: [[Int]] = []
        for id in UInt64(1)...4 {
            let action = machine.deliveriesRequested(request(id, maxBytes: 1000), waiter: "w", now: start)
            guard case .resume(_, let batch) = action else {
                Issue.record("expected deliveries, got \(action)")
                return
            }
            sizes.append(batch.map(\.body.count))
        }
        #expect(sizes == [[400, 400], [400], [2500], [400]])
    }

    @Test func framesAreReadBeforeServingOnlyForARequestTheBufferCannotFill() {
        var idle = Machine()
        #expect(!idle.wantsFramesBeforeServing(request(1)))
        var machine = consuming(1, 2)
        #expect(machine.wantsFramesBeforeServing(request(1, max: 3)))
        #expect(!machine.wantsFramesBeforeServing(request(1, max: 2)))
        #expect(machine.waiterCancelled(id: 5) == nil)
        #expect(!machine.wantsFramesBeforeServing(request(5, max: 3)))
        machine.channelLost(channelClosed)
        #expect(!machine.wantsFramesBeforeServing(request(2, max: 3)))
        _ = idle.connectionLost(connectionLost)
        #expect(!idle.wantsFramesBeforeServing(request(1)))
    }

    @Test func consumingAgainStartsWithAnEmptyBuffer() {
        var machine = consuming(1, 2)
        machine.consumeStarted(tag: "other")
        #expect(machine.buffered.isEmpty)
        #expect(machine.activeTag == "other")
    }

    // MARK: The cancel race

    /// The task's cancellation handler submits its job before the request's job runs: the id is
    /// remembered, and the request, when it comes, is cancelled instead of waiting.
    @Test func aWaiterCancelledBeforeItIsRegisteredIsCancelledWhenItArrives() {
        var machine = consuming(1)
        #expect(machine.waiterCancelled(id: 1) == nil)
        let action = machine.deliveriesRequested(request(1), waiter: "a", now: start)
        #expect(action == .cancel("a"))
        // The delivery stays for the next caller, and the id is forgotten once used.
        let next = machine.deliveriesRequested(request(2), waiter: "b", now: start)
        #expect(next == .resume("b", [delivery(1)]))
    }

    /// A cancel for a waiter that was already served (its id is not above the highest seen)
    /// must not be remembered: it would cancel nothing, forever.
    @Test func aCancelAfterTheWaiterWasServedDoesNothing() {
        var machine = consuming(1, 2)
        #expect(machine.deliveriesRequested(request(1, max: 1), waiter: "a", now: start) == .resume("a", [delivery(1)]))
        #expect(machine.waiterCancelled(id: 1) == nil)
        #expect(machine.deliveriesRequested(request(2), waiter: "b", now: start) == .resume("b", [delivery(2)]))
    }

    /// Deliveries arrive while the waiter is registered, and its cancel job runs before the
    /// loop serves it: it is cancelled once, and the deliveries stay for the next caller.
    @Test func aWaiterCancelledWhileDeliveriesArriveKeepsThemForTheNextCaller() {
        var machine = consuming()
        #expect(machine.deliveriesRequested(request(1), waiter: "a", now: start) == .wait)
        machine.deliveryArrived(delivery(1))
        #expect(machine.waiterCancelled(id: 1) == .cancel("a"))
        #expect(machine.serveWaiters().isEmpty)
        #expect(machine.deadlinesPassed(now: start + .seconds(5)).isEmpty)
        #expect(machine.deliveriesRequested(request(2), waiter: "b", now: start) == .resume("b", [delivery(1)]))
    }

    /// The reverse order: served first, then the cancel arrives and finds nothing to resume.
    @Test func aWaiterServedBeforeItsCancelIsResumedOnlyOnce() {
        var machine = consuming()
        _ = machine.deliveriesRequested(request(1), waiter: "a", now: start)
        machine.deliveryArrived(delivery(1))
        #expect(machine.serveWaiters() == [.resume("a", [delivery(1)])])
        #expect(machine.waiterCancelled(id: 1) == nil)
    }

    // MARK: basic.cancel, channel and connection loss

    @Test func theBrokersCancelHandsOutBufferedDeliveriesThenFails() {
        var machine = consuming(1, 2)
        #expect(machine.brokerCancelled(consumerTag: "ctag", noWait: false) == .sendCancelOk)
        #expect(machine.activeTag == nil)
        #expect(
            machine.deliveriesRequested(request(1), waiter: "a", now: start)
                == .resume("a", [delivery(1), delivery(2)]))
        // Deliveries of a cancelled consumer can still be acked.
        #expect(machine.acknowledge(.ack(tag: 2, multiple: true)) == .send(.ack(tag: 2, multiple: true)))
        let after = machine.deliveriesRequested(request(2), waiter: "b", now: start)
        guard case .fail("b", let error) = after else {
            Issue.record("expected consumerCancelled, got \(after)")
            return
        }
        #expect(error.code == .consumerCancelled)
        #expect(error.detail?.contains("ctag") == true)
    }

    @Test func theBrokersCancelFailsWaitersOnceTheBufferIsEmpty() {
        var machine = consuming()
        _ = machine.deliveriesRequested(request(1), waiter: "a", now: start)
        _ = machine.deliveriesRequested(request(2), waiter: "b", now: start)
        #expect(machine.brokerCancelled(consumerTag: "ctag", noWait: true) == .none)
        let actions = machine.serveWaiters()
        #expect(actions.count == 2)
        for (action, waiter) in zip(actions, ["a", "b"]) {
            guard case .fail(waiter, let error) = action else {
                Issue.record("expected \(waiter) to fail, got \(action)")
                continue
            }
            #expect(error.code == .consumerCancelled)
        }
        #expect(machine.earliestDeadline == nil)
    }

    @Test func aLostChannelDropsTheBufferFailsWaitersAndRefusesAcks() {
        var machine = consuming(1, 2)
        _ = machine.deliveriesRequested(request(1, max: 1), waiter: "a", now: start)
        machine.channelLost(channelClosed)
        #expect(machine.buffered.isEmpty)
        // The tags died with the channel: an ack must fail here, never reach the broker.
        #expect(machine.acknowledge(.ack(tag: 2, multiple: false)) == .fail(channelClosed))
        #expect(machine.acknowledge(.nack(tag: 2, multiple: false, requeue: true)) == .fail(channelClosed))
        #expect(machine.acknowledge(.reject(tag: 2, requeue: true)) == .fail(channelClosed))
        #expect(machine.deliveriesRequested(request(2), waiter: "b", now: start) == .fail("b", channelClosed))
        // A new consume on the reopened channel works again.
        machine.consumeStarted(tag: "again")
        #expect(machine.acknowledge(.ack(tag: 1, multiple: false)) == .send(.ack(tag: 1, multiple: false)))
    }

    @Test func aLostChannelFailsRegisteredWaitersAtTheNextServe() {
        var machine = consuming()
        _ = machine.deliveriesRequested(request(1), waiter: "a", now: start)
        machine.channelLost(channelClosed)
        #expect(machine.serveWaiters() == [.fail("a", channelClosed)])
    }

    @Test func aLostConnectionFailsEveryWaiterAndEveryLaterCallWithTheFirstError() {
        var machine = consuming()
        _ = machine.deliveriesRequested(request(1), waiter: "a", now: start)
        _ = machine.deliveriesRequested(request(2), waiter: "b", now: start)
        machine.deliveryArrived(delivery(1))
        #expect(machine.connectionLost(connectionLost) == [.fail("a", connectionLost), .fail("b", connectionLost)])
        #expect(machine.buffered.isEmpty)
        #expect(machine.earliestDeadline == nil)
        let closed = AMQPError(.closed, operation: "close")
        #expect(machine.connectionLost(closed).isEmpty)
        #expect(machine.deliveriesRequested(request(3), waiter: "c", now: start) == .fail("c", connectionLost))
        #expect(machine.acknowledge(.ack(tag: 1, multiple: false)) == .fail(connectionLost))
        #expect(machine.brokerCancelled(consumerTag: "ctag", noWait: false) == .none)
        #expect(machine.deliveriesRequested(request(4), waiter: "d", now: start) == .fail("d", connectionLost))
    }

    // MARK: Acknowledgement order

    /// The machine decides each acknowledgement when it is asked, and never holds one back: the
    /// connection sends them in the order its jobs ask (see `ConnectionThreadTests` for the
    /// order of the jobs).
    @Test func acknowledgementsAreSentInTheOrderTheyAreAskedFor() {
        let machine = consuming(1, 2, 3)
        let asked: [Machine.Acknowledgement] = [
            .ack(tag: 2, multiple: false), .nack(tag: 1, multiple: false, requeue: true),
            .ack(tag: 3, multiple: true), .reject(tag: 4, requeue: false),
        ]
        #expect(asked.map(machine.acknowledge) == asked.map { .send($0) })
    }
}
