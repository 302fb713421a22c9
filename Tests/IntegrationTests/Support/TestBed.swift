import AMQP
import Foundation
import Logging
import Postgres
import ReferralCore
import ReferralStore
import ReferralTestKit
import ReferralWorker
import Synchronization

/// Where the real services are; `scripts/services.sh env` prints these for the local ones.
enum TestServices {
    static let amqpURL =
        ProcessInfo.processInfo.environment["REFERRALD_TEST_AMQP_URL"]
        ?? "amqp://referrald:referrald@127.0.0.1:5672/referrald_test"
    static let databaseURL =
        ProcessInfo.processInfo.environment["REFERRALD_TEST_DATABASE_URL"]
        ?? "postgres://referrald:referrald@127.0.0.1:54329/referrald"

    /// The package root, to find deploy/ and the contract beside the checkout.
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var contractDirectory: URL? {
        if let dir = ProcessInfo.processInfo.environment["REFERRALD_CONTRACT_DIR"] { return URL(fileURLWithPath: dir) }
        let dir = packageRoot.deletingLastPathComponent().appendingPathComponent("shared/contract")
        return FileManager.default.fileExists(atPath: dir.appendingPathComponent("README.md").path) ? dir : nil
    }

    /// The test URL with another database name (the path), keeping any query parameters.
    static func databaseURL(database: String) -> String {
        IsolatedWorld.databaseURL(databaseURL, database: database)
    }

    static let logger: Logger = {
        var l = Logger(label: "test") { label in
            LineLogHandler(label: label, level: .warning, format: .logfmt)
        }
        l.logLevel = .warning
        return l
    }()
}

/// One isolated world per test: its own database (created from scratch and migrated), its own
/// exchange and queue names on the shared broker, and an observer queue bound to everything the
/// worker publishes. Nothing is mocked.
final class TestBed: Sendable {
    let name: String
    let settings: Settings
    /// The configuration as environment variables, for running the real binary.
    let environment: [String: String]
    let admin: PostgresConnection
    let db: PostgresConnection
    let amqp: AMQPConnection
    let observerQueue: String
    /// Workers and daemons the test started, stopped by `tearDown` if the test did not.
    private let running = Mutex<(workers: [Task<Void, any Error>], daemons: [Process], tornDown: Bool)>(
        ([], [], false))
    /// `db` as the store's seam, for what the worker's commands take.
    var database: Database { Database(db) }

    /// A configuration whose broker objects all carry `name`, so that tests running in
    /// parallel on one broker never see each other's messages.
    static func isolatedEnvironment(name: String, amqpURL: String, databaseURL: String) -> [String: String] {
        var environment = IsolatedWorld.environment(
            name: name, amqpURL: amqpURL, databaseURL: databaseURL,
            programsFile: TestServices.packageRoot.appendingPathComponent("deploy/programs.example.yaml").path)
        environment["REFERRALD_BATCH_WAIT_MS"] = "5"
        return environment
    }

    static func make(_ overrides: [String: String] = [:]) async throws -> TestBed {
        guard let beds = BedsOfTest.current else { throw TestBedOutsideScope() }
        let name = "t\(UInt32.random(in: 0...UInt32.max))"
        let adminURL = try PostgresURL(parsing: TestServices.databaseURL)
        let admin = try await PostgresConnection.connect(
            adminURL, applicationName: "referrald-test-admin", logger: TestServices.logger)
        try await admin.run { c in try c.executeScript("CREATE DATABASE \(name)") }
        let dbURL = TestServices.databaseURL(database: name)
        var environment = isolatedEnvironment(name: name, amqpURL: TestServices.amqpURL, databaseURL: dbURL)
        environment.merge(overrides) { _, new in new }
        let settings = try await Settings.load(configFile: nil, environment: environment)
        let db = try await PostgresConnection.connect(
            try PostgresURL(parsing: dbURL), applicationName: "referrald-test", logger: TestServices.logger)
        _ = try await Schema.migrate(db, logger: TestServices.logger)
        let amqp = try await AMQPConnection.connect(
            try AMQPURL(parsing: TestServices.amqpURL), heartbeatSeconds: 30,
            connectionName: "\(name) test", logger: TestServices.logger)
        try await amqp.enableConfirms()
        try await Topology(settings: settings).declare(on: amqp, passiveUpstream: false, logger: TestServices.logger)
        let observer = "\(name).observer"
        _ = try await amqp.declareQueue(observer, durable: true, arguments: ["x-queue-type": .string("quorum")])
        try await amqp.bindQueue(observer, exchange: settings.eventsExchange, routingKey: "#")
        let bed = TestBed(
            name: name, settings: settings, environment: environment, admin: admin, db: db, amqp: amqp,
            observerQueue: observer)
        beds.add(bed)
        return bed
    }

