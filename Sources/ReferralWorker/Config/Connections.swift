import AMQP
import Logging
import Postgres
import ReferralCore
import ReferralStore

/// The one way the daemon's commands connect, so every connection gets the same URL parsing,
/// TLS files and heartbeat (a command that forgot the TLS files would fail only on amqps://).
extension Settings {
    public func connectAMQP(name: String, logger: Logger) async throws -> AMQPConnection {
        try await AMQPConnection.connect(try AMQPURL(parsing: amqpURL), tls: amqpTLS, heartbeatSeconds: heartbeatSeconds,
                                         connectionName: name, logger: logger)
    }

    public func connectPostgres(name: String, logger: Logger) async throws -> PostgresConnection {
        try await PostgresConnection.connect(try PostgresURL(parsing: databaseURL), applicationName: name, logger: logger)
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
            answerTimeout: .microseconds(statementTimeout.microseconds) + .seconds(10))
        let timeouts = Store.SessionTimeouts(statement: statementTimeout, lock: lockTimeout,
                                             idleInTransaction: idleInTransactionTimeout)
        try await connection.run { c in try Store.configureWorkerSession(c, timeouts: timeouts) }
        return connection
    }
}
