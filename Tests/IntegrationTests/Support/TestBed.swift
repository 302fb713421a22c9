import AMQP
import Foundation
import Logging
import Postgres
import ReferralCore
import ReferralStore
import ReferralTestWorld
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

    /// The programs every bed's daemon and worker run with.
    static let programsFile = packageRoot.appendingPathComponent("deploy/programs.example.yaml").path

    static let logger: Logger = {
        var l = Logger(label: "test") { label in
            LineLogHandler(label: label, level: .warning, format: .logfmt)
        }
        l.logLevel = .warning
        return l
    }()
}

/// One isolated world per test (`TestWorld`: its own database, created from scratch and
/// migrated, its own exchange and queue names on the shared broker, and an observer queue bound to
/// everything the worker publishes), with the connections the test uses over it. Nothing is mocked.
final class TestBed: Sendable {
    let world: TestWorld
    let admin: PostgresConnection
    let db: PostgresConnection
    let amqp: AMQPConnection
    /// Workers and daemons the test started, stopped by `tearDown` if the test did not.
    private let running = Mutex<(workers: [Task<Void, any Error>], daemons: [Process])>(([], []))
    /// `db` as the store's seam, for what the worker's commands take.
    var database: Database { Database(db) }
    var name: String { world.name }
    var settings: Settings { world.settings }
    /// The configuration as environment variables, for running the real binary.
    var environment: [String: String] { world.environment }
    var observerQueue: String { world.observerQueue }

    /// What the tests run with over the isolated configuration: a batch wait short enough that
    /// a lone event is not held for the production default.
    static let testEnvironment = ["REFERRALD_BATCH_WAIT_MS": "5"]

    /// A configuration whose broker objects all carry `name`, so that tests running in
    /// parallel on one broker never see each other's messages.
    static func isolatedEnvironment(name: String, amqpURL: String, databaseURL: String) -> [String: String] {
        IsolatedWorld.environment(
            name: name, amqpURL: amqpURL, databaseURL: databaseURL, programsFile: TestServices.programsFile
        ).merging(testEnvironment) { _, new in new }
    }

    static func make(_ overrides: [String: String] = [:]) async throws -> TestBed {
        guard let beds = BedsOfTest.current else { throw TestBedOutsideScope() }
        let name = "t\(UInt32.random(in: 0...UInt32.max))"
        let admin = try await PostgresConnection.connect(
            try PostgresURL(parsing: TestServices.databaseURL), applicationName: "referrald-test-admin",
            logger: TestServices.logger)
        let amqp = try await AMQPConnection.connect(
            try AMQPURL(parsing: TestServices.amqpURL), heartbeatSeconds: 30,
            connectionName: "\(name) test", logger: TestServices.logger)
        try await amqp.enableConfirms()
        let world = try await TestWorld.make(
            name: name, amqpURL: TestServices.amqpURL, databaseURL: TestServices.databaseURL,
            programsFile: TestServices.programsFile,
            environment: testEnvironment.merging(overrides) { _, new in new },
            admin: admin, broker: amqp, applicationName: "referrald-test", logger: TestServices.logger)
        let db = try await world.connectDatabase(applicationName: "referrald-test", logger: TestServices.logger)
        let bed = TestBed(world: world, admin: admin, db: db, amqp: amqp)
        beds.add(bed)
        return bed
    }

    private init(world: TestWorld, admin: PostgresConnection, db: PostgresConnection, amqp: AMQPConnection) {
        self.world = world
        self.admin = admin
        self.db = db
        self.amqp = amqp
    }

    func programs() throws -> ProgramBook { try ProgramBook.load(path: settings.programsFile) }

    /// Publishes a raw body as an upstream producer would: to the exchange of its type's prefix,
    /// routing key = type, persistent, confirmed.
    func publish(_ body: [UInt8], type: String) async throws {
        let outcome = try await amqp.publish([world.upstreamMessage(type: type, body: body)])
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
        let process = try world.spawnDaemon(
            binary: TestWorld.daemonBesideThisProgram,
            extraEnvironment: extraEnvironment.merging(["REFERRALD_LOG_LEVEL": "warning"]) { _, new in new })
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
    /// Called once, by the test's `.tearsDownTestBeds` scope.
    func tearDown() async {
        let (workers, daemons) = running.withLock { ($0.workers, $0.daemons) }
        for worker in workers {
            worker.cancel()
            _ = await worker.result
        }
        for daemon in daemons where daemon.isRunning {
            daemon.terminate()
            // Polled, not `waitUntilExit()`: that blocks one of the cooperative pool's two
            // threads for the whole drain. A daemon that does not stop is killed rather than
            // left running into the next test.
            if !(await Ops.waitForExit(daemon)) { kill(daemon.processIdentifier, SIGKILL) }
        }
        await world.deleteBrokerObjects(on: amqp)
        await amqp.close()
        await db.close()
        await world.dropDatabase(on: admin)
        await admin.close()
    }
}