    private init(
        name: String, settings: Settings, environment: [String: String], admin: PostgresConnection,
        db: PostgresConnection, amqp: AMQPConnection, observerQueue: String
    ) {
        self.name = name
        self.settings = settings
        self.environment = environment
        self.admin = admin
        self.db = db
        self.amqp = amqp
        self.observerQueue = observerQueue
    }

    func programs() throws -> ProgramBook { try ProgramBook.load(path: settings.programsFile) }

    /// Publishes a raw body as an upstream producer would: to the exchange of its type's prefix,
    /// routing key = type, persistent, confirmed.
    func publish(_ body: [UInt8], type: String) async throws {
        let prefix = type.split(separator: ".").first.map(String.init) ?? ""
        let exchange: String
        switch prefix {
        case "provisioning": exchange = settings.upstreamExchanges[0]
        case "billing": exchange = settings.upstreamExchanges[1]
        default: exchange = settings.upstreamExchanges[2]
        }
        let outcome = try await amqp.publish([
            OutgoingMessage(
                exchange: exchange, routingKey: type, body: body, headers: [:], messageId: nil,
                contentType: "application/cloudevents+json", persistent: true, mandatory: true)
        ])
        precondition(outcome == [.confirmed], "test publish not routed: \(outcome)")
    }

    func startWorker() -> Task<Void, any Error> {
        let settings = self.settings
        let programs = try! programs()
        return own(
            Task {
                try await Worker(
                    settings: settings, programs: programs, logger: TestServices.logger,
                    instanceName: "referrald-test"
                ).run()
            })
    }

    /// A worker task the test started itself: cancelled and awaited at teardown.
    @discardableResult
    func own(_ worker: Task<Void, any Error>) -> Task<Void, any Error> {
        running.withLock { $0.workers.append(worker) }
        return worker
    }

    /// Starts the built `referrald run` as a child process with this bed's configuration.
    func spawnDaemon(extraEnvironment: [String: String] = [:]) throws -> Process {
        let process = Process()
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        process.executableURL = dir.appendingPathComponent("referrald")
        process.arguments = ["run"]
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { _, new in new }
        env.merge(extraEnvironment) { _, new in new }
        env["REFERRALD_LOG_LEVEL"] = "warning"
        process.environment = env
        try process.run()
        running.withLock { $0.daemons.append(process) }
        return process
    }

    /// Reads messages from a queue until `count` arrived or `timeout` passed, acking them.
    func take(from queue: String, count: Int, timeout: Duration = .seconds(15)) async throws -> [Delivery] {
        let consumer = try await AMQPConnection.connect(
            try AMQPURL(parsing: TestServices.amqpURL), heartbeatSeconds: 30,
            connectionName: "\(name) reader", logger: TestServices.logger)
        try await consumer.consume(queue: queue, prefetch: 500)
        var got: [Delivery] = []
        let deadline = ContinuousClock.now + timeout
        while got.count < count, ContinuousClock.now < deadline {
            let batch = try await consumer.nextDeliveries(max: count - got.count, wait: .milliseconds(200))
            if let last = batch.last { try await consumer.ack(last.deliveryTag, multiple: true) }
            got += batch
        }
        await consumer.close()
        return got
    }

    /// Waits until `condition` holds, polling; the tests wait on state, not on fixed sleeps.
    func eventually(timeout: Duration = .seconds(15), _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    func queueDepth(_ queue: String) async throws -> UInt32 {
        try await amqp.declareQueue(queue, durable: true, passive: true).messageCount
    }

    func count(_ sql: String) async throws -> Int64 {
        try await db.run { c in try c.query(sql).first?.decode(0, as: Int64.self) ?? -1 }
    }

    /// Stops what the test left running, deletes the bed's queues, exchanges and database.
    /// Runs once; a second call (the test's own, then the scope's) does nothing.
    func tearDown() async {
        let (workers, daemons, first) = running.withLock { running in
            defer { running.tornDown = true }
            return (running.workers, running.daemons, !running.tornDown)
        }
        guard first else { return }
        for worker in workers {
            worker.cancel()
            _ = await worker.result
        }
        for daemon in daemons where daemon.isRunning {
            daemon.terminate()
            daemon.waitUntilExit()
        }
        for q in [settings.inboxQueue, settings.deadLetterQueue, settings.parkedQueue, observerQueue] {
            try? await amqp.deleteQueue(q)
        }
        for x in settings.upstreamExchanges + [settings.eventsExchange, settings.deadLetterExchange] {
            try? await amqp.deleteExchange(x)
        }
        await amqp.close()
        await db.close()
        _ = try? await admin.run { c in try c.executeScript("DROP DATABASE IF EXISTS \(name) WITH (FORCE)") }
        await admin.close()
    }
}
