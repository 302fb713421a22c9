/// The consumer side of channel 1: the consumer's state, the deliveries buffered for it, and the
/// callers waiting in `nextDeliveries`. A value type without IO: each input returns the actions
/// the connection thread then carries out (resume or fail a waiter, send an ack or a
/// basic.cancel-ok), so every transition is tested without a broker.
///
/// `Waiter` is what the connection resumes (a continuation); the tests use plain values.
struct ConsumerStateMachine<Waiter> {
    enum State {
        /// No consume yet: `nextDeliveries` is a usage error.
        case idle
        case active(tag: String)
        /// basic.cancel from the broker: the channel is fine, buffered deliveries can still be
        /// handed out and acked, then `nextDeliveries` throws.
        case cancelled(AMQPError)
        /// The channel closed under the consumer: its deliveries were requeued, their tags are
        /// meaningless on the reopened channel, so acks must fail rather than reach the broker
        /// (where an unknown tag closes the channel again with 406).
        case lost(AMQPError)
        /// The connection is gone; the first error is what every later call reports.
        case failed(AMQPError)
    }

    enum Action {
        case resume(Waiter, [Delivery])
        case fail(Waiter, AMQPError)
        /// The waiter's task was cancelled: it throws `CancellationError`.
        case cancel(Waiter)
        /// The waiter was registered; a delivery, its deadline, its cancellation or a failure
        /// resumes it later.
        case wait
    }

    enum Acknowledgement: Equatable {
        case ack(tag: UInt64, multiple: Bool)
        case nack(tag: UInt64, multiple: Bool, requeue: Bool)
        case reject(tag: UInt64, requeue: Bool)
    }

    enum AcknowledgementAction: Equatable {
        case send(Acknowledgement)
        case fail(AMQPError)
    }

    enum BrokerCancelAction: Equatable {
        case sendCancelOk
        case none
    }

    struct Request {
        var id: UInt64
        var max: Int
        var maxBytes: Int
        var wait: Duration
    }

    private struct PendingWaiter {
        var request: Request
        var deadline: ContinuousClock.Instant
        var waiter: Waiter
    }

    private(set) var state: State = .idle
    /// Bounded by the prefetch: the broker sends at most that many unacked deliveries.
    private(set) var buffered: [Delivery] = []
    private var waiters: [PendingWaiter] = []
    /// Cancellation can overtake the waiter it cancels (both are jobs; the cancel handler may
    /// run first), so a cancelled id is remembered until its waiter shows up.
    private var cancelledWaiters: Set<UInt64> = []
    private var highestWaiterID: UInt64 = 0

    var activeTag: String? {
        if case .active(let tag) = state { return tag }
        return nil
    }

    var earliestDeadline: ContinuousClock.Instant? { waiters.map(\.deadline).min() }

    /// Whether the connection should read the socket before `deliveriesRequested`, so that the
    /// batch is as full as it can be. Only for a request that will be served from the buffer.
    func wantsFramesBeforeServing(_ request: Request) -> Bool {
        guard !cancelledWaiters.contains(request.id), buffered.count < request.max else { return false }
        switch state {
        case .active, .cancelled: return true
        case .idle, .lost, .failed: return false
        }
    }

    // MARK: Consumer lifecycle

    mutating func consumeStarted(tag: String) {
        state = .active(tag: tag)
        buffered.removeAll()
    }

    mutating func deliveryArrived(_ delivery: Delivery) {
        buffered.append(delivery)
    }

    /// basic.cancel: the consumer stops, what it buffered is still handed out (`serveWaiters`
    /// fails the waiters once the buffer is empty).
    mutating func brokerCancelled(consumerTag: String, noWait: Bool) -> BrokerCancelAction {
        if case .failed = state { return .none }
        state = .cancelled(
            AMQPError(
                .consumerCancelled, operation: "consume",
                detail: "the broker cancelled consumer \(consumerTag) (queue deleted or unavailable)"))
        return noWait ? .none : .sendCancelOk
    }

    /// The broker closed the channel: the buffer's tags died with it. Waiters are failed by the
    /// next `serveWaiters`, as for a cancel.
    mutating func channelLost(_ error: AMQPError) {
        switch state {
        case .active, .cancelled:
            state = .lost(error)
            buffered.removeAll()
        case .idle, .lost, .failed:
            break
        }
    }

