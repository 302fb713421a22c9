import AMQP
import Foundation
import Logging
import Testing

/// Access to the test broker (env `REFERRALD_TEST_AMQP_URL`) and its `rabbitmqctl`. Every test
/// makes its own queues and exchanges with a random suffix and deletes them: other suites use
/// the same vhost at the same time.
enum AMQPTestBroker {
    static func url() throws -> AMQPURL {
        try AMQPURL(
            parsing: ProcessInfo.processInfo.environment["REFERRALD_TEST_AMQP_URL"]
                ?? "amqp://referrald:referrald@127.0.0.1:5672/referrald_test")
    }

    static let logger = Logger(label: "amqp-tests") { _ in SwiftLogNoOpLogHandler() }

    static func unique(_ prefix: String) -> String {
        "amqp-test.\(prefix).\(UUID().uuidString.prefix(8).lowercased())"
    }

    static func connect(_ name: String, heartbeatSeconds: Int = 30) async throws -> AMQPConnection {
        try await AMQPConnection.connect(
            url(), heartbeatSeconds: heartbeatSeconds, connectionName: name, logger: logger)
    }

    /// Runs `body` with a fresh connection, then deletes the named queues and exchanges with a
    /// second connection (the first may have been closed by the test) and closes both.
    static func withConnection(
        _ name: String, queues: [String] = [], exchanges: [String] = [],
        _ body: (AMQPConnection) async throws -> Void
    ) async throws {
        let connection = try await connect(name)
        var failure: (any Error)?
        do { try await body(connection) } catch { failure = error }
        await connection.close()
        let cleaner = try await connect(name + ".cleanup")
        for queue in queues { try? await cleaner.deleteQueue(queue) }
        for exchange in exchanges { try? await cleaner.deleteExchange(exchange) }
        await cleaner.close()
        if let failure { throw failure }
    }

    static func body(_ text: String) -> [UInt8] { Array(text.utf8) }

    static func text(_ delivery: Delivery) -> String { String(decoding: delivery.body, as: UTF8.self) }

    /// Collects deliveries until `count` arrived or `timeout` passed.
    static func receive(
        _ count: Int, from connection: AMQPConnection, timeout: Duration = .seconds(15)
    ) async throws -> [Delivery] {
        var received: [Delivery] = []
        let deadline = ContinuousClock.now + timeout
        while received.count < count, ContinuousClock.now < deadline {
            received += try await connection.nextDeliveries(max: count - received.count, wait: .milliseconds(500))
        }
        return received
    }

    /// Polls a condition (e.g. a queue's message count, which a quorum queue updates
    /// asynchronously after an ack) instead of sleeping a fixed time.
    static func eventually(
        timeout: Duration = .seconds(10), _ condition: () async throws -> Bool
    ) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return try await condition()
    }

    static func rabbitmqctl(_ arguments: [String]) async throws -> String {
        // The node scripts/services.sh started; rabbitmqctl finds its cookie in $HOME.
        let node = ProcessInfo.processInfo.environment["REFERRALD_RABBITMQ_NODE"] ?? "referrald-5672@localhost"
        let result = try await Subprocess.run(
            URL(fileURLWithPath: "/usr/lib/rabbitmq/bin/rabbitmqctl"), ["-n", node] + arguments)
        guard result.status == 0 else {
            throw RabbitmqctlError(arguments: arguments, output: result.output + result.errors)
        }
        return result.output
    }

    /// Closes, from the broker's side, the connection whose client properties carry this
    /// `connection_name`: the broker sends connection.close 320 CONNECTION_FORCED.
    static func forceClose(connectionNamed name: String) async throws {
        let listing = try await rabbitmqctl(["list_connections", "-q", "pid", "client_properties"])
        let lines = listing.split(separator: "\n").filter { $0.contains("{\"connection_name\",\"\(name)\"}") }
        guard lines.count == 1, let pid = lines[0].split(separator: "\t").first else {
            throw RabbitmqctlError(arguments: ["find connection", name], output: listing)
        }
        _ = try await rabbitmqctl(["close_connection", String(pid), "forced by AMQP test"])
    }

    struct RabbitmqctlError: Error, CustomStringConvertible {
        var arguments: [String]
        var output: String
        var description: String { "rabbitmqctl \(arguments.joined(separator: " ")) failed: \(output)" }
    }
}
