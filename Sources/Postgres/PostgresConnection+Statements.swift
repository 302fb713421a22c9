import CLibPQ
import Logging

#if canImport(Glibc)
    import Glibc
#endif

extension PostgresConnection {

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
    func syncPipeline(keepingLast: Bool) throws(PostgresError) -> OpaquePointer? {
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
    func nextResult(_ handle: OpaquePointer, deadline: ContinuousClock.Instant?) throws(PostgresError)
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
    func send(
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
    func preparedName(_ sql: String, types: [UInt32], handle: OpaquePointer, pipelined: Bool)
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
    func checkSent(_ sent: Int32, handle: OpaquePointer, context: String) throws(PostgresError) {
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
}