    /// Every waiter fails with `error`; every later request and ack fails with the first error.
    mutating func connectionLost(_ error: AMQPError) -> [Action] {
        let failed = waiters.map { Action.fail($0.waiter, error) }
        waiters.removeAll()
        buffered.removeAll()
        if case .failed = state {} else { state = .failed(error) }
        return failed
    }

    // MARK: Waiters

    mutating func deliveriesRequested(_ request: Request, waiter: Waiter, now: ContinuousClock.Instant) -> Action {
        highestWaiterID = Swift.max(highestWaiterID, request.id)
        if cancelledWaiters.remove(request.id) != nil { return .cancel(waiter) }
        switch state {
        case .failed(let error), .lost(let error):
            return .fail(waiter, error)
        case .idle:
            return .fail(
                waiter,
                AMQPError(.invalidUsage, operation: "nextDeliveries", detail: "call consume(queue:prefetch:) first"))
        case .active, .cancelled:
            break
        }
        if !buffered.isEmpty { return .resume(waiter, take(max: request.max, maxBytes: request.maxBytes)) }
        if case .cancelled(let error) = state { return .fail(waiter, error) }
        guard request.wait > .zero else { return .resume(waiter, []) }
        waiters.append(PendingWaiter(request: request, deadline: now + request.wait, waiter: waiter))
        return .wait
    }

    mutating func waiterCancelled(id: UInt64) -> Action? {
        if let index = waiters.firstIndex(where: { $0.request.id == id }) {
            return .cancel(waiters.remove(at: index).waiter)
        }
        if id > highestWaiterID { cancelledWaiters.insert(id) }
        // Otherwise the waiter has already been served: nothing to cancel, nothing to remember.
        return nil
    }

    /// Hands buffered deliveries to waiting callers, oldest caller first; once the buffer of a
    /// cancelled or lost consumer is empty, fails the rest.
    mutating func serveWaiters() -> [Action] {
        var actions: [Action] = []
        while !waiters.isEmpty, !buffered.isEmpty {
            let pending = waiters.removeFirst()
            actions.append(.resume(pending.waiter, take(max: pending.request.max, maxBytes: pending.request.maxBytes)))
        }
        guard buffered.isEmpty, !waiters.isEmpty else { return actions }
        switch state {
        case .cancelled(let error), .lost(let error), .failed(let error):
            actions += waiters.map { .fail($0.waiter, error) }
            waiters.removeAll()
        case .idle, .active:
            break
        }
        return actions
    }

    /// Waiters whose wait ran out get an empty batch.
    mutating func deadlinesPassed(now: ContinuousClock.Instant) -> [Action] {
        var actions: [Action] = []
        waiters.removeAll { pending in
            guard pending.deadline <= now else { return false }
            actions.append(.resume(pending.waiter, []))
            return true
        }
        return actions
    }

    /// The oldest deliveries, up to `max` of them and `maxBytes` of bodies: a batch's memory
    /// downstream (its parsed events, the inbox statement's parameter, libpq's send buffer) is a
    /// few times its bodies, so it is bounded by bytes, not only by count. At least one is taken,
    /// so a body larger than the cap still goes, alone.
    private mutating func take(max: Int, maxBytes: Int) -> [Delivery] {
        var count = 0
        var bytes = 0
        while count < min(max, buffered.count) {
            let size = buffered[count].body.count
            if count > 0 && size > maxBytes - bytes { break }
            bytes += size
            count += 1
        }
        let taken = Array(buffered.prefix(count))
        buffered.removeFirst(count)
        return taken
    }

    // MARK: Acknowledgements

    /// Decides at once, in the order acknowledgements are asked for: the connection thread runs
    /// its jobs one at a time in the order they were submitted and sends an allowed one before
    /// it takes the next job, so acks reach the broker in submission order.
    func acknowledge(_ acknowledgement: Acknowledgement) -> AcknowledgementAction {
        switch state {
        case .failed(let error), .lost(let error):
            return .fail(error)
        case .idle, .active, .cancelled:
            return .send(acknowledgement)
        }
    }
}

extension ConsumerStateMachine.Action: Equatable where Waiter: Equatable {}
