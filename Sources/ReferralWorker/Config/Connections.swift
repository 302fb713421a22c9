import AMQP
import Logging
import Postgres

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
}
