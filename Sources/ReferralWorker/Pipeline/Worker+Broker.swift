import AMQP
import Logging
import ReferralCore
import ReferralStore

/// The broker side: dead letters and their parking, and publishing the outbox.
extension Worker {
    /// Publishes bad input to the dead-letter exchange, body unchanged, and acks each original
    /// once the broker confirmed its copy (or its parked copy).
    func deadLetter(_ items: [(Delivery, BadInput)]) async throws {
        guard let publisher else { throw NotConnected(what: "the broker") }
        // The producer's headers and properties travel with the body, so the dead letter is the
        // message as it arrived plus our diagnosis (ours win on a name clash).
        let messages = items.map { delivery, reason in
            OutgoingMessage(
                exchange: settings.deadLetterExchange, routingKey: delivery.routingKey, body: delivery.body,
                headers: delivery.headers.merging([
                    "x-referrald-error": .string(reason.code.rawValue),
                    "x-referrald-detail": .string(reason.detail),
                    "x-referrald-original-exchange": .string(delivery.exchange),
                    "x-referrald-original-routing-key": .string(delivery.routingKey),
                ]) { _, ours in ours },
                messageId: delivery.messageId, contentType: delivery.contentType,
                persistent: true, mandatory: true, timestamp: delivery.timestamp)
        }
        let outcomes = try await publisher.publish(messages)
        var refused: [(Delivery, BadInput, OutgoingMessage, PublishOutcome)] = []
        for (((delivery, reason), message), outcome) in zip(zip(items, messages), outcomes) {
            guard outcome == .confirmed else {
                refused.append((delivery, reason, message, outcome))
                continue
            }
            metrics.deadLettered(code: reason.code.rawValue, routingKey: delivery.routingKey)
            logger.notice(
                "dead-lettered",
                metadata: [
                    "dlq.error": "\(reason.code.rawValue)", "dlq.detail": "\(reason.detail)",
                    "amqp.routing_key": "\(delivery.routingKey)", "amqp.message_id": "\(delivery.messageId ?? "-")",
                ])
            try await intake.ackNow(delivery, generation: generation)
        }
        if !refused.isEmpty { try await park(refused) }
    }

    /// Dead letters the broker refused (returned: no queue bound to the DLX, the DLQ deleted;
    /// nacked: the DLQ full with `reject-publish`). Retrying them in the pipeline held back the
    /// valid events of the batch, and requeueing them raised their delivery count until the
    /// broker dropped them, at 20, into that same broken exchange. So each is published to the
    /// parked queue through the default exchange (nothing to unbind there), and its original is
    /// acked once the broker confirmed the copy; `retryParked` moves it on later. Only when the
    /// parked queue refuses it too does the error end the loop, with the original still unacked.
    func park(_ refused: [(Delivery, BadInput, OutgoingMessage, PublishOutcome)]) async throws {
        guard let publisher else { throw NotConnected(what: "the broker") }
        let copies = refused.map { _, _, message, outcome in
            var copy = message
            copy.exchange = ""
            copy.routingKey = settings.parkedQueue
            copy.headers["x-referrald-parked"] = .string("dead letter \(outcome) by the broker")
            return copy
        }
        let outcomes = try await publisher.publish(copies)
        for ((delivery, reason, _, refusal), outcome) in zip(refused, outcomes) {
            guard outcome == .confirmed else {
                throw DeadLetterError(outcome: refusal, code: reason.code.rawValue)
            }
            metrics.parked(code: reason.code.rawValue)
            logger.error(
                "dead letter refused by the broker; parked",
                metadata: [
                    "dlq.error": "\(reason.code.rawValue)", "amqp.outcome": "\(refusal)",
                    "amqp.queue": "\(settings.parkedQueue)",
                    "amqp.routing_key": "\(delivery.routingKey)", "amqp.message_id": "\(delivery.messageId ?? "-")",
                ])
            try await intake.ackNow(delivery, generation: generation)
        }
        if parkedRetryDue == nil { parkedRetryDue = clock.now() + .seconds(5) }
    }

    /// A failing look at the parked queue (not declared yet on a broker whose topology predates
    /// it, a refused permission) must not take the pipeline down with it: valid events go on.
    func retryParkedLogged() async {
        do {
            try await retryParked()
        } catch {
            logger.warning(
                "parked queue not reachable; looked at again in a minute",
                metadata: ["amqp.queue": "\(settings.parkedQueue)", "error": "\(error)"])
            parkedRetryDue = clock.now() + .seconds(60)
        }
    }

