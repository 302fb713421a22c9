import Foundation
import Logging
import Postgres

/// The database the Postgres tests run against: `REFERRALD_TEST_DATABASE_URL`, or the local
/// server that `scripts/services.sh start` runs.
func postgresTestURL() throws -> PostgresURL {
    let text =
        ProcessInfo.processInfo.environment["REFERRALD_TEST_DATABASE_URL"]
        ?? "postgres://referrald:referrald@127.0.0.1:54329/referrald"
    return try PostgresURL(parsing: text)
}

/// Log records kept in memory, so tests can assert what the module logged.
/// `@unchecked Sendable`: `records` is only touched with `lock` held.
final class CapturedLogs: @unchecked Sendable {
    struct Record: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: Logger.Metadata
    }

    private let lock = NSLock()
    private var records: [Record] = []

    func append(_ record: Record) { lock.withLock { records.append(record) } }
    var all: [Record] { lock.withLock { records } }

    func logger() -> Logger {
        Logger(label: "postgres-tests") { _ in CapturingLogHandler(logs: self) }
    }
}

struct CapturingLogHandler: LogHandler {
    let logs: CapturedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        logs.append(
            .init(
                level: event.level, message: "\(event.message)",
                metadata: metadata.merging(event.metadata ?? [:]) { $1 }))
    }
}

/// Runs `body` with a connection whose `search_path` is a fresh schema, dropped afterwards, so
/// tests running in parallel on the same database never see each other's tables.
func withTestConnection<T>(
    logs: CapturedLogs = CapturedLogs(), statementCache: Int = 0,
    _ body: (PostgresConnection) async throws -> T
) async throws -> T {
    let connection = try await PostgresConnection.connect(
        postgresTestURL(), applicationName: "referrald-postgres-tests", logger: logs.logger(),
        statementCache: statementCache)
    // Generated here from hex digits only, so it is safe to place in the SQL as an identifier.
    let schema = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
    try await connection.executeScript("CREATE SCHEMA \(schema); SET search_path TO \(schema)")
    do {
        let result = try await body(connection)
        try await dropSchema(schema, connection)
        return result
    } catch {
        try? await dropSchema(schema, connection)
        throw error
    }
}

/// Drops through a new connection when the test's own one was closed or killed on purpose.
private func dropSchema(_ schema: String, _ connection: PostgresConnection) async throws {
    if await connection.isConnected {
        try await connection.executeScript("DROP SCHEMA \(schema) CASCADE")
        await connection.close()
    } else {
        let cleanup = try await PostgresConnection.connect(
            postgresTestURL(), applicationName: "referrald-postgres-tests", logger: Logger(label: "cleanup"))
        try await cleanup.executeScript("DROP SCHEMA \(schema) CASCADE")
        await cleanup.close()
    }
}

/// The calling OS thread's own name, as `top -H` shows it (Linux).
func currentThreadName() -> String {
    let name = try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)
    return name?.trimmingCharacters(in: .newlines) ?? "?"
}
