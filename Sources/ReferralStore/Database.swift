import Logging
import Postgres
import ReferralCore

/// The one seam between the worker and PostgreSQL: a connection, and the store's operations on
/// it, each a transaction (or a run of statements) whose SQL lives in this module. The worker
/// holds a `Database` and never a driver type, so every statement it causes is one of the
/// store's, and the lock order of decisions stays in `Decisions.decide`.
///
/// Inside the store, a transaction's body runs synchronously on the connection's own thread
/// (`isolated PostgresConnection`), the calling convention of every namespace (`OutboxStore`,
/// `FactStore`...). Errors from the driver leave the store as `DatabaseError`.
public struct Database: Sendable {
    /// Reached by the benchmark, the fault suite and the tests, which poke the database directly.
    package let connection: PostgresConnection

    package init(_ connection: PostgresConnection) { self.connection = connection }

    /// A connection for a one-shot command: no statement cache, no answer deadline and no
    /// session timeouts. `applicationName` shows in `pg_stat_activity`.
    public static func connect(_ url: DatabaseURL, applicationName: String, logger: Logger) async throws -> Database {
        try await converting {
            Database(
                try await PostgresConnection.connect(url.postgres, applicationName: applicationName, logger: logger))
        }
    }

    /// A pipeline's connection: every wait bounded, so that a partition or a stuck server ends
    /// in an error the pipeline retries instead of a batch held for ever. The URL's
    /// `connect_timeout` wins over the 10 s used when it has none (libpq would wait for ever on
    /// a connect whose packets vanish); a statement unanswered 10 s past `statement_timeout`
    /// fails as a lost connection (the server ends every statement it is still running by then,
    /// so the silence is the network's); and the session's timeouts end what the server holds.
    public static func connectWorker(
        _ url: DatabaseURL, applicationName: String, logger: Logger, session: WorkerSession
    ) async throws -> Database {
        var url = url.postgres
        if url.connectTimeout == nil { url.connectTimeout = 10 }
        return try await converting {
            let connection = try await PostgresConnection.connect(
                url, applicationName: applicationName, logger: logger,
                answerTimeout: .microseconds(session.statementTimeout.microseconds) + .seconds(10),
                statementCache: session.statementCache)
            try await connection.run { c in try session.configure(c) }
            return Database(connection)
        }
    }

    /// Closes the connection; a later call fails as a closed connection.
    public func close() async { await connection.close() }

    /// Runs `body` in one transaction on the connection's thread.
    package func transaction<T: Sendable>(
        _ mode: TransactionMode = .readWrite,
        _ body: @Sendable (isolated PostgresConnection) throws -> T
    ) async throws -> T {
        try await Self.converting { try await connection.transaction(mode, body) }
    }

    /// Runs `body` on the connection's thread without a transaction: several statements for the
    /// price of one hop.
    package func run<T: Sendable>(_ body: @Sendable (isolated PostgresConnection) throws -> T) async throws -> T {
        try await Self.converting { try await connection.run(body) }
    }

    /// Rethrows the driver's errors as the store's; every other error (a failpoint's, a
    /// program refused at registration) passes unchanged.
    package static func converting<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as PostgresError {
            throw DatabaseError(error)
        }
    }
}

/// A `postgres://` URL, parsed. `description` hides the password.
public struct DatabaseURL: Sendable, CustomStringConvertible {
    let postgres: PostgresURL

    public init(parsing text: String) throws(DatabaseError) {
        do {
            postgres = try PostgresURL(parsing: text)
        } catch {
            throw DatabaseError(error)
        }
    }

    public var description: String { postgres.description }
}

/// An error from the database, classified the way the worker acts on it. Its `description` is
/// safe to log (the kind, the operation, the SQLSTATE and schema objects, never the server's
/// message, which may quote user data); `debugDescription` adds the message for a developer.
public struct DatabaseError: Error, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    package let underlying: PostgresError

    package init(_ underlying: PostgresError) { self.underlying = underlying }

    /// Retrying the same work can succeed, on a fresh connection after a back-off: the
    /// connection failed or was lost, the server is shutting down, or a lock or resource was
    /// not available. Everything else (a constraint, a row that cannot be decoded) fails the
    /// same way every time and must not be retried in a loop.
    public var isTransient: Bool { underlying.isTransient }

    /// A deadlock or serialisation failure: the transaction rolled back because of another one,
    /// and the same work retried at once on the same connection will most likely succeed.
    public var isLockConflict: Bool { underlying.isLockConflict }

    /// The five-character SQLSTATE, when the server (or libpq) reported one.
    public var sqlState: String? { underlying.sqlState }

    /// The operation that failed, e.g. `connect`, `query`, `transaction.commit`, `decode`.
    public var context: String { underlying.context }

    public var description: String { underlying.description }
    public var debugDescription: String { underlying.debugDescription }
}

/// The session of a pipeline's connection (REFERRALD_DB_*).
public struct WorkerSession: Sendable {
    public var statementTimeout: Span
    public var lockTimeout: Span
    public var idleInTransactionTimeout: Span
    /// Statements prepared per connection and reused; 0 behind a pooler that hands a session's
    /// statements to other sessions.
    public var statementCache: Int

    public init(statementTimeout: Span, lockTimeout: Span, idleInTransactionTimeout: Span, statementCache: Int) {
        self.statementTimeout = statementTimeout
        self.lockTimeout = lockTimeout
        self.idleInTransactionTimeout = idleInTransactionTimeout
        self.statementCache = statementCache
    }

    /// Applies the session settings on the connection's thread, before its first transaction.
    ///
    /// JIT off: a statement whose rows the planner overestimates (a recursive query) passes
    /// `jit_above_cost`, and compiling it costs more than running it. The worker's statements
    /// are all short; JIT never pays for itself on them.
    ///
    /// No parallel query: on a large database the planner chose parallel scans for a batch's
    /// loads, starting background workers for a few milliseconds of work each time, on cores the
    /// pipeline already uses.
    ///
    /// `random_page_cost` 1.1, the usual value for data in memory or on SSDs (the default prices
    /// spinning disks): with the default, a batch's lookups by several hundred keys became
    /// sequential scans once a table grew, and a batch's cost grew with the table.
    ///
    /// The timeouts bound what the server holds for a client that went quiet: a statement
    /// stuck behind something (`statement_timeout`), a wait for another transaction's locks
    /// (`lock_timeout`: a transient error, the batch is retried), and a transaction whose client
    /// vanished mid-way (`idle_in_transaction_session_timeout`: without it a partitioned
    /// pipeline's transaction keeps its row locks, and every later batch touching them waits
    /// until the server's TCP notices, hours later).
    func configure(_ c: isolated PostgresConnection) throws {
        try c.execute("SET jit = off")
        try c.execute("SET max_parallel_workers_per_gather = 0")
        try c.execute("SET random_page_cost = 1.1")
        // SET takes no parameters; the values are whole milliseconds formatted here.
        try c.execute("SET statement_timeout = \(statementTimeout.microseconds / 1000)")
        try c.execute("SET lock_timeout = \(lockTimeout.microseconds / 1000)")
        try c.execute("SET idle_in_transaction_session_timeout = \(idleInTransactionTimeout.microseconds / 1000)")
    }
}
