import AMQP
import Foundation
import Logging
import Postgres
import ReferralTestWorld
import ReferralWorker

let quietLogger: Logger = {
    var l = Logger(label: "referrald-faults") { label in LineLogHandler(label: label, level: .error, format: .logfmt) }
    l.logLevel = .error
    return l
}()

/// One scenario's isolated world on the real services (`TestWorld`): its own database, its own
/// exchange and queue names, and an observer queue that plays billing: it receives every
/// `referral.reward.*` the daemons publish. It holds no connection: the scenarios restart the
/// services, so every look at them connects afresh.
final class World: Sendable {
    let testWorld: TestWorld
    let services: Services
    let logPath: String

    var name: String { testWorld.name }
    var databaseURL: String { testWorld.databaseURL }
    var settings: Settings { testWorld.settings }
    var observerQueue: String { testWorld.observerQueue }

    static func make(services: Services, scenario: String, programsFile: String, logDirectory: String) async throws
        -> World
    {
        let name = "f\(scenario.filter(\.isLetter).prefix(8))\(UInt32.random(in: 0...UInt32.max))"
        let admin = try await PostgresConnection.connect(
            try PostgresURL(parsing: services.databaseURL), applicationName: "referrald-faults admin",
            logger: quietLogger)
        let amqp: AMQPConnection
        do {
            amqp = try await services.connectBroker(
                heartbeatSeconds: 30,
                connectionName: "referrald-faults setup", logger: quietLogger)
        } catch {
            await admin.close()
            throw error
        }
        let world: TestWorld
        do {
            world = try await TestWorld.make(
                name: name, amqpURL: services.amqpURL, databaseURL: services.databaseURL,
                programsFile: programsFile, environment: ["REFERRALD_LOG_LEVEL": "warning"], observer: .rewards,
                admin: admin, broker: amqp, applicationName: "referrald-faults", logger: quietLogger)
        } catch {
            await amqp.close()
            await admin.close()
            throw error
        }
        await amqp.close()
        await admin.close()
        return World(testWorld: world, services: services, logPath: "\(logDirectory)/\(scenario).log")
    }

    /// A world of its own for `body`, torn down after it whether it throws or not: the checks
    /// outside the scenarios (memory, large bodies, poison) run in one each.
    static func with<T>(config: SuiteConfig, scenario: String, _ body: (World) async throws -> T) async throws -> T {
        let world = try await World.make(
            services: config.services, scenario: scenario,
            programsFile: config.programsFile, logDirectory: config.logDirectory)
        do {
            let result = try await body(world)
            await world.tearDown()
            return result
        } catch {
            await world.tearDown()
            throw error
        }
    }

    private init(testWorld: TestWorld, services: Services, logPath: String) {
        self.testWorld = testWorld
        self.services = services
        self.logPath = logPath
    }

    /// One statement batch on a fresh connection, retried until `timeout`: the suite's own view of
    /// the database must survive the very restarts it causes.
    func db<T: Sendable>(
        timeout: Duration = .seconds(120),
        _ body: @escaping @Sendable (isolated PostgresConnection) throws -> T
    ) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                let c = try await PostgresConnection.connect(
                    try PostgresURL(parsing: databaseURL),
                    applicationName: "referrald-faults", logger: quietLogger)
                defer { Task { await c.close() } }
                return try await c.run(body)
            } catch {
                if ContinuousClock.now > deadline { throw error }
                try await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    func count(_ sql: String) async throws -> Int64 {
        try await db { c in try c.query(sql).first?.decode(0, as: Int64.self) ?? -1 }
    }

    /// Messages in a queue, ready and unacknowledged; nil while the broker is away.
    func queueDepth(_ queue: String) async -> UInt32? {
        guard
            let amqp = try? await services.connectBroker(
                heartbeatSeconds: 30,
                connectionName: "referrald-faults probe", logger: quietLogger)
        else { return nil }
        defer { Task { await amqp.close() } }
        return try? await amqp.declareQueue(queue, durable: true, passive: true).messageCount
    }

    func tearDown() async {
        if let amqp = try? await services.connectBroker(
            heartbeatSeconds: 30,
            connectionName: "referrald-faults teardown", logger: quietLogger)
        {
            await testWorld.deleteBrokerObjects(on: amqp)
            await amqp.close()
        }
        if let admin = try? await PostgresConnection.connect(
            try PostgresURL(parsing: services.databaseURL), applicationName: "referrald-faults admin",
            logger: quietLogger)
        {
            await testWorld.dropDatabase(on: admin)
            await admin.close()
        }
    }
}

/// The real `referrald run` processes of a scenario, each with the world's configuration. Their
/// output goes to the scenario's log file, printed when the scenario fails.
final class Daemons {
    let world: World
    let executable: String
    private(set) var processes: [Process] = []
    private let log: FileHandle

    /// Settings over the world's, for every instance.
    let environment: [String: String]

    init(world: World, executable: String, environment: [String: String] = [:]) throws {
        self.world = world
        self.executable = executable
        self.environment = environment
        _ = FileManager.default.createFile(atPath: world.logPath, contents: nil)
        log = try FileHandle(forWritingTo: URL(fileURLWithPath: world.logPath))
    }

    /// Starts one more instance (or replaces instance `slot`); returns its slot.
    @discardableResult
    func spawn(slot: Int? = nil, failpoint: String? = nil) throws -> Int {
        let process = world.testWorld.daemonProcess(binary: executable, extraEnvironment: environment)
        process.environment?["REFERRALD_FAILPOINT"] = failpoint
        process.standardOutput = log
        process.standardError = log
        try process.run()
        if let slot {
            processes[slot] = process
            return slot
        }
        processes.append(process)
        return processes.count - 1
    }

    func signal(_ slot: Int, _ sig: Int32) { kill(processes[slot].processIdentifier, sig) }

    /// Runs another subcommand of the daemon's binary (an operator command) with the world's
    /// settings, to its end; its output goes to the scenario's log and is returned.
    func command(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let process = world.testWorld.daemonProcess(
            binary: executable, arguments: arguments, extraEnvironment: environment)
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        while process.isRunning { try await Task.sleep(for: .milliseconds(20)) }
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        log.write(Data(("$ referrald " + arguments.joined(separator: " ") + "\n" + output).utf8))
        return (process.terminationStatus, output)
    }

    /// Waits for instance `slot` to exit; nil if it is still running at the deadline.
    func waitForExit(_ slot: Int, timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while processes[slot].isRunning {
            if ContinuousClock.now > deadline { return nil }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return processes[slot].terminationStatus
    }

    var running: [Int] { processes.indices.filter { processes[$0].isRunning } }

    /// Ends every instance: SIGTERM, then SIGKILL for one that does not stop in time.
    func stopAll() async {
        for slot in running { signal(slot, SIGTERM) }
        for slot in processes.indices where await waitForExit(slot, timeout: .seconds(20)) == nil {
            signal(slot, SIGKILL)
            _ = await waitForExit(slot, timeout: .seconds(5))
        }
    }

    deinit { try? log.close() }
}
