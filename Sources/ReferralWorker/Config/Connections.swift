import AMQP
import Logging
import ReferralCore
import ReferralStore
import Synchronization

/// The one way the daemon's commands connect, so every connection gets the same URL parsing,
/// TLS files and heartbeat (a command that forgot the TLS files would fail only on amqps://).
extension Settings {
    /// With several nodes in REFERRALD_AMQP_URL, each connect starts at the node after the one
    /// the process connected to last, and tries every node once before it fails (the caller's
    /// back-off then applies): a lost connection moves on to the next node of the cluster
    /// instead of waiting for the one that went away.
    public func connectAMQP(name: String, logger: Logger) async throws -> AMQPConnection {
        let nodes = try AMQPURL.parseList(amqpURL)
        let (connection, node) = try await AMQPConnection.connect(
            anyOf: nodes, startingAt: amqpNodes.next(count: nodes.count), tls: amqpTLS,
            heartbeatSeconds: heartbeatSeconds,
            connectionName: name, logger: logger
        ) { url, error in
            guard nodes.count > 1 else { return }
            logger.warning(
                "broker node unreachable; trying the next",
                metadata: ["amqp.node": "\(url.host):\(url.port)", "error": "\(error)"])
        }
        amqpNodes.connected(node)
        return connection
    }

    public func connectDatabase(name: String, logger: Logger) async throws -> Database {
        try await Database.connect(try DatabaseURL(parsing: databaseURL), applicationName: name, logger: logger)
    }

    /// A pipeline's connection, with every wait bounded (`Database.connectWorker`).
    public func connectWorkerDatabase(name: String, logger: Logger) async throws -> Database {
        try await Database.connectWorker(
            try DatabaseURL(parsing: databaseURL), applicationName: name, logger: logger,
            session: WorkerSession(
                statementTimeout: statementTimeout, lockTimeout: lockTimeout,
                idleInTransactionTimeout: idleInTransactionTimeout, statementCache: statementCache))
    }
}

/// Which node of REFERRALD_AMQP_URL a process's next connection tries first: the one after the
/// node it connected to last. Shared by every copy of the settings (a class), so all the
/// pipelines and commands of a process move on together.
public final class AMQPNodeRotation: Sendable {
    private let last = Atomic<Int>(-1)

    public init() {}

    func next(count: Int) -> Int { (last.load(ordering: .relaxed) + 1) % max(count, 1) }

    func connected(_ index: Int) { last.store(index, ordering: .relaxed) }
}
