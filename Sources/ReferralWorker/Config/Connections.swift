import AMQP
import Logging
import Postgres
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

    public func connectPostgres(name: String, logger: Logger) async throws -> PostgresConnection {
        try await PostgresConnection.connect(
            try PostgresURL(parsing: databaseURL), applicationName: name, logger: logger)
    }

    /// A pipeline's connection: every wait bounded, so that a partition or a stuck server ends
    /// in an error the pipeline retries instead of a batch held for ever. The URL's
    /// `connect_timeout` wins over the 10 s used when it has none (libpq would wait for ever on
    /// a connect whose packets vanish); a statement unanswered 10 s past `statement_timeout`
    /// fails as a lost connection (the server ends every statement it is still running by then,
    /// so the silence is the network's); and the session's timeouts end what the server holds.
    public func connectWorkerPostgres(name: String, logger: Logger) async throws -> PostgresConnection {
        var url = try PostgresURL(parsing: databaseURL)
        if url.connectTimeout == nil { url.connectTimeout = 10 }
        let connection = try await PostgresConnection.connect(
            url, applicationName: name, logger: logger,
            answerTimeout: .microseconds(statementTimeout.microseconds) + .seconds(10), statementCache: statementCache)
        let timeouts = Store.SessionTimeouts(
            statement: statementTimeout, lock: lockTimeout,
            idleInTransaction: idleInTransactionTimeout)
        try await connection.run { c in try Store.configureWorkerSession(c, timeouts: timeouts) }
        return connection
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
