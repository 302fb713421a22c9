import AMQP
import Foundation
import Logging
import Postgres
import ReferralCore
import ReferralStore
import ReferralTestKit
import ReferralWorker

let benchLogger: Logger = {
    var l = Logger(label: "referrald-bench")
    l.logLevel = .warning
    return l
}()

/// One isolated world per run, as the integration tests build it: a scratch database created
/// and migrated for the run, and exchange and queue names of its own on the shared broker, with
/// an observer queue bound to everything the worker publishes. Dropped at the end.
struct Bed: Sendable {
    let name: String
    let settings: Settings
    let environment: [String: String]
    let amqpURL: AMQPURL
    let admin: PostgresConnection
    let db: PostgresConnection
    let producer: AMQPConnection
    let observerQueue: String

    static func make(amqpURL: String, databaseURL: String, programsFile: String) async throws -> Bed {
        let name = "bench\(UInt32.random(in: 0...UInt32.max))"
        let admin = try await PostgresConnection.connect(
            try PostgresURL(parsing: databaseURL),
            applicationName: "referrald-bench-admin", logger: benchLogger)
        try await admin.run { c in try c.executeScript("CREATE DATABASE \(name)") }
        let worldURL = IsolatedWorld.databaseURL(databaseURL, database: name)
        var environment = IsolatedWorld.environment(
            name: name, amqpURL: amqpURL, databaseURL: worldURL,
            programsFile: programsFile)
        // The daemon writes to the bench's stderr: quiet unless the caller asks for its log
        // (REFERRALD_LOG_LEVEL=debug logs every batch's size and time).
        environment["REFERRALD_LOG_LEVEL"] = ProcessInfo.processInfo.environment["REFERRALD_LOG_LEVEL"] ?? "warning"
        let settings = try await Settings.load(configFile: nil, environment: environment)
        let db = try await PostgresConnection.connect(
            try PostgresURL(parsing: worldURL),
            applicationName: "referrald-bench", logger: benchLogger)
        _ = try await Schema.migrate(db, logger: benchLogger)
        let url = try AMQPURL(parsing: amqpURL)
        let producer = try await AMQPConnection.connect(
            url, heartbeatSeconds: 30, connectionName: "\(name) producer",
            logger: benchLogger)
        try await producer.enableConfirms()
        try await Topology(settings: settings).declare(on: producer, passiveUpstream: false, logger: benchLogger)
        let observer = "\(name).observer"
        _ = try await producer.declareQueue(observer, durable: true, arguments: ["x-queue-type": .string("quorum")])
        try await producer.bindQueue(observer, exchange: settings.eventsExchange, routingKey: "#")
        return Bed(
            name: name, settings: settings, environment: environment, amqpURL: url, admin: admin, db: db,
            producer: producer, observerQueue: observer)
    }

    /// As an upstream producer publishes: to the exchange of the type's prefix, routing key =
    /// type, persistent, mandatory, confirmed.
    func outgoing(_ m: BenchMessage) -> OutgoingMessage {
        let exchange: String
        switch m.routingKey.split(separator: ".").first {
        case "provisioning": exchange = settings.upstreamExchanges[0]
        case "billing": exchange = settings.upstreamExchanges[1]
        default: exchange = settings.upstreamExchanges[2]
        }
        return OutgoingMessage(
            exchange: exchange, routingKey: m.routingKey, body: m.body, headers: [:], messageId: nil,
            contentType: "application/cloudevents+json", persistent: true, mandatory: true)
    }

    func publish(_ messages: ArraySlice<BenchMessage>) async throws {
        let outcomes = try await producer.publish(messages.map(outgoing))
        guard outcomes.allSatisfy({ $0 == .confirmed }) else {
            throw BenchError("the broker did not confirm every published message: \(Set(outcomes.map { "\($0)" }))")
        }
    }

    /// Starts the built `referrald run` with this bed's configuration.
    func spawnDaemon(binary: String, batchSize: Int, batchWaitMs: Int, workers: Int, prefetch: Int = 0) throws
        -> Process
    {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["run"]
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { _, new in new }
        env["REFERRALD_BATCH_SIZE"] = String(batchSize)
        env["REFERRALD_BATCH_WAIT_MS"] = String(batchWaitMs)
        // Room for every lane's batch and the next one read ahead; the mix's bodies are under
        // 1 KiB, so the memory budget follows the prefetch rather than capping it.
        let prefetch = prefetch > 0 ? prefetch : max(256, (workers + 1) * batchSize)
        env["REFERRALD_PREFETCH"] = String(prefetch)
        env["REFERRALD_MEMORY_BUDGET_BYTES"] = String(max(268_435_456, prefetch * 262_144))
        env["REFERRALD_WORKERS"] = String(workers)
        process.environment = env
        try process.run()
        return process
    }

    func tearDown() async {
        for q in [settings.inboxQueue, settings.deadLetterQueue, settings.parkedQueue, observerQueue] {
            try? await producer.deleteQueue(q)
        }
        for x in settings.upstreamExchanges + [settings.eventsExchange, settings.deadLetterExchange] {
            try? await producer.deleteExchange(x)
        }
        await producer.close()
        await db.close()
        _ = try? await admin.run { c in try c.executeScript("DROP DATABASE IF EXISTS \(name) WITH (FORCE)") }
        await admin.close()
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
