/// The publishing side of channel 1: batches waiting for their confirms (numbered by the
/// `ConfirmTracker`), batches held while the broker blocks the connection, and their callers. A
/// value type without IO: each input returns the actions the connection thread then carries out
/// (send a batch, complete or fail a caller), so every transition is tested without a broker.
///
/// `Waiter` is what the connection resumes (a continuation); the tests use plain values.
struct PublisherStateMachine<Waiter> {
    enum Action {
        /// Write these messages, in order, as the channel's next publishes. Their caller is
        /// registered already: a write that fails is a `connectionLost`, which fails it.
        case send([OutgoingMessage])
        /// The broker blocks the connection: the batch waits for connection.unblocked.
        case hold
        /// One outcome per message, in publish order.
        case complete(Waiter, [PublishOutcome])
        case fail(Waiter, AMQPError)
    }

    private struct ConfirmWait {
        var waiter: Waiter
        var deadline: ContinuousClock.Instant
    }

    private struct HeldPublish {
        var messages: [OutgoingMessage]
        var waiter: Waiter
        var deadline: ContinuousClock.Instant
    }

    private var tracker = ConfirmTracker()
    private var confirmWaits: [ConfirmTracker.BatchID: ConfirmWait] = [:]
    private var held: [HeldPublish] = []
    /// connection.blocked: while the broker blocks the connection (memory or disk alarm) it stops
    /// reading our socket, so writing a batch would block the connection thread in send() with no
    /// timeout, and heartbeats and every other caller with it.
    private(set) var isBlocked = false
    /// The connection is gone; the first error is what every later publish reports.
    private(set) var failure: AMQPError?

    var earliestDeadline: ContinuousClock.Instant? {
        (confirmWaits.values.map(\.deadline) + held.map(\.deadline)).min()
    }

    mutating func publishRequested(
        _ messages: [OutgoingMessage], deadline: ContinuousClock.Instant, waiter: Waiter
    ) -> Action {
        if let failure { return .fail(waiter, failure) }
        guard !messages.isEmpty else { return .complete(waiter, []) }
        guard !isBlocked else {
            held.append(HeldPublish(messages: messages, waiter: waiter, deadline: deadline))
            return .hold
        }
        return register(messages, deadline: deadline, waiter: waiter)
    }

    private mutating func register(
        _ messages: [OutgoingMessage], deadline: ContinuousClock.Instant, waiter: Waiter
    ) -> Action {
        let batch = tracker.register(messages.map(ConfirmTracker.ReturnKey.init))
        confirmWaits[batch] = ConfirmWait(waiter: waiter, deadline: deadline)
        return .send(messages)
    }

    /// basic.ack (`ack`) or basic.nack for `tag`, and for every earlier one when `multiple`.
    mutating func confirmed(tag: UInt64, multiple: Bool, ack: Bool) -> [Action] {
        tracker.settle(tag: tag, multiple: multiple, ack: ack).compactMap { batch in
            let outcomes = tracker.takeOutcomes(batch)
            return confirmWaits.removeValue(forKey: batch).map { .complete($0.waiter, outcomes) }
        }
    }

    /// basic.return, which comes before its message's confirm. False when no unconfirmed message
    /// matches (e.g. its batch already timed out).
    mutating func returned(_ key: ConfirmTracker.ReturnKey, replyCode: Int, replyText: String) -> Bool {
        tracker.returned(key, replyCode: replyCode, replyText: replyText)
    }

    mutating func connectionBlocked() {
        isBlocked = true
    }

    /// The held batches go out now, in the order they were asked for.
    mutating func connectionUnblocked() -> [Action] {
        isBlocked = false
        let released = held
        held.removeAll()
        return released.map { register($0.messages, deadline: $0.deadline, waiter: $0.waiter) }
    }

    /// Batches still unconfirmed at their deadline fail (their late confirms are ignored), and
    /// so do batches still held.
    mutating func deadlinesPassed(now: ContinuousClock.Instant) -> [Action] {
        var actions: [Action] = []
        let expired = confirmWaits.filter { $0.value.deadline <= now }.sorted { $0.key < $1.key }
        for (batch, wait) in expired {
            tracker.abandon(batch)
            confirmWaits[batch] = nil
            actions.append(
                .fail(
                    wait.waiter,
                    AMQPError(
                        .timeout, operation: "wait for publisher confirms",
                        detail: "not every message was confirmed before the deadline; republish them")))
        }
        held.removeAll { publish in
            guard publish.deadline <= now else { return false }
            actions.append(
                .fail(
                    publish.waiter,
                    AMQPError(
                        .timeout, operation: "publish",
                        detail: "the broker blocked this connection (connection.blocked) until the deadline")))
            return true
        }
        return actions
    }

    /// The broker closed the channel: confirm numbering restarts on the reopened one, so the
    /// unconfirmed batches never will be. Held batches were never sent and stay held.
    mutating func channelLost(_ error: AMQPError) -> [Action] {
        tracker.reset().sorted().compactMap { batch in
            confirmWaits.removeValue(forKey: batch).map { .fail($0.waiter, error) }
        }
    }

    /// Every unconfirmed and every held batch fails with `error`.
    mutating func connectionLost(_ error: AMQPError) -> [Action] {
        var actions = confirmWaits.sorted { $0.key < $1.key }.map { Action.fail($0.value.waiter, error) }
        actions += held.map { .fail($0.waiter, error) }
        confirmWaits.removeAll()
        held.removeAll()
        _ = tracker.reset()
        failure = failure ?? error
        return actions
    }
}

extension ConfirmTracker.ReturnKey {
    init(_ message: OutgoingMessage) {
        self.init(
            exchange: message.exchange, routingKey: message.routingKey, messageId: message.messageId,
            body: message.body)
    }
}

extension PublisherStateMachine.Action: Equatable where Waiter: Equatable {}
