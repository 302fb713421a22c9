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
    private let executor: ThreadExecutor
    private var handle: OpaquePointer?
    private var logger: Logger
    /// Receives libpq's notices; kept here because libpq holds only an unretained pointer to it.
    private var noticeSink: NoticeSink?
    /// How long a statement may go without an answer before the connection is given up as
    /// lost; nil waits as long as the socket lives. Keepalives and `tcp_user_timeout` end a
    /// socket whose peer vanished, but not one whose peer's kernel still answers while nothing
    /// behind it does: a proxy or pooler (pgbouncer, HAProxy, a cloud load balancer) cut off
    /// from the server, or a frozen server. A statement sent then would wait for ever, holding
    /// its batch.
    private let answerTimeout: Duration?
    /// Why the connection was given up (an answer deadline), for every later statement: the
    /// handle is gone, but the caller must still see a transient loss, not a close it never did.
    private var lost: PostgresError?
    /// Statements prepared on this session, by text and parameter types, up to
    /// `statementCacheCapacity`: the server then plans each once instead of on every call:
    /// the daemon's statements join unnested arrays through CTEs, and planning one can cost as
    /// much as running it. Not rolled back with a transaction, and gone with the session, as prepared statements are.
    private var prepared: [String: String] = [:]
    private let statementCacheCapacity: Int
    /// Names handed out so far: a name is never reused, even for a preparation the server refused.
    private var preparedNames = 0
    /// What was sent in pipeline mode and not read yet (`executeDeferred`), in the order sent.
    private var deferred: [Pipelined] = []

    private enum Pipelined {
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

    private func open(_ parameters: [(String, String)]) throws(PostgresError) {
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

    // MARK: Statements

    /// Runs one statement with parameters (`$1`, `$2`, ...) and returns its rows.
    ///
    /// Uses the extended protocol even without parameters, so a string holding two statements
    /// is rejected by the server instead of running both; use `executeScript` for those.
    public func query(_ sql: String, _ parameters: [PostgresValue] = []) throws(PostgresError) -> PostgresRows {
        if !deferred.isEmpty {
            // Rides in the pipeline: the deferred statements and this one cost one round trip.
            try send(sql, parameters, context: "query", pipelined: true)
            let result = try syncPipeline(keepingLast: true)
            let handle = try liveHandle(context: "query")
            return try consume(result, handle: handle, context: "query")
        }
        let handle = try liveHandle(context: "query")
        let sent = try send(sql, parameters, context: "query", pipelined: false)
        let result = try awaitResult(sent: sent, handle: handle, context: "query")
        return try consume(result, handle: handle, context: "query")
    }

    /// Sends a statement whose result nobody reads (an insert, an update, a lock) without waiting
    /// for it: libpq's pipeline mode. It runs on the server in order, before anything sent after
    /// it, and its answer is read with the next `query`'s, by `syncDeferred`, or before the next
    /// simple statement (`COMMIT`, `ROLLBACK`). An error it meets is thrown there, the first one
    /// if several (the statements after it fail on the aborted transaction). Sent one by one, a batch's
    /// write-only statements each cost a round trip, and a small batch spends most of its time
    /// waiting on a busy machine for two processes to be scheduled in turn.
    /// Outside a transaction it runs at once: nothing would read its answer.
    public func executeDeferred(_ sql: String, _ parameters: [PostgresValue] = []) throws(PostgresError) {
        guard PQtransactionStatus(try liveHandle(context: "deferred")) != PQTRANS_IDLE || !deferred.isEmpty else {
            _ = try query(sql, parameters)
            return
        }
        try send(sql, parameters, context: "deferred", pipelined: true)
        // A sync after each statement, not one for the pipeline: until a sync the server counts
        // the transaction as running, not idle in one, so `idle_in_transaction_session_timeout`
        // never ends it. A connection cut mid-pipeline (the fault suite's partition) then left a
        // backend waiting for the rest of the pipeline for ever, holding the batch's locks, and
        // every retry of those events timed out behind them until they were dead-lettered.
        let handle = try liveHandle(context: "deferred")
        guard PQpipelineSync(handle) == 1 else {
            throw PostgresError(code: .connectionLost, context: "deferred", message: Self.errorMessage(handle))
        }
        deferred.append(.statement)
        // Hands the socket what it takes now; the rest goes with the next flush.
        if PQflush(handle) < 0 {
            throw PostgresError(code: .connectionLost, context: "deferred", message: Self.errorMessage(handle))
        }
    }

    /// Reads the answers of the deferred statements; throws the first error among them.
    public func syncDeferred() throws(PostgresError) {
        guard !deferred.isEmpty else { return }
        _ = try syncPipeline(keepingLast: false)
    }

    /// Ends the pipeline: each statement's results in order, each followed by its sync's. With
    /// `keepingLast`, returns the last statement's result (a `query` that joined the pipeline)
    /// for the caller to consume; an earlier statement's error wins over it.
    private func syncPipeline(keepingLast: Bool) throws(PostgresError) -> OpaquePointer? {
        let handle = try liveHandle(context: "pipeline")
        let sent = deferred + (keepingLast ? [.statement] : [])
        let statements = sent.count
        deferred = []
        let deadline = answerTimeout.map { ContinuousClock.now + $0 }
        if keepingLast, PQpipelineSync(handle) != 1 {
            throw PostgresError(code: .connectionLost, context: "pipeline", message: Self.errorMessage(handle))
        }
        guard try flushAll(handle, deadline: deadline, context: "pipeline") else {
            throw PostgresError(code: .connectionLost, context: "pipeline", message: Self.errorMessage(handle))
        }
        var firstError: PostgresError?
        var last: OpaquePointer?
        for index in 0..<statements {
            // Each statement's results end with a NULL.
            while let result = try nextResult(handle, deadline: deadline) {
                let status = PQresultStatus(result)
                if status == PGRES_FATAL_ERROR || status == PGRES_PIPELINE_ABORTED,
                    case .preparation(let key) = sent[index]
                {
                    prepared.removeValue(forKey: key)
                }
                if status == PGRES_FATAL_ERROR, firstError == nil {
                    firstError = Self.error(from: result, handle: handle, context: "pipeline")
                }
                if keepingLast, index == statements - 1, status != PGRES_PIPELINE_ABORTED, last == nil {
                    last = result
                } else {
                    PQclear(result)
                }
            }
            // A statement's sync answers after it.
            guard case .statement = sent[index] else { continue }
            while let result = try nextResult(handle, deadline: deadline) {
                let status = PQresultStatus(result)
                PQclear(result)
                if status == PGRES_PIPELINE_SYNC { break }
            }
        }
        _ = PQexitPipelineMode(handle)
        if let firstError {
            if let last { PQclear(last) }
            throw firstError
        }
        return last
    }

    /// The next result in pipeline mode, waiting for the socket under the deadline.
    private func nextResult(_ handle: OpaquePointer, deadline: ContinuousClock.Instant?) throws(PostgresError)
        -> OpaquePointer?
    {
        while PQisBusy(handle) == 1 {
            try waitForSocket(handle, writable: false, deadline: deadline, context: "pipeline")
            guard PQconsumeInput(handle) == 1 else {
                throw PostgresError(code: .connectionLost, context: "pipeline", message: Self.errorMessage(handle))
            }
        }
        return PQgetResult(handle)
    }

    /// Encodes and sends one statement with the extended protocol: prepared when the statement
    /// cache holds it or has room for it, unnamed otherwise. `pipelined` sends it in pipeline
    /// mode (entered here if it is not yet). Returns libpq's send status.
    @discardableResult
    private func send(
        _ sql: String, _ parameters: [PostgresValue], context: String,
        pipelined: Bool
    ) throws(PostgresError) -> Int32 {
        let handle = try liveHandle(context: context)
        var types: [UInt32] = []
        var texts: [String?] = []
        var lengths: [Int32] = []
        var formats: [Int32] = []
        var binaries: [(index: Int, bytes: [UInt8])] = []
        types.reserveCapacity(parameters.count)
        texts.reserveCapacity(parameters.count)
        for (index, parameter) in parameters.enumerated() {
            types.append(parameter.typeOID)
            switch try parameter.encoded(index: index) {
            case .null:
                texts.append(nil)
                lengths.append(0)
                formats.append(0)
            case .text(let text):
                texts.append(text)
                lengths.append(0)
                formats.append(0)
            case .binary(let bytes):
                guard bytes.count <= Int(Int32.max) else {
                    throw PostgresError(
                        code: .invalidParameter, context: "parameter $\(index + 1)",
                        message: "bytea of \(bytes.count) bytes is over the protocol's 2 GiB")
                }
                texts.append(nil)
                lengths.append(Int32(bytes.count))
                formats.append(1)
                binaries.append((index, bytes))
            }
        }
        if pipelined, PQpipelineStatus(handle) == PQ_PIPELINE_OFF, PQenterPipelineMode(handle) != 1 {
            throw PostgresError(code: .misuse, context: context, message: Self.errorMessage(handle))
        }
        // In a pipeline the preparation is sent ahead of the statement, unanswered like it: a
        // statement first met there (most write-only ones, which always follow another) would
        // otherwise go unnamed, and be planned, every time.
        let name = try preparedName(sql, types: types, handle: handle, pipelined: pipelined)
        let sent = withCStrings(texts) { values in
            withBinaryValues(binaries[...], values) { values in
                // Results in text format (resultFormat 0); each parameter in its own format.
                if let name {
                    PQsendQueryPrepared(handle, name, Int32(parameters.count), values, lengths, formats, 0)
                } else {
                    PQsendQueryParams(handle, sql, Int32(parameters.count), types, values, lengths, formats, 0)
                }
            }
        }
        try checkSent(sent, handle: handle, context: context)
        return sent
    }

    /// The name `sql` is prepared under on this session, preparing it on first use; nil when
    /// the cache is off or full (the statement is then sent unnamed, planned each time).
    /// The key holds the parameter types too: a statement prepared for a NULL (type left to the
    /// server) must not be reused for a value of a type the server did not infer. In a pipeline
    /// the preparation is sent ahead of the statement and answered with it (its key forgotten if
    /// the server refuses it); outside one it is answered at once.
    private func preparedName(_ sql: String, types: [UInt32], handle: OpaquePointer, pipelined: Bool)
        throws(PostgresError) -> String?
    {
        guard statementCacheCapacity > 0 else { return nil }
        let key = types.map(String.init).joined(separator: ",") + "|" + sql
        if let name = prepared[key] { return name }
        guard prepared.count < statementCacheCapacity else { return nil }
        preparedNames += 1
        let name = "referrald_\(preparedNames)"
        let sent = PQsendPrepare(handle, name, sql, Int32(types.count), types)
        if pipelined {
            try checkSent(sent, handle: handle, context: "prepare")
            deferred.append(.preparation(key: key))
        } else {
            let result = try awaitResult(sent: sent, handle: handle, context: "prepare")
            _ = try consume(result, handle: handle, context: "prepare")
        }
        prepared[key] = name
        return name
    }

    /// As `consume` tells a send that failed: a broken connection, or libpq's refusal.
    private func checkSent(_ sent: Int32, handle: OpaquePointer, context: String) throws(PostgresError) {
        guard sent == 1 else {
            throw PostgresError(
                code: PQstatus(handle) == CONNECTION_BAD ? .connectionLost : .server, context: context,
                message: Self.errorMessage(handle))
        }
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
        _ = try simple(sql, context: "script")
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
    ///
    /// `mode` says how the transaction begins (`TransactionMode`): a read-only snapshot is set
    /// by its `BEGIN`, before any statement could take a snapshot of its own.
    public func transaction<T: Sendable>(
        _ mode: TransactionMode = .readWrite,
        _ body: @Sendable (isolated PostgresConnection) throws -> T
    ) throws -> T {
        guard PQtransactionStatus(try liveHandle(context: "transaction.begin")) == PQTRANS_IDLE else {
            // A nested BEGIN is only a warning, and the inner COMMIT would commit the outer
            // transaction's work halfway through.
            throw PostgresError(
                code: .misuse, context: "transaction.begin", message: "a transaction is already open on this connection"
            )
        }
        _ = try simple(mode.begin, context: "transaction.begin")
        let value: T
        do {
            value = try body(self)
            try syncDeferred()
        } catch {
            rollback(context: "transaction.rollback")
            throw error
        }
        // The body may have lost the connection (an answer deadline closes it) and carried on.
        guard let handle = self.handle else {
            throw lost ?? PostgresError(code: .connectionClosed, context: "transaction.commit")
        }
        switch PQtransactionStatus(handle) {
        case PQTRANS_INTRANS:
            _ = try simple("COMMIT", context: "transaction.commit")
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
            throw PostgresError(
                code: .connectionLost, context: "transaction.commit", message: Self.errorMessage(handle))
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
        // The pipeline's own error (if it failed) is the body's, already thrown.
        if !deferred.isEmpty { _ = try? syncDeferred() }
        guard let handle, PQstatus(handle) == CONNECTION_OK, PQtransactionStatus(handle) != PQTRANS_IDLE else { return }
        do {
            _ = try simple("ROLLBACK", context: context)
        } catch {
            logger.debug("postgres rollback failed", metadata: ["postgres.error": "\(error)"])
        }
    }

    // MARK: libpq plumbing

    /// One statement or script through the simple query protocol, under the answer deadline.
    private func simple(_ sql: String, context: String) throws(PostgresError) -> PostgresRows {
        try syncDeferred()
        let handle = try liveHandle(context: context)
        let result = try awaitResult(sent: PQsendQuery(handle, sql), handle: handle, context: context)
        return try consume(result, handle: handle, context: context)
    }

    /// What `PQexec` does after sending, with a deadline: flushes the statement as the socket
    /// takes it, then collects its results. Returns the first error result, else the last
    /// result (as `PQexec` does for a script), or stops at a COPY, which `consume` ends. Past
    /// the deadline the connection is closed and the statement fails as `.connectionLost`: its
    /// transaction, if the server ever got it, ends by the server's own timeouts.
    private func awaitResult(sent: Int32, handle: OpaquePointer, context: String) throws(PostgresError)
        -> OpaquePointer?
    {
        guard sent == 1 else { return nil }
        let deadline = answerTimeout.map { ContinuousClock.now + $0 }
        guard try flushAll(handle, deadline: deadline, context: context) else { return nil }
        var kept: OpaquePointer?
        while true {
            while PQisBusy(handle) == 1 {
                try waitForSocket(handle, writable: false, deadline: deadline, context: context)
                guard PQconsumeInput(handle) == 1 else {
                    if let kept { PQclear(kept) }
                    return nil
                }
            }
            guard let result = PQgetResult(handle) else { return kept }
            switch PQresultStatus(result) {
            case PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH:
                if let kept { PQclear(kept) }
                return result
            default:
                // PQexec's rule: the first error wins, otherwise the last result.
                if let kept, PQresultStatus(kept) == PGRES_FATAL_ERROR {
                    PQclear(result)
                } else {
                    if let kept { PQclear(kept) }
                    kept = result
                }
            }
        }
    }

    /// Writes what libpq holds for the socket as the socket takes it, under the deadline. False
    /// when libpq cannot write (the connection broke).
    private func flushAll(_ handle: OpaquePointer, deadline: ContinuousClock.Instant?, context: String)
        throws(PostgresError) -> Bool
    {
        while true {
            let flushed = PQflush(handle)
            if flushed == 0 { return true }
            if flushed < 0 { return false }
            try waitForSocket(handle, writable: true, deadline: deadline, context: context)
        }
    }

    /// Sleeps in poll() until the socket is ready or the deadline passes. Past the deadline the
    /// connection is finished here: its state is unknown (a half-sent message, an answer that
    /// may still come), and only a new connection is safe.
    private func waitForSocket(
        _ handle: OpaquePointer, writable: Bool, deadline: ContinuousClock.Instant?,
        context: String
    ) throws(PostgresError) {
        var descriptor = pollfd(fd: PQsocket(handle), events: Int16(writable ? POLLOUT : POLLIN), revents: 0)
        while true {
            var wait: Int32 = -1
            if let deadline {
                let left = deadline - ContinuousClock.now
                if left <= .zero {
                    PQfinish(handle)
                    self.handle = nil
                    noticeSink = nil
                    let error = PostgresError(
                        code: .connectionLost, context: context,
                        message: "no answer from the server within \(answerTimeout!); the connection was closed")
                    lost = error
                    throw error
                }
                wait = Int32(
                    clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            }
            let ready = poll(&descriptor, 1, wait)
            if ready > 0 { return }
            if ready < 0 && errno != EINTR {
                throw PostgresError(code: .connectionLost, context: context, message: "poll failed: errno \(errno)")
            }
        }
    }

    private func liveHandle(context: String) throws(PostgresError) -> OpaquePointer {
        guard let handle else { throw lost ?? PostgresError(code: .connectionClosed, context: context) }
        guard PQstatus(handle) == CONNECTION_OK else {
            throw PostgresError(code: .connectionLost, context: context, message: Self.errorMessage(handle))
        }
        return handle
    }

    /// Turns a `PGresult` into rows or a typed error, and frees it.
    private func consume(_ result: OpaquePointer?, handle: OpaquePointer, context: String) throws(PostgresError)
        -> PostgresRows
    {
        guard let result else {
            // libpq returns no result when it is out of memory or cannot send the query.
            let lost = PQstatus(handle) == CONNECTION_BAD
            throw PostgresError(
                code: lost ? .connectionLost : .server, context: context, message: Self.errorMessage(handle))
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

/// Calls `body` with `values` where each binary parameter's slot points into its own bytes,
/// without copying them: libpq copies every parameter into its send buffer during the call.
/// An empty `bytea` gets a pointer to static memory: a NULL pointer would send SQL NULL.
private func withBinaryValues<R>(
    _ binaries: ArraySlice<(index: Int, bytes: [UInt8])>, _ values: [UnsafePointer<CChar>?],
    _ body: ([UnsafePointer<CChar>?]) -> R
) -> R {
    guard let first = binaries.first else { return body(values) }
    return first.bytes.withUnsafeBufferPointer { buffer in
        var values = values
        let start = buffer.baseAddress ?? ("" as StaticString).utf8Start
        values[first.index] = UnsafeRawPointer(start).assumingMemoryBound(to: CChar.self)
        return withBinaryValues(binaries.dropFirst(), values, body)
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
