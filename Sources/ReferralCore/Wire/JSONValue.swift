/// A parsed JSON document (RFC 8259), as `JSONValue.parse` produces it and `encoded()` writes it.
///
/// Strings and object keys are compared by their UTF-8 bytes, never with `String.==`: Swift's
/// string equality is canonical equivalence, under which the Kelvin sign U+212A equals `K` and
/// U+037E equals `;`, so a byte-different key or enum value would otherwise pass as a known one.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    public static func integer(_ value: Int64) -> JSONValue { .number(JSONNumber(value)) }

    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var objectValue: JSONObject? { if case .object(let o) = self { o } else { nil } }

    /// `a string`, `an object`...: how validation details name what they found.
    public var kindDescription: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number(let n): n.isIntegral ? "an integer" : "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.bool(let x), .bool(let y)): x == y
        case (.number(let x), .number(let y)): x == y
        case (.string(let x), .string(let y)): x.utf8.elementsEqual(y.utf8)
        case (.array(let x), .array(let y)): x == y
        case (.object(let x), .object(let y)): x == y
        default: false
        }
    }
}

/// A JSON object that keeps its members in document order, so that what the writer emits is
/// deterministic. The parser never produces duplicate keys (it rejects them), and `==` ignores
/// member order, as JSON object semantics do.
public struct JSONObject: Sendable, Equatable, ExpressibleByDictionaryLiteral {
    public struct Member: Sendable {
        public var key: String
        public var value: JSONValue
    }

    public private(set) var members: [Member]

    public init(_ pairs: [(String, JSONValue)]) {
        members = pairs.map { Member(key: $0.0, value: $0.1) }
    }

    public init(dictionaryLiteral elements: (String, JSONValue)...) { self.init(elements) }

    init(members: [Member]) { self.members = members }

    public var keys: [String] { members.map(\.key) }
    public var count: Int { members.count }

    /// The member named exactly `key` (byte-wise), or nil. Linear: event objects are small, and a
    /// hostile object is bounded by `JSONLimits.maxValues`.
    public subscript(key: String) -> JSONValue? {
        members.first { $0.key.utf8.elementsEqual(key.utf8) }?.value
    }

    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.count == b.count && a.members.allSatisfy { b[$0.key] == $0.value }
    }
}

/// A JSON number kept as its exact lexeme: money must not pass through a `Double`, and a value
/// that does not fit is reported as out of range rather than silently rounded.
public struct JSONNumber: Sendable, Equatable, CustomStringConvertible {
    /// The number exactly as written in the document (RFC 8259 grammar).
    public let lexeme: String
    /// The lexeme has a fraction or an exponent part (`5.0`, `5e3`).
    public let hasFractionOrExponent: Bool
    /// Mathematically an integer, whatever its spelling: `5000`, `5e3` and `5000.0` all are.
    /// JSON Schema's `integer` means exactly this, so `"amount_minor": 5000.0` is valid.
    public let isIntegral: Bool
    /// The exact value when integral and within Int64, else nil.
    public let int64: Int64?

    public init(_ value: Int64) {
        lexeme = String(value)
        hasFractionOrExponent = false
        isIntegral = true
        int64 = value
    }

    /// `lexeme` must already match the RFC 8259 number grammar (the parser guarantees it).
    /// Works on the bytes in place: a body can hold tens of thousands of numbers.
    init(validatedLexeme bytes: ArraySlice<UInt8>) {
        lexeme = String(decoding: bytes, as: UTF8.self)
        func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
        let mantissaEnd = bytes.firstIndex { $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") } ?? bytes.endIndex
        let point = bytes[..<mantissaEnd].firstIndex(of: UInt8(ascii: "."))
        hasFractionOrExponent = point != nil || mantissaEnd != bytes.endIndex
        var exponent = 0
        for b in bytes[mantissaEnd...] where isDigit(b) {
            // Clamped: beyond a billion the answer (not integral, or out of range) cannot change
            // for a body of at most a few hundred KiB, and Int cannot overflow.
            exponent = min(exponent * 10 + Int(b - 48), 1_000_000_000)
        }
        if bytes[mantissaEnd...].contains(UInt8(ascii: "-")) { exponent = -exponent }
        let mantissa = bytes[..<mantissaEnd]
        guard let first = mantissa.firstIndex(where: { isDigit($0) && $0 != UInt8(ascii: "0") }),
            let last = mantissa.lastIndex(where: { isDigit($0) && $0 != UInt8(ascii: "0") })
        else {
            isIntegral = true
            int64 = 0
            return
        }  // all zeros: 0, -0, 0.000e7
        // value = (digits first...last) * 10^scale
        let fractionDigits = point.map { mantissaEnd - $0 - 1 } ?? 0
        let trailingZeros = mantissa[(last + 1)...].count(where: isDigit)
        let scale = exponent - fractionDigits + trailingZeros
        let significant = mantissa[first...last].count(where: isDigit)
        guard scale >= 0 else {
            isIntegral = false
            int64 = nil
            return
        }
        isIntegral = true
        guard significant + scale <= 19 else {
            int64 = nil
            return
        }
        var magnitude: UInt64 = 0
        // <= 19 digits
        for b in mantissa[first...last] where isDigit(b) { magnitude = magnitude * 10 + UInt64(b - 48) }
        for _ in 0..<scale {
            let (m, overflow) = magnitude.multipliedReportingOverflow(by: 10)
            guard !overflow else {
                int64 = nil
                return
            }
            magnitude = m
        }
        if bytes.first == UInt8(ascii: "-") {
            int64 = magnitude <= UInt64(Int64.max) + 1 ? Int64(truncatingIfNeeded: 0 &- magnitude) : nil
        } else {
            int64 = magnitude <= UInt64(Int64.max) ? Int64(magnitude) : nil
        }
    }

    /// The nearest Double; infinite when the lexeme's magnitude is beyond Double's range.
    public var double: Double { Double(lexeme) ?? .nan }

    public var description: String { lexeme }

    /// Equal when the same lexeme, or the same exact integer (`5e3` and `5000`), or the same
    /// finite Double (`0.50` and `0.5`).
    public static func == (a: JSONNumber, b: JSONNumber) -> Bool {
        if a.lexeme == b.lexeme { return true }
        if let x = a.int64, let y = b.int64 { return x == y }
        return a.double.isFinite && a.double == b.double
    }
}
