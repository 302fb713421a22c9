/// A Swift type that can be read from a column in PostgreSQL's text output format.
public protocol PostgresDecodable: Sendable {
    /// Reads the value, or returns nil if the text is not a valid value of this type. `typeOID`
    /// is the column's server type, for types whose text alone is ambiguous (`\x41` is a
    /// `bytea` or just a string).
    init?(postgresText text: String, typeOID: UInt32)
}

extension String: PostgresDecodable {
    public init?(postgresText text: String, typeOID: UInt32) { self = text }
}

extension Int64: PostgresDecodable {
    public init?(postgresText text: String, typeOID: UInt32) { self.init(text) }
}

extension Int: PostgresDecodable {
    public init?(postgresText text: String, typeOID: UInt32) { self.init(text) }
}

extension Int32: PostgresDecodable {
    public init?(postgresText text: String, typeOID: UInt32) { self.init(text) }
}

extension Bool: PostgresDecodable {
    public init?(postgresText text: String, typeOID: UInt32) {
        switch text {
        case "t": self = true
        case "f": self = false
        default: return nil
        }
    }
}

extension Double: PostgresDecodable {
    /// Accepts PostgreSQL's `Infinity`, `-Infinity` and `NaN` as well as plain numbers.
    public init?(postgresText text: String, typeOID: UInt32) { self.init(text) }
}

extension Array: PostgresDecodable where Element == UInt8 {
    /// A `bytea` column in hex output (`\x00ff`); the session sets `bytea_output = 'hex'`.
    public init?(postgresText text: String, typeOID: UInt32) {
        guard typeOID == 17 else { return nil }
        let b = Array(text.utf8)
        guard b.count >= 2, b.count % 2 == 0, b[0] == UInt8(ascii: "\\"), b[1] == UInt8(ascii: "x") else {
            return nil
        }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            case 65...70: c - 55
            default: nil
            }
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(b.count / 2 - 1)
        var i = 2
        while i < b.count {
            guard let high = nibble(b[i]), let low = nibble(b[i + 1]) else { return nil }
            bytes.append(high << 4 | low)
            i += 2
        }
        self = bytes
    }
}

extension PostgresTimestamp: PostgresDecodable {
    /// Only a `timestamptz` column: a `timestamp` without time zone has no offset, and reading
    /// it as UTC would shift every value by the writer's zone without any error.
    public init?(postgresText text: String, typeOID: UInt32) {
        guard typeOID == 1184 else { return nil }
        self.init(postgresText: text)
    }
}

/// Column names and types of a result, shared by all of its rows.
final class PostgresColumns: Sendable {
    let names: [String]
    let typeOIDs: [UInt32]
    /// The first column of each name, as `SELECT a.id, b.id` gives two columns named `id`.
    let indexByName: [String: Int]

    init(names: [String], typeOIDs: [UInt32]) {
        self.names = names
        self.typeOIDs = typeOIDs
        var index: [String: Int] = [:]
        for (i, name) in names.enumerated() where index[name] == nil { index[name] = i }
        self.indexByName = index
    }
}

/// One row of a result, copied out of libpq's memory so that it can outlive the connection
/// and cross actors.
public struct PostgresRow: Sendable {
    let columns: PostgresColumns
    /// Each column's text output, nil for SQL NULL.
    let values: [String?]

    public var columnNames: [String] { columns.names }

    /// Decodes the named column; throws if it is NULL, missing or not readable as `T`.
    public func decode<T: PostgresDecodable>(_ column: String, as type: T.Type = T.self) throws(PostgresError) -> T {
        try decode(index(of: column), as: type)
    }

    /// Decodes the column at `index` (0-based).
    public func decode<T: PostgresDecodable>(_ index: Int, as type: T.Type = T.self) throws(PostgresError) -> T {
        guard let value = try decodeIfPresent(index, as: type) else {
            throw failure(.unexpectedNull, index, type)
        }
        return value
    }

    /// Decodes the named column, nil for SQL NULL.
    public func decodeIfPresent<T: PostgresDecodable>(_ column: String, as type: T.Type = T.self) throws(PostgresError)
        -> T?
    {
        try decodeIfPresent(index(of: column), as: type)
    }

    /// Decodes the column at `index` (0-based), nil for SQL NULL.
    public func decodeIfPresent<T: PostgresDecodable>(_ index: Int, as type: T.Type = T.self) throws(PostgresError)
        -> T?
    {
        guard values.indices.contains(index) else {
            throw PostgresError(
                code: .columnNotFound, context: "decode", column: "#\(index)", expectedType: "\(T.self)")
        }
        guard let text = values[index] else { return nil }
        guard let value = T(postgresText: text, typeOID: columns.typeOIDs[index]) else {
            throw failure(.typeMismatch, index, type)
        }
        return value
    }

    /// Whether the named column is SQL NULL.
    public func isNull(_ column: String) throws(PostgresError) -> Bool {
        values[try index(of: column)] == nil
    }

    private func index(of column: String) throws(PostgresError) -> Int {
        guard let index = columns.indexByName[column] else {
            throw PostgresError(code: .columnNotFound, context: "decode", column: column)
        }
        return index
    }

    /// The error names the column and the type asked for, never the value, which may be user data.
    private func failure<T>(_ code: PostgresError.Code, _ index: Int, _ type: T.Type) -> PostgresError {
        PostgresError(
            code: code, context: "decode",
            message: code == .typeMismatch ? "column has server type oid \(columns.typeOIDs[index])" : nil,
            column: columns.names[index], expectedType: "\(T.self)")
    }
}

/// The rows of a statement's result and, for `INSERT`/`UPDATE`/`DELETE`/`MERGE`, how many rows
/// it affected.
public struct PostgresRows: Sendable, RandomAccessCollection {
    public let rows: [PostgresRow]
    /// libpq's `PQcmdTuples`: rows inserted, updated, deleted, merged or selected; 0 for
    /// statements without a count such as `CREATE TABLE`.
    public let affectedRows: Int
    /// The result's column names, also known when there are no rows.
    public let columnNames: [String]

    public var startIndex: Int { rows.startIndex }
    public var endIndex: Int { rows.endIndex }
    public subscript(position: Int) -> PostgresRow { rows[position] }
}
