import AMQP
import Logging
import ReferralCore

/// The process's one consumer of the inbox, shared by its lanes (REFERRALD_WORKERS).
///
/// Each lane applies a batch in a transaction of its own, so two lanes keep both cores busy:
/// one lane's decisions run while the other waits for PostgreSQL. Lanes that each consumed on
/// a channel of their own were dealt consecutive messages by the broker: their batches held the
/// same stories, each lane waited on the story locks for the other's commit, and the lanes ran
/// one after the other. Here deliveries are read once, classified, and handed out by
/// `LaneSelection`, so lanes' batches share no key. Acks go through `AckLedger`, since lanes
/// finish out of delivery order.
public actor Intake {
    /// A delivery, classified, with the keys that decide which lane may take it.
    public struct Item: Sendable {
        var delivery: Delivery
        var classified: Result<InboundEvent, BadInput>
        var keys: [String]
        /// The consumer channel it came on: a tag means nothing on another channel.
        var generation: Int
    }

    private let settings: Settings
    private let logger: Logger
    private let name: String
    private var consumer: AMQPConnection?
    private var connecting: Task<AMQPConnection, any Error>?
    private var generation = 0
    /// Read and classified, not yet handed to a lane, in delivery order.
    private var waiting: [Item] = []
    /// What each lane is applying (by lane number).
    private var taken: [Int: [Item]] = [:]
    private var ledger = AckLedger()
    private var stories = StoryCodes()

    public init(settings: Settings, logger: Logger, name: String) {
        self.settings = settings
        self.logger = logger
        self.name = name
    }

    /// Opens the consumer if it is not open. Concurrent callers share one attempt.
    func connect() async throws {
        if consumer != nil { return }
        if let connecting {
            _ = try await connecting.value
            return
        }
        let settings = self.settings
        let logger = self.logger
        let name = self.name
        let attempt = Task {
            let c = try await settings.connectAMQP(name: "\(name) consumer", logger: logger)
            do {
                try await c.consume(queue: settings.inboxQueue, prefetch: UInt16(settings.prefetch))
            } catch {
                await c.close()
                throw error
            }
            return c
        }
        connecting = attempt
        defer { connecting = nil }
        let c = try await attempt.value
        consumer = c
        generation += 1
        logger.info("consuming", metadata: ["amqp.queue": "\(settings.inboxQueue)", "lanes": "\(settings.workers)"])
    }

    /// The lane's next batch: up to `max` items (`maxBytes` of bodies) that share no key with
    /// another lane's batch. Waits up to `wait` for deliveries when none can be taken; returns
    /// an empty batch when none came. The lane must `finish` or `giveBack` a batch before it
    /// asks for the next.
    /// Lanes after the first wait for a backlog (`LaneSelection.joins`).
    func next(lane: Int, max: Int, maxBytes: Int, wait: Duration) async throws -> [Item] {
        func take() -> [Item] {
            LaneSelection.joins(lane: lane, waiting: waiting.count, batchSize: max)
                ? select(lane: lane, max: max, maxBytes: maxBytes) : []
        }
        try await read(wait: .zero)
        let batch = take()
        if !batch.isEmpty { return batch }
        try await read(wait: wait)
        return take()
    }

    /// The lane settled its batch: acks what it committed (what was dead-lettered or requeued
    /// on its own left the batch then, `settledAlone`) and frees its keys. An ack the broker
    /// cannot take (the connection went away) is not the lane's failure: its events are
    /// committed, their redelivery on the next channel is a duplicate the inbox drops, and the
    /// next read reconnects.
    func finish(lane: Int) async {
        guard let items = taken.removeValue(forKey: lane), let first = items.first else { return }
        guard first.generation == generation, let consumer else { return }
        await ack(ledger.settle(acked: items.map(\.delivery.deliveryTag)), on: consumer)
    }

    /// Acks one delivery now, on its own: a dead letter's original once the broker confirmed the
    /// copy. Waiting for the batch's ack instead left it unacked for the whole transaction (and
    /// behind other lanes' batches): a channel lost meanwhile redelivered it, and it was
    /// dead-lettered twice.
    func ackNow(_ delivery: Delivery, generation: Int) async throws {
        guard generation == self.generation, let consumer else { return }
        try await consumer.ack(delivery.deliveryTag, multiple: false)
        await settledAlone(delivery.deliveryTag, on: consumer)
    }

    /// Requeues one delivery on its own (an event that failed alone, before its delivery limit).
    func requeue(_ delivery: Delivery, generation: Int) async throws {
        guard generation == self.generation, let consumer else { return }
        try await consumer.nack(delivery.deliveryTag, requeue: true)
        await settledAlone(delivery.deliveryTag, on: consumer)
    }

    /// A delivery the broker already had settled on its own: it may let the acked prefix grow,
    /// and it leaves its lane's batch. A batch given back after a later failure (the publisher
    /// lost mid-batch) otherwise took it back too: the dead letter already in the DLQ was
    /// published a second time (the clean-clone CI's dlq-deleted: 82 dead letters for 81
    /// hostile inputs), and a requeued event was applied by the next lane while the broker
    /// redelivered it.
    private func settledAlone(_ tag: UInt64, on consumer: AMQPConnection) async {
        // The ack above suspended this actor: a read that failed meanwhile replaced the channel
        // and its ledger. Tags restart on the new channel, so this tag marked settled there
        // would let a later `multiple` ack cover a new delivery with the same number before it
        // was applied (lost in a crash).
        guard self.consumer === consumer else { return }
        for (lane, items) in taken where items.contains(where: { $0.delivery.deliveryTag == tag }) {
            taken[lane] = items.filter { $0.delivery.deliveryTag != tag }
        }
        await ack(ledger.settle(acked: [UInt64](), individually: [tag]), on: consumer)
    }

    /// Targets leave this actor in the order `ledger` computed them: `AMQPConnection.ack` queues
    /// its job to the connection thread before this actor can re-enter, so another lane's higher
    /// target cannot overtake this one and leave it unknown to the broker (406).
    private func ack(_ target: UInt64?, on consumer: AMQPConnection) async {
        guard let target else { return }
        do {
            try await consumer.ack(target, multiple: true)
        } catch {
            logger.warning("ack failed; the consumer reconnects", metadata: ["error": "\(error)"])
            await drop(consumer)
        }
    }

    /// The lane could not settle its batch (the database or its publisher went away): the
    /// deliveries go back, ahead of everything read since, for the next lane that can take them.
    func giveBack(lane: Int) {
        guard let items = taken.removeValue(forKey: lane), let first = items.first, first.generation == generation
        else { return }
        waiting = (items + waiting).sorted { $0.delivery.deliveryTag < $1.delivery.deliveryTag }
    }

    func close() async {
        if let consumer { await drop(consumer) }
    }

    // MARK: private

    private func read(wait: Duration) async throws {
        try await connect()
        guard let consumer else { return }
        let deliveries: [Delivery]
        do {
            deliveries = try await consumer.nextDeliveries(max: settings.prefetch, wait: wait)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            await drop(consumer)
            throw error
        }
        // Another lane may have reconnected while this one waited: these tags are stale, and the
        // broker redelivers them on the new channel.
        guard self.consumer === consumer, !deliveries.isEmpty else { return }
        let limits = InputLimits(maxBodyBytes: settings.maxBodyBytes)
        let items = deliveries.map { d in
            let classified = classify(body: d.body, limits: limits)
            let keys = (try? classified.get()).map { DispatchKeys.of($0, stories: &stories) } ?? []
            return Item(delivery: d, classified: classified, keys: keys, generation: generation)
        }
        ledger.received(deliveries.map(\.deliveryTag))
        // Two lanes' reads can resume in either order: keep delivery order.
        let inOrder = waiting.last.map { $0.delivery.deliveryTag < items[0].delivery.deliveryTag } ?? true
        waiting += items
        if !inOrder { waiting.sort { $0.delivery.deliveryTag < $1.delivery.deliveryTag } }
    }

    private func select(lane: Int, max: Int, maxBytes: Int) -> [Item] {
        var blocked = Set<String>()
        for (other, items) in taken where other != lane { for item in items { blocked.formUnion(item.keys) } }
        let picked = LaneSelection.take(
            waiting.map { .init(keys: $0.keys, bytes: $0.delivery.body.count) },
            blocked: blocked, max: max, maxBytes: maxBytes)
        if picked.isEmpty { return [] }
        let batch = picked.map { waiting[$0] }
        let pickedSet = Set(picked)
        waiting = waiting.indices.filter { !pickedSet.contains($0) }.map { waiting[$0] }
        taken[lane] = batch
        return batch
    }

    /// The channel is gone: everything it delivered comes again on the next, so nothing read
    /// from it is kept (a lane applying some of it commits duplicates the inbox drops).
    private func drop(_ connection: AMQPConnection) async {
        guard consumer === connection else { return }
        consumer = nil
        waiting = []
        ledger = AckLedger()
        await connection.close()
    }
}
