import CLibPQ
import Logging

#if canImport(Glibc)
    import Glibc
#endif

extension PostgresConnection {

    /// One statement or script through the simple query protocol, under the answer deadline.
    func simple(_ sql: String, context: String) throws(PostgresError) -> PostgresRows {
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
    func awaitResult(sent: Int32, handle: OpaquePointer, context: String) throws(PostgresError)
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
    func flushAll(_ handle: OpaquePointer, deadline: ContinuousClock.Instant?, context: String)
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
    func waitForSocket(
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

    func liveHandle(context: String) throws(PostgresError) -> OpaquePointer {
        guard let handle else { throw lost ?? PostgresError(code: .connectionClosed, context: context) }
        guard PQstatus(handle) == CONNECTION_OK else {
            throw PostgresError(code: .connectionLost, context: context, message: Self.errorMessage(handle))
        }
        return handle
    }

    /// Turns a `PGresult` into rows or a typed error, and frees it.
    func consume(_ result: OpaquePointer?, handle: OpaquePointer, context: String) throws(PostgresError)
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
    func abandonCopy(_ handle: OpaquePointer, _ status: ExecStatusType) {
        if status == PGRES_COPY_IN {
            _ = PQputCopyEnd(handle, "COPY is not supported by this client")
        } else {
            var buffer: UnsafeMutablePointer<CChar>?
            while PQgetCopyData(handle, &buffer, 0) > 0 { PQfreemem(buffer) }
        }
        while let result = PQgetResult(handle) { PQclear(result) }
    }

    static func rows(of result: OpaquePointer) -> PostgresRows {
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

    static func error(from result: OpaquePointer, handle: OpaquePointer, context: String) -> PostgresError {
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

    static func errorMessage(_ handle: OpaquePointer) -> String {
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
func withBinaryValues<R>(
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
func withCStrings<R>(_ strings: [String?], _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
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
    func trimmingTrailingNewlines() -> String {
        var text = Substring(self)
        while text.last == "\n" { text = text.dropLast() }
        return String(text)
    }
}