    /// Moves parked dead letters to the dead-letter exchange, up to 256 a round, acked in the
    /// parked queue once the broker confirmed them in the DLX (the round's batch in one ack,
    /// `QueueTransfer.settle`). One the DLX still refuses is parked again (a new copy, then the
    /// ack) rather than requeued, which would raise its delivery count; only one the parked
    /// queue refuses too is requeued. The rounds then back off up to 5 minutes. Any instance
    /// may move any parked message: the parked queue is shared.
    func retryParked() async throws {
        guard let publisher else { return }
        let reader = try await settings.connectAMQP(name: "\(instanceName) parked", logger: logger)
        defer { Task { await reader.close() } }
        let waiting = try await reader.declareQueue(settings.parkedQueue, durable: true, passive: true).messageCount
        metrics.parked(waiting: Int64(waiting))
        guard waiting > 0 else {
            // Looked at once a minute: another instance, or this one before a crash, may park.
            parkedRetryDue = clock.now() + .seconds(60)
            parkedBackoff.reset()
            return
        }
        try await reader.consume(queue: settings.parkedQueue, prefetch: UInt16(min(waiting, 256)))
        let batch = try await reader.nextDeliveries(max: Int(min(waiting, 256)), wait: .seconds(2))
        // Names the mover on each copy, so that an operator (or the fault suite) reading the DLQ
        // can tell a copy moved twice from one dead-lettered twice.
        let movedBy = "from \(settings.parkedQueue) by \(instanceName) lane \(pipeline) at \(clock.now())"
        let toDLX = batch.map { d in
            let key: String =
                if case .string(let k)? = d.headers["x-referrald-original-routing-key"] { k } else { d.routingKey }
            return OutgoingMessage(
                exchange: settings.deadLetterExchange, routingKey: key, body: d.body,
                headers: d.headers.filter { $0.key != "x-referrald-parked" && $0.key != "x-delivery-count" }
                    .merging(["x-referrald-moved": .string(movedBy)]) { $1 },
                messageId: d.messageId, contentType: d.contentType, persistent: true, mandatory: true,
                timestamp: d.timestamp)
        }
        let outcomes = try await publisher.publish(toDLX)
        var stillRefused: [Delivery] = []
        for ((d, message), outcome) in zip(zip(batch, toDLX), outcomes) {
            if outcome == .confirmed {
                let code: String = if case .string(let c)? = d.headers["x-referrald-error"] { c } else { "unknown" }
                metrics.deadLettered(code: code, routingKey: message.routingKey)
            } else {
                stillRefused.append(d)
            }
        }
        var unplaced: [Delivery] = []
        if !stillRefused.isEmpty {
            let again = try await publisher.publish(stillRefused.map { .copy(of: $0, to: settings.parkedQueue) })
            unplaced = zip(stillRefused, again).filter { $0.1 != .confirmed }.map(\.0)
        }
        // Settled in as few frames as possible: the reader closes right after (QueueTransfer.settle).
        try await QueueTransfer.settle(batch, requeue: unplaced, on: reader)
        if !stillRefused.isEmpty {
            logger.warning(
                "parked dead letters still refused by the dead-letter exchange; retried later",
                metadata: ["parked.refused": "\(stillRefused.count)", "amqp.dlx": "\(settings.deadLetterExchange)"])
            let wait = parkedBackoff.next(using: &rng)
            parkedRetryDue = clock.now() + .seconds(5) + Span(microseconds: Int64(wait.inSeconds * 1_000_000))
        } else {
            logger.notice(
                "parked dead letters moved to the dead-letter exchange", metadata: ["parked.moved": "\(batch.count)"])
            parkedBackoff.reset()
            // More may wait (another instance's, or past this round's 256): look again soon.
            parkedRetryDue = clock.now() + .seconds(1)
        }
    }

    /// Publishes committed outbox rows leased to this worker, with confirms. The confirmed ones
    /// are deleted by the next transaction. A row that the broker did not confirm
    /// keeps its lease only until it expires, then goes out again with the same CloudEvents id:
    /// downstream deduplicates by id, so a repeat is harmless and a loss is not.
    /// Returns false when the broker nacked some rows.
    @discardableResult
    func publish(_ rows: [OutboxRow]) async throws -> Bool {
        guard let publisher, !rows.isEmpty else { return true }
        let messages = rows.map {
            OutgoingMessage(
                exchange: settings.eventsExchange, routingKey: $0.type, body: $0.body, headers: [:],
                messageId: $0.eventId, contentType: "application/cloudevents+json",
                persistent: true, mandatory: false)
        }
        let outcomes: [PublishOutcome]
        do {
            outcomes = try await publisher.publish(messages)
        } catch {
            // Not waiting for the lease to end: the next relay pass retries them at once.
            _ = try? await db?.releaseLease(seqs: rows.map(\.seq))
            throw error
        }
        failpoint.hit(.afterPublish)
        let confirmed = zip(rows, outcomes).filter { $0.1 != .nacked }.map(\.0.seq)
        published += confirmed
        if confirmed.count < rows.count {
            logger.warning(
                "broker nacked outbox rows; retried after the lease",
                metadata: ["outbox.nacked": "\(rows.count - confirmed.count)"])
            return false
        }
        return true
    }

    /// Waits for the last batch's publication; its error (the broker went away) is this call's.
    func settlePublication() async throws {
        guard let task = publication else { return }
        publication = nil
        try await task.value
    }

    /// Deletes the confirmed rows in a statement of their own, when no transaction is
    /// coming to carry them (idle, relay, shutdown).
    func flushPublished() async throws {
        guard let db, !published.isEmpty else { return }
        let done = published
        try await db.removePublished(seqs: done)
        published.removeFirst(done.count)
    }

    /// Publishes rows nobody holds a lease on: left by a crashed instance, nacked by the broker,
    /// or enqueued by `referrald enroll`.
    func relayOutbox() async throws {
        guard let db else { return }
        lastRelay = clock.now()
        try await settlePublication()
        try await flushPublished()
        while true {
            let rows = try await db.leaseOutbox(limit: 512, leaseSeconds: 60)
            if rows.isEmpty { return }
            let allConfirmed = try await publish(rows)
            try await flushPublished()
            if !allConfirmed || rows.count < 512 { return }
        }
    }
}
