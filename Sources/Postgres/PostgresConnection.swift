import CLibPQ
import Logging

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
    private let executor: ThreadExecutor
    private var handle: OpaquePointer?
    private var logger: Logger
    /// Receives libpq's notices; kept here because libpq holds only an unretained pointer to it.
    private var noticeSink: NoticeSink?

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        executor.asUnownedSerialExecutor()
    }

    private init(logger: Logger) {
        self.executor = ThreadExecutor(name: "postgres")
        self.logger = logger
    }

    isolated deinit {
        if let handle { PQfinish(handle) }
        executor.shutdown()
    }

    /// Opens a connection and fixes the session settings that decoding relies on:
    /// `TimeZone = 'UTC'`, `DateStyle = 'ISO, MDY'` and `bytea_output = 'hex'`.
    ///
    /// `applicationName` shows in `pg_stat_activity`; an `application_name` in the URL wins.
    public static func connect(
        _ url: PostgresURL, applicationName: String, logger: Logger
    ) async throws(PostgresError) -> PostgresConnection {
        let connection = PostgresConnection(logger: logger)
        try await connection.open(url.connectionParameters(applicationName: applicationName))
        return connection
    }

    private func open(_ parameters: [(String, String)]) throws(PostgresError) {
        let keywords = parameters.map { $0.0 } + [nil]
        let values = parameters.map { $0.1 } + [nil]
        let connection = withCStrings(keywords) { keywords in
            // expand_dbname = 0: a database name is only ever a name, never re-read as a
            // connection string that could override host or sslmode.
            withCStrings(values) { values in PQconnectdbParams(keywords, values, 0) }
        }
        guard let connection else {
            throw PostgresError(code: .connectionFailed, context: "connect", message: "libpq could not allocate a connection")
        }
        guard PQstatus(connection) == CONNECTION_OK else {
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
        PQsetNoticeReceiver(connection, { arg, result in
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

    // MARK: Statements

    /// Runs one statement with text-format parameters (`$1`, `$2`, ...) and returns its rows.
    ///
    /// Uses the extended protocol even without parameters, so a string holding two statements
    /// is rejected by the server instead of running both; use `executeScript` for those.
    public func query(_ sql: String, _ parameters: [PostgresValue] = []) throws(PostgresError) -> PostgresRows {
        let handle = try liveHandle(context: "query")
        var types: [UInt32] = []
        var values: [String?] = []
        types.reserveCapacity(parameters.count)
        values.reserveCapacity(parameters.count)
        for (index, parameter) in parameters.enumerated() {
            types.append(parameter.typeOID)
            values.append(try parameter.encoded(index: index))
        }
        let result = withCStrings(values) { values in
            // Text format in both directions: nil lengths and formats.
            PQexecParams(handle, sql, Int32(parameters.count), types, values, nil, nil, 0)
        }
        return try consume(result, handle: handle, context: "query")
    }

    /// Runs one statement and returns the number of rows it affected.
    @discardableResult
    public func execute(_ sql: String, _ parameters: [PostgresValue] = []) throws(PostgresError) -> Int {
        try query(sql, parameters).affectedRows
    }

    /// Runs a script of several `;`-separated statements without parameters (a migration file),
    /// through the simple query protocol. Outside a transaction the server runs the statements
    /// as one implicit transaction unless the script has its own `BEGIN`/`COMMIT`. Stops at the
    /// first failing statement.
    public func executeScript(_ sql: String) throws(PostgresError) {
        let handle = try liveHandle(context: "script")
        _ = try consume(PQexec(handle, sql), handle: handle, context: "script")
    }

    // MARK: Batches

    /// Runs `body` in a transaction on the connection's thread: `BEGIN`, the body, `COMMIT`;
    /// `ROLLBACK` if the body throws. The body calls `query`/`execute` synchronously.
    ///
    /// Synchronous so that it can also run inside `run`; from outside the actor it is called as
    /// `try await connection.transaction { db in ... }`. The body is `@Sendable` because it runs
    /// on the connection's thread: what it captures crosses threads (non-`@Sendable` closures
    /// with an `isolated` parameter that capture values are rejected by Swift 6.3's region
    /// checker, and `sending` there fails with "pattern that the region-based isolation checker
    /// does not understand").
    ///
    /// If a statement inside failed and the body caught the error and carried on, PostgreSQL has
    /// already aborted the transaction and would answer `COMMIT` with a silent `ROLLBACK`; this
    /// method rolls back and throws `.transactionAborted` instead of reporting success for work
    /// that was discarded.
    public func transaction<T: Sendable>(_ body: @Sendable (isolated PostgresConnection) throws -> T) throws -> T {
        let handle = try liveHandle(context: "transaction.begin")
        guard PQtransactionStatus(handle) == PQTRANS_IDLE else {
            // A nested BEGIN is only a warning, and the inner COMMIT would commit the outer
            // transaction's work halfway through.
            throw PostgresError(
                code: .misuse, context: "transaction.begin", message: "a transaction is already open on this connection")
        }
        _ = try consume(PQexec(handle, "BEGIN"), handle: handle, context: "transaction.begin")
        let value: T
        do {
            value = try body(self)
        } catch {
            rollback(context: "transaction.rollback")
            throw error
        }
        switch PQtransactionStatus(handle) {
        case PQTRANS_INTRANS:
            _ = try consume(PQexec(handle, "COMMIT"), handle: handle, context: "transaction.commit")
            return value
        case PQTRANS_INERROR:
            rollback(context: "transaction.rollback")
            throw PostgresError(
                code: .transactionAborted, context: "transaction.commit",
                message: "a statement in the transaction failed; it was rolled back")
        case PQTRANS_IDLE:
            throw PostgresError(
                code: .misuse, context: "transaction.commit", message: "the body ended the transaction itself")
        default:
            throw PostgresError(code: .connectionLost, context: "transaction.commit", message: Self.errorMessage(handle))
        }
    }

    /// Runs `body` on the connection's thread without a transaction: a batch of statements for
    /// the price of one hop.
    public func run<T: Sendable>(_ body: @Sendable (isolated PostgresConnection) throws -> T) rethrows -> T {
        try body(self)
    }

    /// Best effort: when the connection is gone the server has rolled back already, and the
    /// caller gets the body's error, which says more than a failed ROLLBACK.
    private func rollback(context: String) {
        guard let handle, PQstatus(handle) == CONNECTION_OK, PQtransactionStatus(handle) != PQTRANS_IDLE else { return }
        do {
            _ = try consume(PQexec(handle, "ROLLBACK"), handle: handle, context: context)
        } catch {
            logger.debug("postgres rollback failed", metadata: ["postgres.error": "\(error)"])
        }
    }

    // MARK: libpq plumbing

    private func liveHandle(context: String) throws(PostgresError) -> OpaquePointer {
        guard let handle else { throw PostgresError(code: .connectionClosed, context: context) }
        guard PQstatus(handle) == CONNECTION_OK else {
            throw PostgresError(code: .connectionLost, context: context, message: Self.errorMessage(handle))
        }
        return handle
    }

    /// Turns a `PGresult` into rows or a typed error, and frees it.
    private func consume(_ result: OpaquePointer?, handle: OpaquePointer, context: String) throws(PostgresError) -> PostgresRows {
        guard let result else {
            // libpq returns no result when it is out of memory or cannot send the query.
            let lost = PQstatus(handle) == CONNECTION_BAD
            throw PostgresError(code: lost ? .connectionLost : .server, context: context, message: Self.errorMessage(handle))
        }
        defer { PQclear(result) }
        let status = PQresultStatus(result)
        switch status {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            return Self.rows(of: result)
        case PGRES_COPY_IN, PGRES_COPY_OUT:
            abandonCopy(handle, status)
            throw PostgresError(code: .unsupportedResult, context: context, message: "COPY is not supported")
        default:
            throw Self.error(from: result, handle: handle, context: context)
        }
    }

    /// Ends a COPY that a statement started. Left alone, libpq would stay in COPY state and
    /// every later statement on this connection would fail.
    private func abandonCopy(_ handle: OpaquePointer, _ status: ExecStatusType) {
        if status == PGRES_COPY_IN {
            _ = PQputCopyEnd(handle, "COPY is not supported by this client")
        } else {
            var buffer: UnsafeMutablePointer<CChar>?
            while PQgetCopyData(handle, &buffer, 0) > 0 { PQfreemem(buffer) }
        }
        while let result = PQgetResult(handle) { PQclear(result) }
    }

    private static func rows(of result: OpaquePointer) -> PostgresRows {
        let columnCount = PQnfields(result)
        let rowCount = PQntuples(result)
        let columns = PostgresColumns(
            names: (0..<columnCount).map { String(cString: PQfname(result, $0)) },
            typeOIDs: (0..<columnCount).map { PQftype(result, $0) })
        var rows: [PostgresRow] = []
        rows.reserveCapacity(Int(rowCount))
        for row in 0..<rowCount {
            let values: [String?] = (0..<columnCount).map { column in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            }
            rows.append(PostgresRow(columns: columns, values: values))
        }
        return PostgresRows(
            rows: rows, affectedRows: Int(String(cString: PQcmdTuples(result))) ?? 0, columnNames: columns.names)
    }

    private static func error(from result: OpaquePointer, handle: OpaquePointer, context: String) -> PostgresError {
        func field(_ code: Character) -> String? {
            PQresultErrorField(result, Int32(code.asciiValue!)).map { String(cString: $0) }
        }
        // The server's FATAL 57P01 on pg_terminate_backend, or libpq's "server closed the
        // connection unexpectedly" without any SQLSTATE: either way the socket is gone, and
        // only the connection status says so reliably.
        let lost = PQstatus(handle) == CONNECTION_BAD
        return PostgresError(
            code: lost ? .connectionLost : .server, context: context,
            sqlState: field("C"), message: field("M") ?? errorMessage(handle), detail: field("D"),
            hint: field("H"), constraint: field("n"), schema: field("s"), table: field("t"), column: field("c"))
    }

    private static func errorMessage(_ handle: OpaquePointer) -> String {
        guard let text = PQerrorMessage(handle) else { return "unknown libpq error" }
        return String(cString: text).trimmingTrailingNewlines()
    }
}

/// Routes server notices (`RAISE NOTICE`, "there is no transaction in progress", ...) to the
/// logger at debug or info, libraries' ceiling, with their severity as metadata.
final class NoticeSink: Sendable {
    let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func receive(_ result: OpaquePointer) {
        func field(_ code: Character) -> String? {
            PQresultErrorField(result, Int32(code.asciiValue!)).map { String(cString: $0) }
        }
        let severity = field("V") ?? field("S") ?? "NOTICE"
        let level: Logger.Level = severity == "DEBUG" || severity == "LOG" ? .debug : .info
        var metadata: Logger.Metadata = ["postgres.severity": "\(severity)"]
        if let sqlState = field("C") { metadata["postgres.sqlstate"] = "\(sqlState)" }
        logger.log(level: level, "\(field("M") ?? "postgres notice")", metadata: metadata)
    }
}

/// Calls `body` with C string pointers for `strings` (nil stays a NULL pointer), all kept in one
/// buffer that lives exactly as long as the call, as `PQexecParams` and `PQconnectdbParams` need.
private func withCStrings<R>(_ strings: [String?], _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
    var storage: [CChar] = []
    var offsets: [Int?] = []
    offsets.reserveCapacity(strings.count)
    for string in strings {
        guard let string else {
            offsets.append(nil)
            continue
        }
        offsets.append(storage.count)
        storage.append(contentsOf: string.utf8CString)
    }
    return storage.withUnsafeBufferPointer { buffer in
        body(offsets.map { offset in offset.map { buffer.baseAddress! + $0 } })
    }
}

extension String {
    fileprivate func trimmingTrailingNewlines() -> String {
        var text = Substring(self)
        while text.last == "\n" { text = text.dropLast() }
        return String(text)
    }
}
