/// A statement parameter. Sent as a separate protocol field, never spliced into the SQL, so no
/// value can change what a statement does: `bytes` in PostgreSQL's binary format, everything
/// else in its text format.
public enum PostgresValue: Sendable, Hashable {
    case null
    /// Sent with no declared type: the server infers it from context, so a string can fill a
    /// `text`, `uuid`, `jsonb` or enum column alike (a declared `text` would need a cast there).
    case text(String)
    /// Declared as `int8`, so a value never gets inferred as `int4` and overflows. Functions
    /// that take an `int4` need a cast: `pg_terminate_backend($1::int4)`.
    case int(Int64)
    case bool(Bool)
    case double(Double)
    /// Sent in binary format, as it is. Its hex text form doubled a batch's bodies twice over
    /// (the hex string, then its C copy) before libpq's own copy: 512 bodies of 250 KiB came
    /// to 1.3-1.9 GiB, past the unit's MemoryMax.
    case bytes([UInt8])
    case timestamp(microsecondsSinceEpoch: Int64)
    /// A `text[]`, for set-based writes such as `unnest($1::text[], $2::int8[])`.
    case textArray([String?])
    case int8Array([Int64?])
    case boolArray([Bool?])

    public init(_ value: String?) { self = value.map(Self.text) ?? .null }
    public init(_ value: Int64?) { self = value.map(Self.int) ?? .null }
    public init(_ value: Bool?) { self = value.map(Self.bool) ?? .null }
    public init(_ value: PostgresTimestamp?) {
        self = value.map { .timestamp(microsecondsSinceEpoch: $0.microsecondsSinceEpoch) } ?? .null
    }

    /// The type OID announced to the server; 0 lets it infer one. Non-text values declare
    /// theirs so that `$1 = ANY($2)` or `$1 + 1` resolve without casts in the SQL.
    var typeOID: UInt32 {
        switch self {
        case .null, .text: 0
        case .int: 20  // int8
        case .bool: 16  // bool
        case .double: 701  // float8
        case .bytes: 17  // bytea
        case .timestamp: 1184  // timestamptz
        case .textArray: 1009  // text[]
        case .int8Array: 1016  // int8[]
        case .boolArray: 1000  // bool[]
        }
    }

    /// How a value travels: libpq's text or binary format, or SQL NULL.
    enum Encoded {
        case null
        case text(String)
        case binary([UInt8])
    }

    /// The value in PostgreSQL's text input format, the bytes of a `bytea`, or SQL NULL.
    ///
    /// Throws for strings with a NUL character: PostgreSQL text cannot hold one, and a C string
    /// would end there, silently storing a truncated value.
    func encoded(index: Int) throws(PostgresError) -> Encoded {
        if case .bytes(let bytes) = self { return .binary(bytes) }
        return try textEncoded(index: index).map(Encoded.text) ?? .null
    }

    private func textEncoded(index: Int) throws(PostgresError) -> String? {
        func checked(_ s: String) throws(PostgresError) -> String {
            guard !s.utf8.contains(0) else {
                throw PostgresError(
                    code: .invalidParameter, context: "parameter $\(index + 1)",
                    message: "text contains a NUL character, which PostgreSQL cannot store")
            }
            return s
        }
        switch self {
        case .null: return nil
        case .text(let s): return try checked(s)
        case .int(let n): return String(n)
        case .bool(let b): return b ? "t" : "f"
        case .double(let d):
            // Swift prints "inf" and "nan"; these are the spellings every PostgreSQL accepts.
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
            return String(d)  // shortest text that reads back as the same Double
        case .bytes:
            preconditionFailure("bytea is sent in binary format (encoded(index:))")
        case .timestamp(let micros):
            return PostgresTimestamp(microsecondsSinceEpoch: micros).iso8601
        case .textArray(let elements):
            // One UTF-8 buffer for the whole literal: building it element by element as Strings
            // (quote, join) allocates per element, and the key arrays of a batch hold thousands.
            var out: [UInt8] = [UInt8(ascii: "{")]
            out.reserveCapacity(elements.reduce(2) { $0 + ($1?.utf8.count ?? 4) + 3 })
            for (i, element) in elements.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                guard let element else {
                    out.append(contentsOf: "NULL".utf8)
                    continue
                }
                try Self.appendQuotedArrayElement(element, to: &out, index: index)
            }
            out.append(UInt8(ascii: "}"))
            return String(decoding: out, as: UTF8.self)
        case .int8Array(let elements):
            return "{" + elements.map { $0.map { String($0) } ?? "NULL" }.joined(separator: ",") + "}"
        case .boolArray(let elements):
            return "{" + elements.map { $0.map { $0 ? "t" : "f" } ?? "NULL" }.joined(separator: ",") + "}"
        }
    }

    /// Every element is double-quoted, with `\` and `"` backslash-escaped. Quoting always,
    /// rather than only when needed, is what keeps the string `NULL` from becoming SQL NULL, an
    /// empty string from vanishing, leading or trailing spaces from being trimmed, and commas
    /// or braces from splitting or nesting the array. Both escaped characters are ASCII, so the
    /// UTF-8 bytes are copied as they are.
    static func appendQuotedArrayElement(_ s: String, to out: inout [UInt8], index: Int) throws(PostgresError) {
        out.append(UInt8(ascii: "\""))
        for byte in s.utf8 {
            switch byte {
            case 0:
                throw PostgresError(
                    code: .invalidParameter, context: "parameter $\(index + 1)",
                    message: "text contains a NUL character, which PostgreSQL cannot store")
            case UInt8(ascii: "\\"), UInt8(ascii: "\""):
                out.append(UInt8(ascii: "\\"))
                out.append(byte)
            default:
                out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

extension PostgresValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByFloatLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .text(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(nilLiteral: ()) { self = .null }
}
