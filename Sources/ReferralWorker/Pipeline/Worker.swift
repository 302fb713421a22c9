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
    let programVersions = ProgramVersionCache()

    /// The process's consumer, shared by its lanes; a worker made alone has one of its own.
    let intake: Intake
    let ownsIntake: Bool
    var publisher: AMQPConnection?
    var db: Database?
    var rng = SystemRandomNumberGenerator()
    var lastRelay = Instant(microseconds: 0)
    /// Outbox rows the broker confirmed that the database still holds. The next transaction
    /// deletes them (a batch's, or a statement of their own when idle): a commit of their own
    /// per batch was a third of the pipeline's commits. Lost in a crash, they are published
    /// again after their lease with the same CloudEvents id, which downstream deduplicates.
    var published: [Int64] = []
    /// The publication of the last batch's outbox rows, running while the next batch is read
    /// and applied, so that waiting for the broker's confirms (a quorum queue replicates and
    /// syncs each message first) no longer holds up the pipeline. At most one runs: every
    /// other use of the publisher settles it first, which also keeps batches' events in order.
    var publication: Task<Void, any Error>?
    let failpoint = Failpoint.fromEnvironment()
    var lastTimerScan = Instant(microseconds: 0)
    /// The last timer round was full: more are due, and the next loop pass fires another round.
    var timersBehind = false
    var lastBacklogSample = Instant(microseconds: 0)
    /// When to next look at the parked queue and move what waits there into the DLQ.
    var parkedRetryDue: Instant?
    /// Doubling up to 5 minutes while the dead-letter exchange keeps refusing them.
    var parkedBackoff = Backoff(base: .seconds(5), cap: .seconds(300))
    var lastErasureScrub = Instant(microseconds: 0)
    /// The broker objects were found once, at start. Reconnects do not check again: a quorum
    /// queue whose node is still recovering after a broker restart must be waited for (the
    /// reconnect back-off), not taken for a missing topology that ends the process.
    var topologyVerified = false
    /// The programs file was registered once. Reconnects register it again (a restored database
    /// may lack its versions) but no longer refuse an older file: a PostgreSQL restart during a
    /// rollout would otherwise end every instance not yet restarted with exit 78, which systemd
    /// does not restart, and leave the inbox without consumers. The check is for starts.
    var programsRegistered = false
    /// The consumer channel of the batch in hand (`Intake.Item.generation`).
    var generation = 0

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

    func connect() async throws {
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

    func disconnect() async {
        await publisher?.close()
        await db?.close()
        publisher = nil
        db = nil
    }

    func consumeLoop() async throws {
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
