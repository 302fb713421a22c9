import AMQP
import Logging
import Postgres
import ReferralCore
import ReferralStore
import ServiceLifecycle

/// The consume loop: inbox → classify → dead-letter bad input → deduplicate and apply in one
/// transaction that also writes the outbox → ack, and publish the batch's outbox rows with
/// confirms from memory while the next batch is applied → delete them in the next transaction.
///
/// A crash at any point is safe: before the commit nothing happened and the broker redelivers;
/// after it, the inbox row makes the redelivery a no-op and the outbox row, once its short lease
/// ends, is published by a relay pass (same CloudEvents id). Dead letters are confirmed before
/// their originals are acked, so a message is never in neither queue.
public actor Worker {
    let settings: Settings
    let programs: ProgramBook
    let logger: Logger
    let clock: any ReferralCore.Clock
    let instanceName: String
    let status: ServiceStatus
    let metrics: WorkerMetrics
    let effectCache: EffectCache

    private var consumer: AMQPConnection?
    private var publisher: AMQPConnection?
    private var db: PostgresConnection?
    private var rng = SystemRandomNumberGenerator()
    private var lastRelay = Instant(microseconds: 0)
    /// Outbox rows the broker confirmed that the database still holds. The next transaction
    /// deletes them (a batch's, or a statement of their own when idle): a commit of their own
    /// per batch was a third of the pipeline's commits. Lost in a crash, they are published
    /// again after their lease with the same CloudEvents id, which downstream deduplicates.
    private var published: [Int64] = []
    /// The publication of the last batch's outbox rows, running while the next batch is read
    /// and applied, so that waiting for the broker's confirms (a quorum queue replicates and
    /// syncs each message first) no longer holds up the pipeline. At most one runs: every
    /// other use of the publisher settles it first, which also keeps batches' events in order.
    private var publication: Task<Void, any Error>?
    private let failpoint = Failpoint.fromEnvironment()
    /// Current version of each program, registered at connect (a changed file makes a new one).
    private var versions: [String: Int] = [:]
    private var lastTimerScan = Instant(microseconds: 0)
    /// The last timer round was full: more are due, and the next loop pass fires another round.
    private var timersBehind = false
    private var lastBacklogSample = Instant(microseconds: 0)
    /// The broker objects were found once, at start. Reconnects do not check again: a quorum
    /// queue whose node is still recovering after a broker restart must be waited for (the
    /// reconnect back-off), not taken for a missing topology that ends the process.
    private var topologyVerified = false

    public init(settings: Settings, programs: ProgramBook, logger: Logger,
                clock: any ReferralCore.Clock = SystemClock(), instanceName: String = "referrald",
                status: ServiceStatus = ServiceStatus(), metrics: WorkerMetrics = WorkerMetrics(),
                effectCache: EffectCache = EffectCache()) {
        self.settings = settings
        self.programs = programs
        self.logger = logger
        self.clock = clock
        self.instanceName = instanceName
        self.status = status
        self.metrics = metrics
        self.effectCache = effectCache
    }

    /// Runs until the task is cancelled. Connection failures are retried with back-off; the
    /// loop only ends by cancellation or by a configuration problem no retry can fix.
    public func run() async throws {
        var backoff = Backoff()
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            do {
                try await connect()
                backoff.reset()
                try await consumeLoop()
            } catch is CancellationError {
                try? await settlePublication()
                try? await flushPublished()
                break
            } catch let error as SchemaError {
                throw error
            } catch let error as TopologyError {
                await disconnect()
                throw error
            } catch {
                logger.warning("worker loop failed; reconnecting", metadata: ["error": "\(error)"])
                status.failed(error)
                try? await settlePublication()
                await disconnect()
                try? await Task.sleep(for: backoff.next(using: &rng))
            }
        }
        try? await settlePublication()
        try? await flushPublished()
        await disconnect()
    }

    private func connect() async throws {
        if db == nil || publisher == nil || consumer == nil { status.connecting() }
        if db == nil {
            let connection = try await settings.connectPostgres(name: instanceName, logger: logger)
            effectCache.removeAll()
            try await connection.run { c in try Store.configureWorkerSession(c) }
            let version = try await Schema.currentVersion(connection)
            guard version >= Schema.latestVersion else {
                await connection.close()
                throw SchemaError(found: version, needed: Schema.latestVersion)
            }
            let programs = self.programs.programs
            versions = try await connection.transaction { c in try Store.registerPrograms(c, programs) }
            db = connection
            status.databaseConnected()
        }
        if publisher == nil {
            let p = try await settings.connectAMQP(name: "\(instanceName) publisher", logger: logger)
            if !topologyVerified {
                do {
                    try await Topology(settings: settings).verify(on: p)
                } catch {
                    await p.close()
                    throw error
                }
                topologyVerified = true
            }
            try await p.enableConfirms()
            publisher = p
        }
        if consumer == nil {
            let c = try await settings.connectAMQP(name: "\(instanceName) consumer", logger: logger)
            try await c.consume(queue: settings.inboxQueue, prefetch: UInt16(settings.prefetch))
            consumer = c
            logger.info("consuming", metadata: ["amqp.queue": "\(settings.inboxQueue)"])
        }
        status.brokerConnected()
    }

    private func disconnect() async {
        await consumer?.close()
        await publisher?.close()
        await db?.close()
        consumer = nil
        publisher = nil
        db = nil
    }

    private func consumeLoop() async throws {
        guard let consumer else { return }
        // A graceful shutdown (SIGTERM) ends the loop between batches: the batch in hand is
        // finished, committed, published and acked first.
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            let batch = try await consumer.nextDeliveries(
                max: settings.batchSize, wait: .milliseconds(settings.batchWaitMilliseconds))
            if !batch.isEmpty { try await handle(batch) }
            // Timers and the relay run every second, busy or idle: holds end, and rows left by a
            // crashed instance or a broker outage go out while a backlog drains too.
            if timersBehind || clock.now() - lastTimerScan > .seconds(1) { try await fireTimers() }
            if clock.now() - lastRelay > .seconds(1) { try await relayOutbox() }
            // Idle: confirmed rows wait for no next batch.
            if batch.isEmpty {
                try await settlePublication()
                try await flushPublished()
            }
            if clock.now() - lastBacklogSample > .seconds(5) { try await sampleBacklog() }
            status.loopProgressed()
        }
    }

    // MARK: batch

    private func handle(_ deliveries: [Delivery]) async throws {
        guard let consumer else { return }
        let started = ContinuousClock.now
        var good: [(Delivery, InboundEvent)] = []
        var bad: [(Delivery, BadInput)] = []
        let limits = InputLimits(maxBodyBytes: settings.maxBodyBytes)
        for d in deliveries {
            switch classify(body: d.body, limits: limits) {
            case .success(let event): good.append((d, event))
            case .failure(let reason): bad.append((d, reason))
            }
        }
        var settled = Set<UInt64>()
        var outbox: [OutboxRow] = []
        if !bad.isEmpty {
            try await settlePublication()
            settled.formUnion(try await deadLetter(bad))
        }
        let applyStarted = ContinuousClock.now
        if !good.isEmpty {
            let applied = try await applyWithRetry(good)
            settled.formUnion(applied.settled)
            outbox = applied.outbox
        }
        // Committed: ack, and publish the outbox rows while the next batch is applied. One ack
        // with `multiple` for the rest; its tag must be one not yet settled: acking a tag twice
        // makes the broker close the channel (406 unknown delivery tag).
        if let tag = deliveries.last(where: { !settled.contains($0.deliveryTag) })?.deliveryTag {
            try await consumer.ack(tag, multiple: true)
        }
        let applyTime = ContinuousClock.now - applyStarted
        let settleStarted = ContinuousClock.now
        try await settlePublication()
        let settleTime = ContinuousClock.now - settleStarted
        if !outbox.isEmpty { publication = Task { try await self.publish(outbox) } }
        let acked = clock.now()
        for (_, event) in good { metrics.endToEnd(from: event.time, to: acked) }
        let duration = ContinuousClock.now - started
        metrics.batch(size: deliveries.count, duration: duration)
        // Where a slow pipeline's time goes: in the transaction and ack (apply.ms), or waiting
        // for the broker to confirm the previous batch's events (publish_wait.ms).
        logger.debug("batch handled", metadata: [
            "batch.size": "\(deliveries.count)", "batch.dead_lettered": "\(bad.count)", "outbox": "\(outbox.count)",
            "batch.ms": "\(duration.nanoseconds / 1_000_000)", "apply.ms": "\(applyTime.nanoseconds / 1_000_000)",
            "publish_wait.ms": "\(settleTime.nanoseconds / 1_000_000)"])
    }

    /// Transient database errors (server restart, lost connection, serialisation failure)
    /// retry the same deliveries on a fresh connection while the consumer keeps them unacked:
    /// they are neither acked nor dead-lettered while the database is away.
    /// Returns the deliveries it settled itself (dead-lettered or requeued one by one) and the
    /// committed outbox rows to publish.
    private func applyWithRetry(_ events: [(Delivery, InboundEvent)]) async throws
        -> (settled: Set<UInt64>, outbox: [OutboxRow]) {
        var backoff = Backoff()
        var conflicts = 0
        while true {
            do {
                return ([], try await apply(events.map { .init(event: $0.1, body: $0.0.body) }))
            } catch let error as PostgresError where error.isLockConflict && conflicts < 5 {
                // Another instance's transaction won a deadlock or a serialisation conflict: the
                // database is fine and so is the connection. Retry at once on it; reconnecting
                // and backing off as for an outage cost seconds per conflict.
                conflicts += 1
                metrics.lockConflict()
                logger.notice("batch lost a lock conflict; retried", metadata: [
                    "db.sqlstate": "\(error.sqlState ?? "-")", "batch.size": "\(events.count)", "attempt": "\(conflicts)"])
            } catch let error as PostgresError where error.isTransient {
                logger.warning("database unavailable; batch held for retry",
                               metadata: ["db.sqlstate": "\(error.sqlState ?? "-")", "batch.size": "\(events.count)"])
                status.databaseLost(error)
                await db?.close()
                db = nil
                try await Task.sleep(for: backoff.next(using: &rng))
                try await connect()
            } catch {
                return try await isolate(events, firstError: error)
            }
        }
    }

    /// A batch failed for a reason that is not transient. Apply its events one by one so that a
    /// single bad event cannot hold back the others; the one that fails again is dead-lettered
    /// once it has failed on REFERRALD_DELIVERY_LIMIT deliveries, and requeued before that.
    private func isolate(_ events: [(Delivery, InboundEvent)], firstError: any Error) async throws
        -> (settled: Set<UInt64>, outbox: [OutboxRow]) {
        guard let consumer else { return ([], []) }
        var settled = Set<UInt64>()
        var outbox: [OutboxRow] = []
        logger.warning("batch failed; isolating its events", metadata: ["error": "\(firstError)"])
        for (delivery, event) in events {
            do {
                outbox += try await apply([.init(event: event, body: delivery.body)])
            } catch let error as PostgresError where error.isTransient {
                throw error
            } catch {
                let deliveries = (delivery.deliveryCount ?? 0) + 1
                if deliveries >= settings.deliveryLimit {
                    settled.formUnion(try await deadLetter([(delivery, BadInput(code: .processingFailed,
                        detail: "\(event.type.rawValue): failed on \(deliveries) deliveries: \(error)"))]))
                } else {
                    logger.warning("event failed; requeued", metadata: [
                        "event.id": "\(event.id)", "event.type": "\(event.type.rawValue)", "error": "\(error)",
                        "amqp.delivery_count": "\(deliveries)"])
                    try await consumer.nack(delivery.deliveryTag, requeue: true)
                    metrics.consumed(type: event.type.rawValue, .failed)
                    settled.insert(delivery.deliveryTag)
                }
            }
        }
        return (settled, outbox)
    }

    private func context() -> Apply.Context {
        Apply.Context(programs: programs, versions: versions, policy: settings.lifecyclePolicy, now: clock.now(),
                      effects: effectCache)
    }

    /// Applies events in one transaction that also deletes the rows published since the last
    /// commit; returns the committed outbox rows to publish.
    private func apply(_ events: [Apply.Received]) async throws -> [OutboxRow] {
        guard let db else { throw NotConnected() }
        let context = self.context()
        let done = published
        let outcome = try await db.transaction { c in try Apply.batch(c, events: events, published: done, context: context) }
        published.removeFirst(done.count)
        status.databaseRoundTripSucceeded()
        failpoint.hit(.afterCommit)
        metrics.consumed(events, freshIndexes: outcome.freshIndexes)
        metrics.rewards(outcome.rewards)
        for e in outcome.published {
            logger.info("decided", metadata: ["event.type": "\(e.type.rawValue)", "event.id": "\(e.id)",
                                              "referral.id": "\(e.subject ?? "-")"])
        }
        for m in outcome.mismatches {
            guard case .rewardMismatch(let rewardId, let accountId, _, _) = m else { continue }
            logger.warning("billing applied a credit that differs from the reward; not marked applied",
                           metadata: ["effect": "\(m)", "reward.id": "\(rewardId)", "account.id": "\(accountId)"])
        }
        return outcome.outbox
    }

    /// Fires one round of due timers (hold ends, windows, retries, asks). When more are due,
    /// the loop alternates rounds with batches of deliveries: firing them all at once starved
    /// consumption while thousands fell due together (after a backlog dated in the past was
    /// drained, the latency phase of the benchmark saw p50 0.5 s and p99 1.2 s).
    private func fireTimers() async throws {
        guard let db else { return }
        lastTimerScan = clock.now()
        timersBehind = false
        do {
            let context = self.context()
            let claimed = try await db.transaction { c in try Apply.claimTimers(c, context: context, limit: 100) }
            status.databaseRoundTripSucceeded()
            let count = max(claimed.referrals.count, claimed.accounts.count)
            if count == 0 { return }
            let fired: (outbox: [OutboxRow], rewards: [Apply.RewardChange])
            do {
                fired = try await db.transaction { c in try Apply.timers(c, claimed: claimed, context: context) }
            } catch let error as PostgresError where error.sqlState == "40P01" || error.sqlState == "40001" {
                // Another instance's batch holds the same referrals. The transaction rolled back
                // and the timers fire again when their lease ends; rethrowing would drop both
                // broker connections and requeue the batch in hand, raising every message's
                // delivery count towards the broker's limit.
                logger.notice("timer scan lost a lock conflict; its timers fire again after their lease",
                              metadata: ["db.sqlstate": "\(error.sqlState ?? "-")"])
                return
            }
            metrics.rewards(fired.rewards)
            logger.debug("timers fired", metadata: ["timers.fired": "\(count)", "events": "\(fired.outbox.count)"])
            try await settlePublication()
            try await publish(fired.outbox)
            timersBehind = count == 100
        }
    }

    /// Backlog gauges, sampled every few seconds on the worker's own connection: two cheap
    /// aggregate queries, not worth a connection of their own.
    private func sampleBacklog() async throws {
        guard let db else { return }
        lastBacklogSample = clock.now()
        let now = clock.now()
        let (outbox, timers) = try await db.run { c in (try Store.outboxBacklog(c), try Store.timerBacklog(c, now: now)) }
        metrics.outbox(count: outbox.count, oldestAgeSeconds: outbox.oldestAgeSeconds)
        metrics.timers(due: timers.due, lagSeconds: timers.lagSeconds)
    }

    // MARK: broker

    /// Publishes bad input to the dead-letter exchange, body unchanged, and acks each original
    /// only after the broker confirmed its copy.
    @discardableResult
    private func deadLetter(_ items: [(Delivery, BadInput)]) async throws -> Set<UInt64> {
        guard let publisher, let consumer else { return [] }
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
        for ((delivery, reason), outcome) in zip(items, outcomes) {
            guard outcome == .confirmed else {
                // Not in the DLQ (no queue bound, or the broker refused it): keep the original.
                throw DeadLetterError(outcome: outcome, code: reason.code.rawValue)
            }
            metrics.deadLettered(code: reason.code.rawValue, routingKey: delivery.routingKey)
            logger.notice("dead-lettered", metadata: [
                "dlq.error": "\(reason.code.rawValue)", "dlq.detail": "\(reason.detail)",
                "amqp.routing_key": "\(delivery.routingKey)", "amqp.message_id": "\(delivery.messageId ?? "-")"])
            try await consumer.ack(delivery.deliveryTag, multiple: false)
        }
        return Set(items.map(\.0.deliveryTag))
    }

    /// Publishes committed outbox rows leased to this worker, with confirms. The confirmed ones
    /// are deleted by the next transaction. A row that the broker did not confirm
    /// keeps its lease only until it expires, then goes out again with the same CloudEvents id:
    /// downstream deduplicates by id, so a repeat is harmless and a loss is not.
    /// Returns false when the broker nacked some rows.
    @discardableResult
    private func publish(_ rows: [OutboxRow]) async throws -> Bool {
        guard let publisher, !rows.isEmpty else { return true }
        let messages = rows.map {
            OutgoingMessage(exchange: settings.eventsExchange, routingKey: $0.type, body: $0.body, headers: [:],
                            messageId: $0.eventId, contentType: "application/cloudevents+json",
                            persistent: true, mandatory: false)
        }
        let outcomes: [PublishOutcome]
        do {
            outcomes = try await publisher.publish(messages)
        } catch {
            // Not waiting for the lease to end: the next relay pass retries them at once.
            _ = try? await db?.run { c in try Store.releaseLease(c, seqs: rows.map(\.seq)) }
            throw error
        }
        failpoint.hit(.afterPublish)
        let confirmed = zip(rows, outcomes).filter { $0.1 != .nacked }.map(\.0.seq)
        published += confirmed
        if confirmed.count < rows.count {
            logger.warning("broker nacked outbox rows; retried after the lease",
                           metadata: ["outbox.nacked": "\(rows.count - confirmed.count)"])
            return false
        }
        return true
    }

    /// Waits for the last batch's publication; its error (the broker went away) is this call's.
    private func settlePublication() async throws {
        guard let task = publication else { return }
        publication = nil
        try await task.value
    }

    /// Deletes the confirmed rows in a statement of their own, when no transaction is
    /// coming to carry them (idle, relay, shutdown).
    private func flushPublished() async throws {
        guard let db, !published.isEmpty else { return }
        let done = published
        try await db.run { c in try Store.removePublished(c, seqs: done) }
        published.removeFirst(done.count)
    }

    /// Publishes rows nobody holds a lease on: left by a crashed instance, nacked by the broker,
    /// or enqueued by `referrald enroll`.
    private func relayOutbox() async throws {
        guard let db else { return }
        lastRelay = clock.now()
        try await settlePublication()
        try await flushPublished()
        while true {
            let rows = try await db.run { c in try Store.leaseOutbox(c, limit: 512, leaseSeconds: 60) }
            if rows.isEmpty { return }
            let allConfirmed = try await publish(rows)
            try await flushPublished()
            if !allConfirmed || rows.count < 512 { return }
        }
    }
}

struct NotConnected: Error, CustomStringConvertible {
    var description: String { "not connected to the database" }
}

public struct SchemaError: Error, CustomStringConvertible {
    public let found: Int
    public let needed: Int
    public var description: String {
        "database schema is at version \(found) but this referrald needs \(needed): run `referrald migrate` first"
    }
}

struct DeadLetterError: Error, CustomStringConvertible {
    let outcome: PublishOutcome
    let code: String
    var description: String { "dead letter (\(code)) not accepted by the broker: \(outcome); original kept unacked" }
}
