import AMQP
import Foundation
import Logging
import ReferralCore
import ReferralStore
import ServiceLifecycle

/// The one-shot commands: `migrate`, `topology` and `check`.
public enum Operations {
    public static func migrate(settings: Settings, logger: Logger) async throws -> [Int] {
        guard !settings.databaseURL.isEmpty else {
            throw SettingsError(
                key: "REFERRALD_DATABASE_URL", source: "environment", message: "is required for migrate")
        }
        let db = try await settings.connectDatabase(name: "referrald migrate", logger: logger)
        defer { Task { await db.close() } }
        return try await db.migrate(logger: logger)
    }

    public static func declareTopology(settings: Settings, passiveUpstream: Bool, logger: Logger) async throws {
        guard !settings.amqpURL.isEmpty else {
            throw SettingsError(key: "REFERRALD_AMQP_URL", source: "environment", message: "is required for topology")
        }
        let amqp = try await settings.connectAMQP(name: "referrald topology", logger: logger)
        do {
            try await Topology(settings: settings).declare(on: amqp, passiveUpstream: passiveUpstream, logger: logger)
        } catch {
            await amqp.close()
            throw error
        }
        await amqp.close()
    }

    /// `referrald check`: what `run` needs, tried without consuming anything. Returns one line
    /// per service; throws a `CheckError` that names the key and the reason.
    public static func check(settings: Settings, logger: Logger) async throws -> [String] {
        var lines: [String] = []
        let db: Database
        do {
            db = try await settings.connectDatabase(name: "referrald check", logger: logger)
        } catch {
            throw CheckError(subject: "database (REFERRALD_DATABASE_URL)", reason: "\(error)")
        }
        do {
            let version = try await db.schemaVersion()
            await db.close()
            guard version >= Schema.latestVersion else {
                throw CheckError(
                    subject: "database schema",
                    reason: SchemaError(found: version, needed: Schema.latestVersion).description)
            }
            lines.append("database: connected, schema version \(version) (this binary needs \(Schema.latestVersion))")
        } catch let error as CheckError {
            throw error
        } catch {
            await db.close()
            throw CheckError(subject: "database schema", reason: "\(error)")
        }
        let amqp: AMQPConnection
        do {
            amqp = try await settings.connectAMQP(name: "referrald check", logger: logger)
        } catch {
            throw CheckError(subject: "broker (REFERRALD_AMQP_URL)", reason: "\(error)")
        }
        do {
            // Passive: only asks whether the queue exists (a missing one means `topology` was not run).
            let queue = try await amqp.declareQueue(settings.inboxQueue, durable: true, passive: true)
            await amqp.close()
            lines.append("broker: connected, queue \(settings.inboxQueue) holds \(queue.messageCount) messages")
        } catch {
            await amqp.close()
            throw CheckError(
                subject: "broker queue REFERRALD_INBOX_QUEUE (\(settings.inboxQueue))",
                reason: "\(error); run `referrald topology`")
        }
        return lines
    }
}

public struct CheckError: Error, CustomStringConvertible {
    public let subject: String
    public let reason: String
    public var description: String { "check failed: \(subject): \(reason)" }
}

/// `referrald run`: the worker, the HTTP endpoint and the systemd reporter under one service
/// group. SIGTERM or SIGINT drain it (finish the batch in hand, ack, close) and the process
/// exits 0; a drain longer than REFERRALD_DRAIN_TIMEOUT_SECONDS, or a second signal, cancels it.
public struct Daemon: Sendable {
    let settings: Settings
    let programs: ProgramBook
    let logger: Logger
    let environment: [String: String]

    public init(
        settings: Settings, programs: ProgramBook, logger: Logger,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) {
        self.settings = settings
        self.programs = programs
        self.logger = logger
        self.environment = environment
    }

    public func run() async throws {
        let registry = MetricsBootstrap.registry
        let metrics = WorkerMetrics()
        metrics.started(at: Date())
        let status = ServiceStatus(metrics: metrics, pipelines: settings.workers)
        let effects = EffectCache()
        let intake = Intake(settings: settings, logger: logger, name: "referrald")
        let workers = (1...settings.workers).map { n in
            Worker(
                settings: settings, programs: programs, logger: logger.with(worker: n, of: settings.workers),
                instanceName: settings.workers == 1 ? "referrald" : "referrald-\(n)", status: status,
                pipeline: n - 1, metrics: metrics, effectCache: effects, intake: intake)
        }
        // Shut down in reverse order: the reporter first (STOPPING=1, /readyz says draining),
        // then the worker drains, then the HTTP endpoint, which answers until the drain is over.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if settings.httpPort != 0 {
            services.append(
                .init(
                    service: HTTPService(
                        host: settings.httpHost, port: settings.httpPort, status: status,
                        stallWindow: .seconds(settings.healthStallSeconds),
                        registry: registry, logger: logger)))
        }
        services.append(.init(service: WorkerService(workers: workers, intake: intake)))
        services.append(
            .init(
                service: StatusReporter(
                    status: status, notifier: SystemdNotifier(environment: environment),
                    watchdog: Watchdog(environment: environment), metrics: metrics, logger: logger)))
        var configuration = ServiceGroupConfiguration(services: services, logger: logger)
        let drain = Duration.seconds(settings.drainTimeoutSeconds)
        configuration.maximumGracefulShutdownDuration = drain
        // A service that ignores cancellation too would meet SIGKILL at TimeoutStopSec; crash a
        // little earlier instead, with a trace in the journal that names it.
        configuration.maximumCancellationDuration = .seconds(
            max(1, (settings.stopTimeoutSeconds - settings.drainTimeoutSeconds) / 2))
        try await DrainingGroup(group: ServiceGroup(configuration: configuration), drainTimeout: drain, logger: logger)
            .run()
    }
}

/// The process's lanes. They share the intake (one consumer, batches that share no key), the
/// effect cache, the metrics and the status; each commits on its own connection and publishes
/// on its own channel. The locks that make instances safe side by side (fact keys, rankings,
/// referrals) make lanes safe too. A lane that ends with an error (a schema too old) ends them
/// all; the consumer closes after the last lane has acked its batch.
struct WorkerService: Service {
    let workers: [Worker]
    let intake: Intake
    func run() async throws {
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in workers { group.addTask { try await worker.run() } }
                try await group.waitForAll()
            }
        } catch {
            await intake.close()
            throw error
        }
        await intake.close()
    }
}

extension Logger {
    /// Tags a pipeline's log lines with its number when there are several.
    func with(worker n: Int, of count: Int) -> Logger {
        guard count > 1 else { return self }
        var logger = self
        logger[metadataKey: "worker"] = "\(n)"
        return logger
    }
}
