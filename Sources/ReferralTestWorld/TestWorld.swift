import AMQP
import Foundation
import Logging
import Postgres
import ReferralStore
import ReferralWorker

/// One isolated world on the real services, as the integration tests, the benchmark and the fault
/// suite build it: a scratch database created and migrated for it, exchange and queue names of
/// its own on the shared broker (`IsolatedWorld`), and an observer queue bound to what the
/// daemon publishes. Nothing is mocked.
///
/// The world holds no connection: the integration tests and the benchmark keep theirs open for
/// the world's life, while the fault suite restarts the very services a held connection would
/// need, so each side passes in the connections it owns.
public struct TestWorld: Sendable {
    public let name: String
    public let settings: Settings
    /// The configuration as environment variables, for running the real binary.
    public let environment: [String: String]
    /// The world's own database.
    public let databaseURL: String
    public let observerQueue: String

    /// The observer queue's name after the world's and what it is bound to on the events exchange.
    public struct Observer: Sendable {
        public var suffix: String
        public var routingKey: String

        public init(suffix: String, routingKey: String) {
            self.suffix = suffix
            self.routingKey = routingKey
        }

        /// Everything the daemon publishes.
        public static let everything = Observer(suffix: "observer", routingKey: "#")
        /// What billing receives: every `referral.reward.*`.
        public static let rewards = Observer(suffix: "billing", routingKey: "referral.reward.#")
    }

    /// Creates the database `name` on `admin`'s server and migrates it, then declares the
    /// topology and the observer queue on `broker`. `environment` goes over the isolated
    /// configuration, before the settings are read from it.
    public static func make(
        name: String, amqpURL: String, databaseURL: String, programsFile: String,
        environment overrides: [String: String] = [:], observer: Observer = .everything,
        admin: PostgresConnection, broker: AMQPConnection, applicationName: String, logger: Logger
    ) async throws -> TestWorld {
        try await admin.run { c in try c.executeScript("CREATE DATABASE \(name)") }
        let worldURL = IsolatedWorld.databaseURL(databaseURL, database: name)
        var environment = IsolatedWorld.environment(
            name: name, amqpURL: amqpURL, databaseURL: worldURL, programsFile: programsFile)
        environment.merge(overrides) { _, new in new }
        let settings = try await Settings.load(configFile: nil, environment: environment)
        let world = TestWorld(
            name: name, settings: settings, environment: environment, databaseURL: worldURL,
            observerQueue: "\(name).\(observer.suffix)")
        let db = try await world.connectDatabase(applicationName: applicationName, logger: logger)
        do {
            _ = try await Schema.migrate(db, logger: logger)
        } catch {
            await db.close()
            throw error
        }
        await db.close()
        try await Topology(settings: settings).declare(on: broker, passiveUpstream: false, logger: logger)
        _ = try await broker.declareQueue(
            world.observerQueue, durable: true, arguments: ["x-queue-type": .string("quorum")])
        try await broker.bindQueue(
            world.observerQueue, exchange: settings.eventsExchange, routingKey: observer.routingKey)
        return world
    }

    /// A connection to the world's own database.
    public func connectDatabase(applicationName: String, logger: Logger) async throws -> PostgresConnection {
        try await PostgresConnection.connect(
            try PostgresURL(parsing: databaseURL), applicationName: applicationName, logger: logger)
    }

    /// The exchange an upstream producer publishes `type` to: the one of the type's prefix.
    public func upstreamExchange(for type: String) -> String {
        switch type.split(separator: ".").first {
        case "provisioning": settings.upstreamExchanges[0]
        case "billing": settings.upstreamExchanges[1]
        default: settings.upstreamExchanges[2]
        }
    }

    /// A message as an upstream producer publishes it: to the exchange of its type's prefix,
    /// routing key = type, persistent and mandatory (an unroutable one comes back, not lost).
    public func upstreamMessage(type: String, body: [UInt8]) -> OutgoingMessage {
        OutgoingMessage(
            exchange: upstreamExchange(for: type), routingKey: type, body: body, headers: [:], messageId: nil,
            contentType: "application/cloudevents+json", persistent: true, mandatory: true)
    }

    /// The `referrald` built beside the running program (the tests, the bench, the suite).
    public static var daemonBesideThisProgram: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("referrald").path
    }

    /// `binary arguments` with this process's environment, the world's configuration over it and
    /// `extraEnvironment` over both; not started, so the caller can direct its output first.
    public func daemonProcess(
        binary: String, arguments: [String] = ["run"], extraEnvironment: [String: String] = [:]
    ) -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { _, new in new }
        env.merge(extraEnvironment) { _, new in new }
        process.environment = env
        return process
    }

    /// Starts `binary run` with the world's configuration (and `extraEnvironment` over it).
    public func spawnDaemon(binary: String, extraEnvironment: [String: String] = [:]) throws -> Process {
        let process = daemonProcess(binary: binary, extraEnvironment: extraEnvironment)
        try process.run()
        return process
    }

    /// Deletes the world's queues and exchanges. Best effort: a teardown after a failure removes
    /// what is there and must not stop at what is not.
    public func deleteBrokerObjects(on broker: AMQPConnection) async {
        for q in [settings.inboxQueue, settings.deadLetterQueue, settings.parkedQueue, observerQueue] {
            try? await broker.deleteQueue(q)
        }
        for x in settings.upstreamExchanges + [settings.eventsExchange, settings.deadLetterExchange] {
            try? await broker.deleteExchange(x)
        }
    }

    /// Drops the world's database, ending whatever session is still in it (a daemon that did not
    /// stop would otherwise keep it, and the scratch database would outlive the run).
    public func dropDatabase(on admin: PostgresConnection) async {
        _ = try? await admin.run { c in try c.executeScript("DROP DATABASE IF EXISTS \(name) WITH (FORCE)") }
    }
}
