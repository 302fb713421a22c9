/// Bounds on what the parser accepts, so that a hostile body fails fast with a clear error
/// instead of exhausting the stack (deep nesting) or memory (huge strings, millions of values).
public struct JSONLimits: Sendable, Hashable {
    /// Arrays and objects nested deeper than this are refused; `[]` is depth 1.
    public var maxDepth: Int
    /// Longest decoded string, object key or number lexeme, in UTF-8 bytes.
    public var maxStringBytes: Int
    /// Most values in one document (every scalar, array and object counts once).
    public var maxValues: Int

    /// 64 levels (it bounds the parser's recursion); strings and values up to the contract's
    /// body limit, which a body within that limit cannot exceed: the contract makes `too_large`
    /// the size check alone, so a 200 KB ticket description is a legitimate event, and memory is
    /// already bounded by the body size.
    public init(maxDepth: Int = 64, maxStringBytes: Int = 262_144, maxValues: Int = 262_144) {
        self.maxDepth = maxDepth
        self.maxStringBytes = maxStringBytes
        self.maxValues = maxValues
    }
}

/// Why a document was refused, with the byte offset where the parser stopped.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// Not RFC 8259 JSON, or not UTF-8.
        case syntax
        /// Valid so far, but beyond a `JSONLimits` bound.
        case limit
    }

    public var kind: Kind
    public var offset: Int
    /// One line, ASCII; never more than a few bytes of the document.
    public var reason: String

    public var description: String { "\(reason) at byte \(offset)" }
}

extension JSONValue {
    /// Parses exactly one JSON value with optional surrounding whitespace (RFC 8259).
    ///
    /// Strict where lenient parsers differ, because a message that one consumer reads differently
    /// from another is worse than a dead letter: no byte-order mark, no `NaN`/`Infinity`, no
    /// trailing commas, no comments, no single quotes, no leading zeros, no raw control
    /// characters in strings, only well-formed UTF-8 (no overlong forms, no encoded surrogates,
    /// no truncated sequences), no lone surrogate `\u` escapes, and no duplicate object keys
    /// (RFC 8259 leaves their meaning open: "last wins" in one parser, "first wins" in another).
    public static func parse(_ bytes: [UInt8], limits: JSONLimits = JSONLimits()) throws(JSONParseError) -> JSONValue {
        var parser = Parser(bytes: bytes, limits: limits)
        return try parser.document()
    }
}

private struct Parser {
    let bytes: [UInt8]
    let limits: JSONLimits
    var i = 0
    var depth = 0
    var values = 0

    init(bytes: [UInt8], limits: JSONLimits) {
        self.bytes = bytes
        self.limits = limits
    }

    mutating func document() throws(JSONParseError) -> JSONValue {
        if bytes.isEmpty { throw fail("empty document") }
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { throw fail("byte-order mark before the JSON value") }
        skipWhitespace()
        if i == bytes.count { throw fail("no JSON value, only whitespace") }
        let value = try self.value()
        skipWhitespace()
        if i != bytes.count { throw fail("\(describe(bytes[i])) after the JSON value") }
        return value
    }

    mutating func value() throws(JSONParseError) -> JSONValue {
        values += 1
        if values > limits.maxValues { throw fail("more than \(limits.maxValues) values", .limit) }
        guard i < bytes.count else { throw fail("unexpected end of input, expected a value") }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try object()
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"):
            try literal("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
        default: throw fail("\(describe(bytes[i])) where a value was expected")
        }
    }

