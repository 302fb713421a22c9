/// An error from the `Postgres` module: the server's, libpq's or a decoding one.
///
/// `description` is safe to log: it names the kind of failure, the operation, the SQLSTATE and
/// schema objects, never the server's message or detail, because those quote user data (a
/// unique violation's detail is `Key (email)=(someone@example.com) already exists`, an input
/// error quotes the bad value). `debugDescription` adds them for a developer who opts in. The
/// one exception is a failed connect: libpq's message there speaks only of host, port, user and
/// TLS, never the password, and without it nobody can tell a refused port from a bad certificate.
public struct PostgresError: Error, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// What went wrong, independently of the server's SQLSTATE. A struct over a private enum
    /// so that kinds can be added without breaking a caller's exhaustive `switch`.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: String, Sendable, Hashable {
            case connectionFailed, connectionLost, connectionClosed, server, transactionAborted,
                misuse, invalidURL, invalidParameter, unsupportedResult, columnNotFound,
                unexpectedNull, typeMismatch
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The connection could not be established (refused, timed out, TLS, authentication).
        public static let connectionFailed = Code(.connectionFailed)
        /// The server or network went away: this connection is dead, open a new one.
        public static let connectionLost = Code(.connectionLost)
        /// `close()` was called on this connection before.
        public static let connectionClosed = Code(.connectionClosed)
        /// The server rejected a statement; see `sqlState`.
        public static let server = Code(.server)
        /// A statement inside `transaction` failed and the body carried on; the transaction was
        /// rolled back instead of committed.
        public static let transactionAborted = Code(.transactionAborted)
        /// The API was used in a way that cannot work, such as nesting `transaction`.
        public static let misuse = Code(.misuse)
        /// A `postgres://` URL could not be parsed.
        public static let invalidURL = Code(.invalidURL)
        /// A parameter cannot be sent, such as a string containing a NUL character.
        public static let invalidParameter = Code(.invalidParameter)
        /// The statement produced a result this module does not handle, such as `COPY`.
        public static let unsupportedResult = Code(.unsupportedResult)
        /// A row has no column of the requested name or index.
        public static let columnNotFound = Code(.columnNotFound)
        /// A NULL was read into a non-optional Swift type.
        public static let unexpectedNull = Code(.unexpectedNull)
        /// A column's value cannot be read as the requested Swift type.
        public static let typeMismatch = Code(.typeMismatch)

        public var description: String { base.rawValue }
    }

    public var code: Code
    /// The operation that failed, e.g. `connect`, `query`, `transaction.commit`, `decode`.
    public var context: String
    /// The five-character SQLSTATE, when the server (or libpq) reported one.
    public var sqlState: String?
    /// The server's primary message or libpq's error text. May quote user data.
    public var message: String?
    /// The server's detail. Often quotes user data (key values of a violated constraint).
    public var detail: String?
    public var hint: String?
    public var constraint: String?
    public var schema: String?
    public var table: String?
    /// The column of a server error (`not_null_violation`) or of a decoding error.
    public var column: String?
    /// For decoding errors: the Swift type that was requested.
    public var expectedType: String?

    public init(
        code: Code, context: String, sqlState: String? = nil, message: String? = nil,
        detail: String? = nil, hint: String? = nil, constraint: String? = nil,
        schema: String? = nil, table: String? = nil, column: String? = nil,
        expectedType: String? = nil
    ) {
        self.code = code
        self.context = context
        self.sqlState = sqlState
        self.message = message
        self.detail = detail
        self.hint = hint
        self.constraint = constraint
        self.schema = schema
        self.table = table
        self.column = column
        self.expectedType = expectedType
    }

    /// Whether retrying the same work on a fresh or the same connection can succeed: connection
    /// failures and loss, admin shutdown, serialization failures, deadlocks, lock timeouts and
    /// insufficient resources. Everything else (constraint violations, syntax, decoding) fails
    /// the same way every time and must not be retried in a loop.
    ///
    /// A failed connect counts as transient although a wrong password never heals: libpq gives
    /// no SQLSTATE for it, and treating a server that is still starting as permanent would be
    /// worse. Callers retry with backoff either way.
    /// A deadlock or serialisation failure: the transaction rolled back because of another
    /// one, and the same work retried on the same connection will most likely succeed.
    public var isLockConflict: Bool { sqlState == "40P01" || sqlState == "40001" }

    public var isTransient: Bool {
        if code == .connectionFailed || code == .connectionLost { return true }
        guard let state = sqlState else { return false }
        switch state {
        case "57P01", "57P02", "57P03",  // admin_shutdown, crash_shutdown, cannot_connect_now
            "40001", "40P01",  // serialization_failure, deadlock_detected
            "55P03":  // lock_not_available (lock_timeout fired)
            return true
        case "0A000" where message?.contains("cached plan") == true:
            // A migration changed a table under a statement this session prepared: a new
            // session prepares it again.
            return true
        default:
            // Class 08 connection_exception, class 53 insufficient_resources (too many
            // connections, disk full, out of memory).
            return state.hasPrefix("08") || state.hasPrefix("53")
        }
    }

    public var description: String {
        var parts = ["\(code)", "context: \(context)"]
        if let sqlState { parts.append("sqlState: \(sqlState)") }
        if let schema { parts.append("schema: \(schema)") }
        if let table { parts.append("table: \(table)") }
        if let column { parts.append("column: \(column)") }
        if let constraint { parts.append("constraint: \(constraint)") }
        if let expectedType { parts.append("expected: \(expectedType)") }
        if code == .connectionFailed || code == .invalidURL || code == .misuse, let message {
            parts.append("message: \(message)")
        }
        return "PostgresError(\(parts.joined(separator: ", ")))"
    }

    /// Everything, including the server's message, detail and hint, which may quote user data.
    public var debugDescription: String {
        var text = description
        if let message { text += "\n  message: \(message)" }
        if let detail { text += "\n  detail: \(detail)" }
        if let hint { text += "\n  hint: \(hint)" }
        return text
    }
}
