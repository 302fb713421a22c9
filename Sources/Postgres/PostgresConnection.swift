import CLibPQ
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// One libpq connection, confined to its own OS thread.
///
/// The actor runs on a `ThreadExecutor`: every method, and every closure passed to
/// `transaction` or `run`, executes on the connection's dedicated thread, so libpq's blocking
/// calls never occupy the cooperative pool, and the `PGconn` is never touched by two threads.
/// The handle never leaves the actor.
///
/// Each `await` into the actor is a thread hop. Work that needs several statements should go
/// through `transaction` or `run`, whose body calls the synchronous `query`/`execute` without
/// hopping.
///
/// A lost connection is not repaired: statements throw `PostgresError` with code
/// `.connectionLost` (`isTransient == true`), and the caller opens a new connection.
public actor PostgresConnection {
    let executor: ThreadExecutor
    var handle: OpaquePointer?
    var logger: Logger
    /// Receives libpq's notices; kept here because libpq holds only an unretained pointer to it.
    var noticeSink: NoticeSink?
    /// How long a statement may go without an answer before the connection is given up as
    /// lost; nil waits as long as the socket lives. Keepalives and `tcp_user_timeout` end a
    /// socket whose peer vanished, but not one whose peer's kernel still answers while nothing
    /// behind it does: a proxy or pooler (pgbouncer, HAProxy, a cloud load balancer) cut off
    /// from the server, or a frozen server. A statement sent then would wait for ever, holding
    /// its batch.
    let answerTimeout: Duration?
    /// Why the connection was given up (an answer deadline), for every later statement: the
    /// handle is gone, but the caller must still see a transient loss, not a close it never did.
    var lost: PostgresError?
    /// Statements prepared on this session, by text and parameter types, up to
    /// `statementCacheCapacity`: the server then plans each once instead of on every call:
    /// the daemon's statements join unnested arrays through CTEs, and planning one can cost as
    /// much as running it. Not rolled back with a transaction, and gone with the session, as prepared statements are.
    var prepared: [String: String] = [:]
    let statementCacheCapacity: Int
    /// Names handed out so far: a name is never reused, even for a preparation the server refused.
    var preparedNames = 0
    /// What was sent in pipeline mode and not read yet (`executeDeferred`), in the order sent.
    var deferred: [Pipelined] = []

    enum Pipelined {
        /// A statement, followed by a sync of its own.
        case statement
        /// The preparation of a statement first met in the pipeline, with its cache key,
        /// forgotten if the server refuses it. No sync: its statement comes right after it.
        case preparation(key: String)
    }

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        executor.asUnownedSerialExecutor()
    }

    private init(logger: Logger, answerTimeout: Duration?, statementCache: Int) {
        self.executor = ThreadExecutor(name: "postgres")
        self.logger = logger
        self.answerTimeout = answerTimeout
        self.statementCacheCapacity = statementCache
    }

    isolated deinit {
        if let handle { PQfinish(handle) }
        executor.shutdown()
    }

    /// Opens a connection and fixes the session settings that decoding relies on:
    /// `TimeZone = 'UTC'`, `DateStyle = 'ISO, MDY'` and `bytea_output = 'hex'`.
    ///
    /// `applicationName` shows in `pg_stat_activity`; an `application_name` in the URL wins.
    /// With `answerTimeout`, a statement unanswered for that long fails with `.connectionLost`
    /// and closes the connection (see `answerTimeout`): set it above the session's
    /// `statement_timeout`, which ends every statement the server is still working on sooner.
    /// With `statementCache` above 0, up to that many distinct statements are prepared on the
    /// session and reused; leave it at 0 behind a pooler that hands a session's statements to
    /// other sessions (PgBouncer in transaction mode before 1.21).
    public static func connect(
        _ url: PostgresURL, applicationName: String, logger: Logger, answerTimeout: Duration? = nil,
        statementCache: Int = 0
    ) async throws(PostgresError) -> PostgresConnection {
        let connection = PostgresConnection(
            logger: logger, answerTimeout: answerTimeout, statementCache: statementCache)
        try await connection.open(url.connectionParameters(applicationName: applicationName))
        return connection
    }

    func open(_ parameters: [(String, String)]) throws(PostgresError) {
        let keywords = parameters.map { $0.0 } + [nil]
        let values = parameters.map { $0.1 } + [nil]
        let connection = withCStrings(keywords) { keywords in
            // expand_dbname = 0: a database name is only ever a name, never re-read as a
            // connection string that could override host or sslmode.
            withCStrings(values) { values in PQconnectdbParams(keywords, values, 0) }
        }
        guard let connection else {
            throw PostgresError(
                code: .connectionFailed, context: "connect", message: "libpq could not allocate a connection")
        }
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = Self.errorMessage(connection)
            PQfinish(connection)
            throw PostgresError(code: .connectionFailed, context: "connect", message: message)
        }
        // Non-blocking sends: a statement's parameters are written as the socket takes them,
        // under the answer deadline, instead of inside a send() that a stalled peer blocks.
        guard PQsetnonblocking(connection, 1) == 0 else {
            let message = Self.errorMessage(connection)
            PQfinish(connection)
            throw PostgresError(code: .connectionFailed, context: "connect", message: message)
        }
        handle = connection
        logger[metadataKey: "postgres.backend_pid"] = "\(PQbackendPID(connection))"

        let sink = NoticeSink(logger: logger)
        noticeSink = sink
        // libpq calls the receiver on this thread, from inside a PQexec* call, while the actor
        // and so `noticeSink` are alive. It is a C function pointer and cannot capture: the
        // sink travels through `arg`.
        PQsetNoticeReceiver(
            connection,
            { arg, result in
                guard let arg, let result else { return }
                Unmanaged<NoticeSink>.fromOpaque(arg).takeUnretainedValue().receive(result)
            }, Unmanaged.passUnretained(sink).toOpaque())

        // Timestamps and bytea are decoded from text, so their output format must not depend on
        // the server's or role's defaults.
        try executeScript("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET bytea_output = 'hex'")
        logger.debug("postgres connected")
    }

    /// Closes the connection. Later statements throw `.connectionClosed`.
    public func close() {
        lost = nil
        guard let handle else { return }
        PQfinish(handle)
        self.handle = nil
        noticeSink = nil
    }

    /// Whether the connection was healthy after its last statement. A server that went away
    /// silently is only noticed by the next statement.
    public var isConnected: Bool {
        handle.map { PQstatus($0) == CONNECTION_OK } ?? false
    }

    /// The server process serving this connection, for `pg_terminate_backend` or logs; 0 once closed.
    public var backendPID: Int32 {
        handle.map { PQbackendPID($0) } ?? 0
    }
}