    mutating func object() throws(JSONParseError) -> JSONValue {
        try enter()
        var members: [JSONObject.Member] = []
        var seen = Set<[UInt8]>()  // by bytes: String hashing is canonical equivalence
        skipWhitespace()
        if try consume(UInt8(ascii: "}")) {
            depth -= 1
            return .object(JSONObject(members: members))
        }
        while true {
            skipWhitespace()
            let keyOffset = i
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw expected("a string key") }
            let key = try string()
            guard seen.insert(Array(key.utf8)).inserted else {
                i = keyOffset
                throw fail("duplicate object key \(quoted(key))")
            }
            skipWhitespace()
            guard try consume(UInt8(ascii: ":")) else { throw expected("':' after an object key") }
            skipWhitespace()
            members.append(.init(key: key, value: try value()))
            skipWhitespace()
            if try consume(UInt8(ascii: "}")) { break }
            guard try consume(UInt8(ascii: ",")) else { throw expected("',' or '}' in an object") }
        }
        depth -= 1
        return .object(JSONObject(members: members))
    }

    mutating func array() throws(JSONParseError) -> JSONValue {
        try enter()
        var elements: [JSONValue] = []
        skipWhitespace()
        if try consume(UInt8(ascii: "]")) {
            depth -= 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try value())
            skipWhitespace()
            if try consume(UInt8(ascii: "]")) { break }
            guard try consume(UInt8(ascii: ",")) else { throw expected("',' or ']' in an array") }
        }
        depth -= 1
        return .array(elements)
    }

    /// Steps over the opening bracket; refuses to go deeper than `maxDepth`, which also bounds
    /// the recursion of this parser (a stack overflow would kill the whole worker).
    mutating func enter() throws(JSONParseError) {
        depth += 1
        if depth > limits.maxDepth { throw fail("nesting deeper than \(limits.maxDepth) levels", .limit) }
        i += 1
    }

    mutating func string() throws(JSONParseError) -> String {
        i += 1  // opening quote
        // Bytes are copied only once an escape makes the text differ from them; until then the
        // string is decoded straight from the body (most strings in an event have no escapes).
        var unescaped: [UInt8] = []
        var run = i  // start of the bytes not yet copied into `unescaped`
        while true {
            guard i < bytes.count else { throw fail("unexpected end of input inside a string") }
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "\""):
                defer { i += 1 }
                if unescaped.isEmpty { return String(decoding: bytes[run..<i], as: UTF8.self) }
                unescaped += bytes[run..<i]
                return String(decoding: unescaped, as: UTF8.self)
            case UInt8(ascii: "\\"):
                unescaped += bytes[run..<i]
                try escape(into: &unescaped)
                run = i
            case 0x00..<0x20:
                throw fail("unescaped control character \(describe(b)) in a string")
            case 0x20..<0x80:
                i += 1
            default:
                i += try utf8Sequence()
            }
            if unescaped.count + (i - run) > limits.maxStringBytes {
                throw fail("string longer than \(limits.maxStringBytes) bytes", .limit)
            }
        }
    }

    mutating func escape(into out: inout [UInt8]) throws(JSONParseError) {
        let start = i
        i += 1
        guard i < bytes.count else { throw fail("unexpected end of input inside a string") }
        let simple: UInt8? =
            switch bytes[i] {
            case UInt8(ascii: "\""): 0x22
            case UInt8(ascii: "\\"): 0x5C
            case UInt8(ascii: "/"): 0x2F
            case UInt8(ascii: "b"): 0x08
            case UInt8(ascii: "f"): 0x0C
            case UInt8(ascii: "n"): 0x0A
            case UInt8(ascii: "r"): 0x0D
            case UInt8(ascii: "t"): 0x09
            default: nil
            }
        if let simple {
            out.append(simple)
            i += 1
            return
        }
        guard bytes[i] == UInt8(ascii: "u") else {
            i = start
            throw fail("invalid escape \\\(describe(bytes[start + 1], bare: true)) in a string")
        }
        i += 1
        var scalar = try hex4()
        if (0xDC00...0xDFFF).contains(scalar) {
            i = start
            throw fail("lone low surrogate \\u escape")
        }
        if (0xD800...0xDBFF).contains(scalar) {
            // A high surrogate is only meaningful as the first half of a \uD8xx\uDCxx pair.
            guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                i = start
                throw fail("lone high surrogate \\u escape")
            }
            i += 2
            let low = try hex4()
            guard (0xDC00...0xDFFF).contains(low) else {
                i = start
                throw fail("lone high surrogate \\u escape")
            }
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
        }
        // Never nil: surrogates were handled above and the range is at most 0x10FFFF.
        out.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar)!)).utf8))
    }

    mutating func hex4() throws(JSONParseError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard i < bytes.count else { throw fail("unexpected end of input in a \\u escape") }
            let b = bytes[i]
            let d: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - 48
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - 87
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - 55
            default: throw fail("\(describe(b)) in a \\u escape, expected a hex digit")
            }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }

    /// Length of the well-formed multi-byte UTF-8 sequence at `i` (Unicode table 3-7), or why not.
    func utf8Sequence() throws(JSONParseError) -> Int {
        let lead = bytes[i]
        let (n, secondRange): (Int, ClosedRange<UInt8>)
        switch lead {
        case 0xC2...0xDF: (n, secondRange) = (2, 0x80...0xBF)
        case 0xE0: (n, secondRange) = (3, 0xA0...0xBF)
        case 0xE1...0xEC, 0xEE...0xEF: (n, secondRange) = (3, 0x80...0xBF)
        case 0xED: (n, secondRange) = (3, 0x80...0x9F)
        case 0xF0: (n, secondRange) = (4, 0x90...0xBF)
        case 0xF1...0xF3: (n, secondRange) = (4, 0x80...0xBF)
        case 0xF4: (n, secondRange) = (4, 0x80...0x8F)
        case 0xC0, 0xC1: throw fail("invalid UTF-8: overlong encoding (byte \(hex(lead)))")
        case 0x80...0xBF: throw fail("invalid UTF-8: unexpected continuation byte \(hex(lead))")
        default: throw fail("invalid UTF-8: byte \(hex(lead)) never occurs in UTF-8")
        }
        for k in 1..<n {
            guard i + k < bytes.count else { throw fail("invalid UTF-8: truncated sequence") }
            let b = bytes[i + k]
            if k == 1, !secondRange.contains(b) {
                if (0x80...0xBF).contains(b) {
                    let why =
                        lead == 0xED ? "encoded surrogate" : lead == 0xF4 ? "beyond U+10FFFF" : "overlong encoding"
                    throw fail("invalid UTF-8: \(why) (bytes \(hex(lead)) \(hex(b)))")
                }
                throw fail("invalid UTF-8: truncated sequence (byte \(hex(lead)) then \(hex(b)))")
            }
            guard (0x80...0xBF).contains(b) else {
                throw fail("invalid UTF-8: truncated sequence (byte \(hex(lead)) then \(hex(b)))")
            }
        }
        return n
    }

    mutating func number() throws(JSONParseError) -> JSONNumber {
        let start = i
        func digit(_ at: Int) -> Bool {
            at < bytes.count && (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[at])
        }
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard digit(i) else { throw expected("a digit in a number") }
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
            if digit(i) { throw fail("leading zero in a number") }
        } else {
            while digit(i) { i += 1 }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digit(i) else { throw expected("a digit after the decimal point") }
            while digit(i) { i += 1 }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digit(i) else { throw expected("a digit in the exponent") }
            while digit(i) { i += 1 }
        }
        if i - start > limits.maxStringBytes {
            i = start
            throw fail("number longer than \(limits.maxStringBytes) bytes", .limit)
        }
        return JSONNumber(validatedLexeme: bytes[start..<i])
    }

    mutating func literal(_ word: String) throws(JSONParseError) {
        let w = word.utf8
        guard bytes.count - i >= w.count, bytes[i..<(i + w.count)].elementsEqual(w) else {
            throw fail("invalid literal, expected '\(word)'")
        }
        i += w.count
    }

    mutating func consume(_ b: UInt8) throws(JSONParseError) -> Bool {
        guard i < bytes.count else { throw fail("unexpected end of input") }
        guard bytes[i] == b else { return false }
        i += 1
        return true
    }

    mutating func skipWhitespace() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    func expected(_ what: String) -> JSONParseError {
        i < bytes.count
            ? fail("\(describe(bytes[i])), expected \(what)") : fail("unexpected end of input, expected \(what)")
    }

    func fail(_ reason: String, _ kind: JSONParseError.Kind = .syntax) -> JSONParseError {
        JSONParseError(kind: kind, offset: i, reason: reason)
    }
}

/// A byte as a detail shows it: `'x'` when printable ASCII, else `0xE9`.
private func describe(_ b: UInt8, bare: Bool = false) -> String {
    guard (0x21...0x7E).contains(b) else { return hex(b) }
    let c = String(UnicodeScalar(b))
    return bare ? c : "'\(c)'"
}

private func hex(_ b: UInt8) -> String {
    let digits = Array("0123456789ABCDEF")
    return "0x" + String(digits[Int(b >> 4)]) + String(digits[Int(b & 15)])
}

/// A short, printable-ASCII rendering of user text for an error message: at most 40 characters,
/// anything outside U+0020-U+007E escaped, so no detail can smuggle a newline into a header.
func quoted(_ s: String) -> String {
    var out = "\""
    for (n, u) in s.unicodeScalars.enumerated() {
        if n == 40 {
            out += "..."
            break
        }
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case " "..."~": out.unicodeScalars.append(u)
        default: out += "\\u{\(String(u.value, radix: 16, uppercase: true))}"
        }
    }
    return out + "\""
}
