import AMQP
import Foundation
import Logging
import Postgres
import ReferralTestWorld
import ReferralWorker

let benchLogger: Logger = {
    var l = Logger(label: "referrald-bench")
    l.logLevel = .warning
    return l
}()

/// One isolated world per run (`TestWorld`, as the integration tests build it), with the
/// connections the bench keeps open over it: the world's database, and a producer with confirms
/// that also samples queue depths. Dropped at the end.
struct Bed: Sendable {
    let world: TestWorld
    let amqpURL: AMQPURL
    let admin: PostgresConnection
    let db: PostgresConnection
    let producer: AMQPConnection

    var name: String { world.name }
    var settings: Settings { world.settings }
    var environment: [String: String] { world.environment }
    var observerQueue: String { world.observerQueue }

    static func make(amqpURL: String, databaseURL: String, programsFile: String) async throws -> Bed {
        let name = "bench\(UInt32.random(in: 0...UInt32.max))"
        let admin = try await PostgresConnection.connect(
            try PostgresURL(parsing: databaseURL),
            applicationName: "referrald-bench-admin", logger: benchLogger)
        let url = try AMQPURL(parsing: amqpURL)
        let producer = try await AMQPConnection.connect(
            url, heartbeatSeconds: 30, connectionName: "\(name) producer",
            logger: benchLogger)
        try await producer.enableConfirms()
        let world = try await TestWorld.make(
            name: name, amqpURL: amqpURL, databaseURL: databaseURL, programsFile: programsFile,
            // The daemon writes to the bench's stderr: quiet unless the caller asks for its log
            // (REFERRALD_LOG_LEVEL=debug logs every batch's size and time).
            environment: [
                "REFERRALD_LOG_LEVEL": ProcessInfo.processInfo.environment["REFERRALD_LOG_LEVEL"] ?? "warning"
            ],
            admin: admin, broker: producer, applicationName: "referrald-bench", logger: benchLogger)
        let db = try await world.connectDatabase(applicationName: "referrald-bench", logger: benchLogger)
        return Bed(world: world, amqpURL: url, admin: admin, db: db, producer: producer)
    }

    func publish(_ messages: ArraySlice<BenchMessage>) async throws {
        let outcomes = try await producer.publish(
            messages.map { world.upstreamMessage(type: $0.routingKey, body: $0.body) })
        guard outcomes.allSatisfy({ $0 == .confirmed }) else {
            throw BenchError("the broker did not confirm every published message: \(Set(outcomes.map { "\($0)" }))")
        }
    }

    /// Starts the built `referrald run` with this bed's configuration, tuned for the run.
    func spawnDaemon(binary: String, batchSize: Int, batchWaitMs: Int, workers: Int, prefetch: Int = 0) throws
        -> Process
    {
        // Room for every lane's batch and the next one read ahead; the mix's bodies are under
        // 1 KiB, so the memory budget follows the prefetch rather than capping it.
        let prefetch = prefetch > 0 ? prefetch : max(256, (workers + 1) * batchSize)
        return try world.spawnDaemon(
            binary: binary,
            extraEnvironment: [
                "REFERRALD_BATCH_SIZE": String(batchSize),
                "REFERRALD_BATCH_WAIT_MS": String(batchWaitMs),
                "REFERRALD_PREFETCH": String(prefetch),
                "REFERRALD_MEMORY_BUDGET_BYTES": String(max(268_435_456, prefetch * 262_144)),
                "REFERRALD_WORKERS": String(workers),
            ])
    }

    func tearDown() async {
        await world.deleteBrokerObjects(on: producer)
        await producer.close()
        await db.close()
        await world.dropDatabase(on: admin)
        await admin.close()
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
