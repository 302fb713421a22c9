import CLibPQ
import Logging

#if canImport(Glibc)
    import Glibc
#endif

extension PostgresConnection {

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
    func rollback(context: String) {
        // The pipeline's own error (if it failed) is the body's, already thrown.
        if !deferred.isEmpty { _ = try? syncDeferred() }
        guard let handle, PQstatus(handle) == CONNECTION_OK, PQtransactionStatus(handle) != PQTRANS_IDLE else { return }
        do {
            _ = try simple("ROLLBACK", context: context)
        } catch {
            logger.debug("postgres rollback failed", metadata: ["postgres.error": "\(error)"])
        }
    }
}
