/// How `PostgresConnection.transaction` begins.
public enum TransactionMode: Sendable {
    /// The session's defaults (READ COMMITTED unless the server is configured otherwise).
    case readWrite
    /// REPEATABLE READ READ ONLY: every statement sees the one snapshot taken by the first, so a
    /// long read (an export paged over a million rows) never mixes two states of tables the
    /// daemon keeps writing; and the server refuses any write (SQLSTATE 25006), temporary
    /// tables included, so a reader cannot change what it reports on.
    case readOnlySnapshot

    var begin: String {
        switch self {
        case .readWrite: return "BEGIN"
        case .readOnlySnapshot: return "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        }
    }
}
