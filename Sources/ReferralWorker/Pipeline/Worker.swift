import AMQP
import Logging
import ReferralCore
import ReferralStore
import ServiceLifecycle

/// One lane of the consume loop: a batch from the intake (read and classified there) →
/// dead-letter bad input while the valid events are deduplicated and applied in one
/// transaction that also writes the outbox → ack through the intake, and publish the batch's
/// outbox rows with confirms from memory while the next batch is applied → delete them in the
/// next transaction.
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
    /// This pipeline's number (from 0) in `status`, which follows each pipeline's progress.
    let pipeline: Int
    let metrics: WorkerMetrics
    let effectCache: EffectCache
    /// Program versions read by this lane's decisions; emptied with the effect cache.
    private let programVersions = ProgramVersionCache()

    /// The process's consumer, shared by its lanes; a worker made alone has one of its own.
    let intake: Intake
    private let ownsIntake: Bool
    private var publisher: AMQPConnection?
    private var db: Database?
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
    private var lastTimerScan = Instant(microseconds: 0)
    /// The last timer round was full: more are due, and the next loop pass fires another round.
    private var timersBehind = false
    private var lastBacklogSample = Instant(microseconds: 0)
    /// When to next look at the parked queue and move what waits there into the DLQ.
    private var parkedRetryDue: Instant?
    /// Doubling up to 5 minutes while the dead-letter exchange keeps refusing them.
    private var parkedBackoff = Backoff(base: .seconds(5), cap: .seconds(300))
    private var lastErasureScrub = Instant(microseconds: 0)
    /// The broker objects were found once, at start. Reconnects do not check again: a quorum
    /// queue whose node is still recovering after a broker restart must be waited for (the
    /// reconnect back-off), not taken for a missing topology that ends the process.
    private var topologyVerified = false
    /// The programs file was registered once. Reconnects register it again (a restored database
    /// may lack its versions) but no longer refuse an older file: a PostgreSQL restart during a
    /// rollout would otherwise end every instance not yet restarted with exit 78, which systemd
    /// does not restart, and leave the inbox without consumers. The check is for starts.
    private var programsRegistered = false
    /// The consumer channel of the batch in hand (`Intake.Item.generation`).
    private var generation = 0

    public init(
        settings: Settings, programs: ProgramBook, logger: Logger,
        clock: any ReferralCore.Clock = SystemClock(), instanceName: String = "referrald",
        status: ServiceStatus = ServiceStatus(), pipeline: Int = 0, metrics: WorkerMetrics = WorkerMetrics(),
        effectCache: EffectCache = EffectCache(), intake: Intake? = nil
    ) {
        self.settings = settings
        self.programs = programs
        self.logger = logger
        self.clock = clock
        self.instanceName = instanceName
        self.status = status
        self.pipeline = pipeline
        self.metrics = metrics
        self.effectCache = effectCache
        self.intake = intake ?? Intake(settings: settings, logger: logger, name: instanceName)
        self.ownsIntake = intake == nil
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
                await intake.giveBack(lane: pipeline)
                try? await settlePublication()
                try? await flushPublished()
                break
            } catch let error as SchemaError {
                throw error
            } catch let error as TopologyError {
                await disconnect()
                throw error
            } catch let error as ProgramError {
                await disconnect()
                throw error
            } catch {
                logger.warning("worker loop failed; reconnecting", metadata: ["error": "\(error)"])
                await intake.giveBack(lane: pipeline)
                status.failed(error, pipeline: pipeline)
                try? await settlePublication()
                await disconnect()
                try? await Task.sleep(for: backoff.next(using: &rng))
            }
        }
        try? await settlePublication()
        try? await flushPublished()
        await disconnect()
        if ownsIntake { await intake.close() }
    }

    private func connect() async throws {
        if db == nil || publisher == nil { status.connecting() }
        if db == nil {
            let connection = try await settings.connectWorkerDatabase(name: instanceName, logger: logger)
            effectCache.removeAll()
            programVersions.removeAll()
            let version = try await connection.schemaVersion()
            guard version >= Schema.latestVersion else {
                await connection.close()
                throw SchemaError(found: version, needed: Schema.latestVersion)
            }
            // A refusal at start (a file older than the database) is a configuration error that
            // no reconnect mends: it ends the worker, and `run` exits 78.
            let (programs, file) = (self.programs.programs, self.programs.file)
            let allowOlder = settings.allowOlderPrograms || programsRegistered
            do {
                let registered = try await connection.registerPrograms(programs, file: file, allowOlder: allowOlder)
                programsRegistered = true
                logger.info(
                    "programs registered",
                    metadata: [
                        "programs.versions":
                            "\(registered.sorted { $0.key < $1.key }.map { "\($0.key)@\($0.value)" }.joined(separator: ","))"
                    ])
            } catch {
                await connection.close()
                throw error
            }
            db = connection
            status.databaseConnected(pipeline: pipeline)
        }
        // Dead letters parked before this process started wait for a look at the parked queue.
        if parkedRetryDue == nil { parkedRetryDue = clock.now() + .seconds(5) }
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
        try await intake.connect()
        status.brokerConnected(pipeline: pipeline)
    }

    private func disconnect() async {
        await publisher?.close()
        await db?.close()
        publisher = nil
        db = nil
    }

    private func consumeLoop() async throws {
        // A graceful shutdown (SIGTERM) ends the loop between batches: the batch in hand is
        // finished, committed, published and acked first.
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            let batch = try await intake.next(
                lane: pipeline, max: settings.batchSize, maxBytes: settings.batchMaxBytes,
                wait: .milliseconds(settings.batchWaitMilliseconds))
            if !batch.isEmpty { try await handle(batch) }
            // One reading of the clock decides what this pass does: read once per check, a clock
            // that moved between the timer check and the backlog sample let the sample run
            // before the timers it should count had fired, and not again for 5 s.
            let now = clock.now()
            // Timers and the relay run every second, busy or idle: holds end, and rows left by a
            // crashed instance or a broker outage go out while a backlog drains too.
            if timersBehind || now - lastTimerScan > .seconds(1) { try await fireTimers() }
            if now - lastRelay > .seconds(1) { try await relayOutbox() }
            // Erasures' stored bodies, after the erasure committed (`ErasureStore.scrubPendingErasures`).
            // A failed pass is logged and retried on the next one, never thrown: it must not
            // stop consumption (a broken connection fails the next batch, which reconnects).
            if now - lastErasureScrub > .seconds(1), let db {
                lastErasureScrub = clock.now()
                do { try await db.scrubPendingErasures() } catch {
                    logger.warning("erasure scrub failed; retried next pass", metadata: ["error": "\(error)"])
                }
            }
            // Idle: confirmed rows wait for no next batch.
            if batch.isEmpty {
                try await settlePublication()
                try await flushPublished()
            }
            if now - lastBacklogSample > .seconds(5) { try await sampleBacklog() }
            if let due = parkedRetryDue, now >= due { await retryParkedLogged() }
            status.loopProgressed(pipeline: pipeline)
        }
    }

    // MARK: batch

    private func handle(_ items: [Intake.Item]) async throws {
        let started = ContinuousClock.now
        var good: [(Delivery, InboundEvent)] = []
        var bad: [(Delivery, BadInput)] = []
        for item in items {
            switch item.classified {
            case .success(let event): good.append((item.delivery, event))
            case .failure(let reason): bad.append((item.delivery, reason))
            }
        }
        generation = items.first?.generation ?? generation
        var outbox: [OutboxRow] = []
        // Each original is acked once the broker confirmed its dead letter, so a message is
        // never in neither queue.
        if !bad.isEmpty { try await deadLetter(bad) }
        let applyStarted = ContinuousClock.now
        if !good.isEmpty { outbox = try await applyWithRetry(good) }
        // Committed: ack through the intake (what was dead-lettered or requeued on its own has
        // left the batch there), and publish the outbox rows while the next batch is applied.
        await intake.finish(lane: pipeline)
        let applyTime = ContinuousClock.now - applyStarted
        let settleStarted = ContinuousClock.now
        try await settlePublication()
        let settleTime = ContinuousClock.now - settleStarted
        if !outbox.isEmpty { publication = Task { try await self.publish(outbox) } }
        let acked = clock.now()
        for (_, event) in good { metrics.endToEnd(from: event.time, to: acked) }
        let duration = ContinuousClock.now - started
        metrics.batch(size: items.count, duration: duration)
        // Where a slow pipeline's time goes: in the transaction and ack (apply.ms), or waiting
        // for the broker to confirm the previous batch's events (publish_wait.ms).
        logger.debug(
            "batch handled",
            metadata: [
                "batch.size": "\(items.count)", "batch.dead_lettered": "\(bad.count)", "outbox": "\(outbox.count)",
                "batch.ms": "\(duration.nanoseconds / 1_000_000)", "apply.ms": "\(applyTime.nanoseconds / 1_000_000)",
                "publish_wait.ms": "\(settleTime.nanoseconds / 1_000_000)",
            ])
    }

    /// Transient database errors (server restart, lost connection, serialisation failure)
    /// retry the same deliveries on a fresh connection while the consumer keeps them unacked:
    /// they are neither acked nor dead-lettered while the database is away.
    /// Returns the committed outbox rows to publish.
    private func applyWithRetry(_ events: [(Delivery, InboundEvent)]) async throws -> [OutboxRow] {
        var backoff = Backoff()
        var conflicts = 0
        while true {
            do {
                return try await apply(events.map { .init(event: $0.1, body: $0.0.body) })
            } catch let error as DatabaseError where error.isLockConflict && conflicts < 5 {
                // Another instance's transaction won a deadlock or a serialisation conflict: the
                // database is fine and so is the connection. Retry at once on it; reconnecting
                // and backing off as for an outage cost seconds per conflict.
                conflicts += 1
                metrics.lockConflict()
                logger.notice(
                    "batch lost a lock conflict; retried",
                    metadata: [
                        "db.sqlstate": "\(error.sqlState ?? "-")", "batch.size": "\(events.count)",
                        "attempt": "\(conflicts)",
                    ])
            } catch let error as DatabaseError where error.isTransient {
                logger.warning(
                    "database unavailable; batch held for retry",
                    metadata: ["db.sqlstate": "\(error.sqlState ?? "-")", "batch.size": "\(events.count)"])
                status.databaseLost(error, pipeline: pipeline)
                await db?.close()
                db = nil
                try await Task.sleep(for: backoff.next(using: &rng))
                try await connect()
            } catch {
                return try await isolate(events, firstError: error)
            }
        }
    }

    /// A batch failed for a reason that is not transient. Find the event that fails by halving:
    /// each half is applied in a transaction of its own, and only a half that fails is split
    /// again, so one poison event in a batch of n costs about 2·log₂ n transactions. Applying
    /// the events one by one instead re-ran up to 511 good events at the batch-1 rate on every
    /// delivery of the poison. The event that fails alone is dead-lettered once it has failed on
    /// REFERRALD_DELIVERY_LIMIT deliveries, and requeued before that. Halves keep the batch's
    /// order, so the events of one account are still applied in the order they arrived.
    private func isolate(_ events: [(Delivery, InboundEvent)], firstError: any Error) async throws -> [OutboxRow] {
        logger.warning(
            "batch failed; isolating the failing event by halves",
            metadata: ["error": "\(firstError)", "batch.size": "\(events.count)"])
        var outbox: [OutboxRow] = []
        try await bisect(events, failedWith: firstError, outbox: &outbox)
        return outbox
    }

    /// `events` failed together in one transaction with `error`: apply each half, splitting a
    /// failing half until the failing event stands alone.
    private func bisect(
        _ events: [(Delivery, InboundEvent)], failedWith error: any Error,
        outbox: inout [OutboxRow]
    ) async throws {
        guard events.count > 1 else {
            if let only = events.first { try await giveUp(only, error: error) }
            return
        }
        let middle = events.count / 2
        for half in [Array(events[..<middle]), Array(events[middle...])] {
            do {
                outbox += try await applyRetryingConflicts(half)
            } catch let error as DatabaseError where error.isTransient {
                throw error
            } catch {
                try await bisect(half, failedWith: error, outbox: &outbox)
            }
        }
    }

    /// A lock conflict with another instance says nothing about the events: retry it at once,
    /// as `applyWithRetry` does, rather than blame an event for it.
    private func applyRetryingConflicts(_ events: [(Delivery, InboundEvent)]) async throws -> [OutboxRow] {
        var conflicts = 0
        while true {
            do {
                return try await apply(events.map { .init(event: $0.1, body: $0.0.body) })
            } catch let error as DatabaseError where error.isLockConflict && conflicts < 5 {
                conflicts += 1
                metrics.lockConflict()
            }
        }
    }

    /// The event failed alone: dead-letter it at the delivery limit, requeue it before. Either
    /// way it is settled on its own, and leaves the batch the intake acks.
    private func giveUp(_ item: (Delivery, InboundEvent), error: any Error) async throws {
        let (delivery, event) = item
        let deliveries = (delivery.deliveryCount ?? 0) + 1
        if deliveries >= settings.deliveryLimit {
            try await deadLetter([
                (
                    delivery,
                    BadInput(
                        code: .processingFailed,
                        detail: "\(event.type.rawValue): failed on \(deliveries) deliveries: \(error)")
                )
            ])
        } else {
            logger.warning(
                "event failed; requeued",
                metadata: [
                    "event.id": "\(event.id)", "event.type": "\(event.type.rawValue)", "error": "\(error)",
                    "amqp.delivery_count": "\(deliveries)",
                ])
            try await intake.requeue(delivery, generation: generation)
            metrics.consumed(type: event.type.rawValue, .failed)
        }
    }

    private func context() -> DecisionContext {
        DecisionContext(
            programs: programs, policy: settings.lifecyclePolicy, now: clock.now(),
            effects: effectCache, programVersions: programVersions)
    }

    /// Applies events in one transaction that also deletes the rows published since the last
    /// commit; returns the committed outbox rows to publish.
    private func apply(_ events: [ReceivedEvent]) async throws -> [OutboxRow] {
        guard let db else { throw NotConnected() }
        let failpoint = self.failpoint
        let done = published
        let outcome = try await DecisionStore(db).applyBatch(events, published: done, context: context()) { events in
            try failpoint.poison(events.lazy.map(\.event.id))
        }
        let leads = outcome.freshIndexes.compactMap { i -> LeadCreated? in
            if case .leadCreated(let lead) = events[i].event.payload { lead } else { nil }
        }
        published.removeFirst(done.count)
        effectCache.appendCommitted(outcome.recorded)
        status.databaseRoundTripSucceeded(pipeline: pipeline)
        failpoint.hit(.afterCommit)
        metrics.consumed(events, freshIndexes: outcome.freshIndexes)
        metrics.rewards(outcome.rewards)
        metrics.asksHeld(programs: outcome.heldAsks)
        metrics.rejections(outcome.published)
        metrics.unattributed(leads, bound: outcome.boundLeads, blocked: outcome.blockedLeads)
        for e in outcome.published {
            logger.info(
                "decided",
                metadata: [
                    "event.type": "\(e.type.rawValue)", "event.id": "\(e.id)",
                    "referral.id": "\(e.subject ?? "-")",
                ])
        }
        for m in outcome.mismatches {
            guard case .rewardMismatch(let rewardId, let accountId, _, _) = m else { continue }
            logger.warning(
                "billing applied a credit that differs from the reward; not marked applied",
                metadata: ["effect": "\(m)", "reward.id": "\(rewardId)", "account.id": "\(accountId)"])
        }
        return outcome.outbox
    }

    /// Fires one round of due timers (hold ends, windows, retries, asks). When more are due,
    /// the loop alternates rounds with batches of deliveries: firing them all at once starved
    /// consumption while thousands fell due together (after a backlog dated in the past was
    /// drained), and every delivery waited behind them.
    private func fireTimers() async throws {
        guard let db else { return }
        lastTimerScan = clock.now()
        timersBehind = false
        do {
            let context = self.context()
            let store = DecisionStore(db)
            let claimed = try await store.claimTimers(context: context, limit: 100)
            status.databaseRoundTripSucceeded(pipeline: pipeline)
            let count = claimed.count
            if count == 0 { return }
            let fired: FiredTimers
            do {
                fired = try await store.fireTimers(claimed, context: context)
            } catch let error as DatabaseError where error.isLockConflict {
                // Another instance's batch holds the same referrals. The transaction rolled back
                // and the timers fire again when their lease ends; rethrowing would drop both
                // broker connections and requeue the batch in hand, raising every message's
                // delivery count towards the broker's limit.
                logger.notice(
                    "timer scan lost a lock conflict; its timers fire again after their lease",
                    metadata: ["db.sqlstate": "\(error.sqlState ?? "-")"])
                return
            }
            effectCache.appendCommitted(fired.recorded)
            metrics.rewards(fired.rewards)
            metrics.asksHeld(programs: fired.heldAsks)
            logger.debug("timers fired", metadata: ["timers.fired": "\(count)", "events": "\(fired.outbox.count)"])
            try await settlePublication()
            try await publish(fired.outbox)
            timersBehind = count == 100
        }
    }

    /// Backlog gauges, sampled every few seconds on the worker's own connection: a few cheap
    /// aggregate queries, not worth a connection of their own. The budgets' month figures come
    /// with them, and the held asks whose freshness ended are settled (sent or dropped stale).
    private func sampleBacklog() async throws {
        guard let db else { return }
        lastBacklogSample = clock.now()
        let now = clock.now()
        let budgeted = programs.programs.filter { $0.budget != nil }.map { ($0.id, $0.currency) }
        let sample = try await db.sampleBacklog(now: now, budgeted: budgeted)
        let (outbox, timers, unapplied) = (sample.outbox, sample.timers, sample.unappliedRewards)
        let (committed, settled, pauses) = (sample.committed, sample.settledAsks, sample.rewardPauses)
        metrics.rewardPauses(pauses, now: now, programs: programs.programs.map(\.id))
        metrics.outbox(count: outbox.count, oldestAgeSeconds: outbox.oldestAgeSeconds)
        metrics.timers(due: timers.due, lagSeconds: timers.lagSeconds)
        metrics.unappliedRewards(count: unapplied.count, oldestAgeSeconds: unapplied.oldestAgeSeconds)
        for p in programs.programs {
            guard let budget = p.budget else { continue }
            metrics.budget(
                program: p.id, currency: p.currency, committedMinor: committed[p.id] ?? 0,
                limitMinor: budget.monthlyMinor)
        }
        metrics.heldAsksSettled(settled)
        let dropped = settled.filter { !$0.sent }.count
        if dropped > 0 { logger.info("held asks dropped stale", metadata: ["asks.dropped": "\(dropped)"]) }
    }

    // MARK: broker

    /// Publishes bad input to the dead-letter exchange, body unchanged, and acks each original
    /// once the broker confirmed its copy (or its parked copy).
    private func deadLetter(_ items: [(Delivery, BadInput)]) async throws {
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
    private func park(_ refused: [(Delivery, BadInput, OutgoingMessage, PublishOutcome)]) async throws {
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
    private func retryParkedLogged() async {
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
    private func retryParked() async throws {
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
    private func publish(_ rows: [OutboxRow]) async throws -> Bool {
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
        try await db.removePublished(seqs: done)
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
            let rows = try await db.leaseOutbox(limit: 512, leaseSeconds: 60)
            if rows.isEmpty { return }
            let allConfirmed = try await publish(rows)
            try await flushPublished()
            if !allConfirmed || rows.count < 512 { return }
        }
    }
}

struct NotConnected: Error, CustomStringConvertible {
    var what = "the database"
    var description: String { "not connected to \(what)" }
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
