import AMQP
import Logging
import Postgres
import ReferralStore
import ServiceLifecycle

/// The one-shot commands: `migrate` and `topology`.
public enum Operations {
    public static func migrate(settings: Settings, logger: Logger) async throws -> [Int] {
        guard !settings.databaseURL.isEmpty else {
            throw SettingsError(key: "REFERRALD_DATABASE_URL", source: "environment", message: "is required for migrate")
        }
        let db = try await PostgresConnection.connect(
            try PostgresURL(parsing: settings.databaseURL), applicationName: "referrald migrate", logger: logger)
        defer { Task { await db.close() } }
        return try await Schema.migrate(db, logger: logger)
    }

    public static func declareTopology(settings: Settings, passiveUpstream: Bool, logger: Logger) async throws {
        guard !settings.amqpURL.isEmpty else {
            throw SettingsError(key: "REFERRALD_AMQP_URL", source: "environment", message: "is required for topology")
        }
        let amqp = try await AMQPConnection.connect(
            try AMQPURL(parsing: settings.amqpURL), tls: settings.amqpTLS, heartbeatSeconds: settings.heartbeatSeconds,
            connectionName: "referrald topology", logger: logger)
        do {
            try await Topology(settings: settings).declare(on: amqp, passiveUpstream: passiveUpstream, logger: logger)
        } catch {
            await amqp.close()
            throw error
        }
        await amqp.close()
    }
}

/// `referrald run`: the worker under a service group that turns SIGTERM and SIGINT into a
/// graceful shutdown (finish the batch in hand, ack, close) before the process exits 0.
public struct Daemon: Sendable {
    let settings: Settings
    let programs: ProgramBook
    let logger: Logger

    public init(settings: Settings, programs: ProgramBook, logger: Logger) {
        self.settings = settings
        self.programs = programs
        self.logger = logger
    }

    public func run() async throws {
        let worker = Worker(settings: settings, programs: programs, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: WorkerService(worker: worker))],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }
}

struct WorkerService: Service {
    let worker: Worker
    func run() async throws { try await worker.run() }
}
