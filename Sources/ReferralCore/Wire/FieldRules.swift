/// A field that fails its schema: its dotted path from the event root and why, which the
/// classifier turns into the `x-referrald-detail` line `<path>: <reason>`.
public struct FieldError: Error, Sendable, Equatable {
    public var path: String
    public var reason: String
}

/// Why a value fails a rule; the reader adds the field path.
struct Invalid: Error {
    var reason: String
    init(_ reason: String) { self.reason = reason }
}

/// One JSON Schema definition of the contract (`Id`, `Timestamp`, `AmountMinor`...) as a typed
/// check: a value either converts to `T` or is refused with a one-line reason.
struct Rule<T> {
    let check: (JSONValue) throws(Invalid) -> T

    /// A rule on a string value; anything else is a type error.
    static func string(_ then: @escaping (String) throws(Invalid) -> T) -> Rule<T> {
        Rule { (v: JSONValue) throws(Invalid) -> T in
            guard case .string(let s) = v else { throw Invalid("expected a string, got \(v.kindDescription)") }
            return try then(s)
        }
    }

    /// A rule on an integer value, in JSON Schema's sense: `5e3` and `5.0` are integers.
    static func integer(_ then: @escaping (Int64) throws(Invalid) -> T) -> Rule<T> {
        Rule { (v: JSONValue) throws(Invalid) -> T in
            guard case .number(let n) = v, n.isIntegral else {
                throw Invalid("expected an integer, got \(v.kindDescription)")
            }
            // Integral but beyond Int64: above every maximum, below every minimum in the contract.
            guard let x = n.int64 else { throw Invalid("\(short(n.lexeme)) is out of range") }
            return try then(x)
        }
    }
}

extension Rule where T == String {
    /// `Id`: 1-128 printable ASCII characters (U+0020-U+007E).
    static var id: Rule { .string { (s) throws(Invalid) in try ascii(s, 0x20...0x7E, maxLength: 128) } }

    /// The envelope `source`: 1-256 visible ASCII characters (U+0021-U+007E).
    static var source: Rule { .string { (s) throws(Invalid) in try ascii(s, 0x21...0x7E, maxLength: 256) } }

    /// `Reason` and the envelope `subject`: any non-empty string. Free text, so a NUL in it
    /// (valid JSON, `\u0000`) is replaced by U+FFFD rather than refused: PostgreSQL's text and
    /// jsonb cannot hold it, the batch failed on every delivery until the event was dead-lettered
    /// as `processing_failed`, and refusing a `service.cancelled` for its reason would drop the
    /// cancellation and miss a clawback.
    static var nonEmpty: Rule {
        .string { (s) throws(Invalid) in
            guard !s.isEmpty else { throw Invalid("empty string") }
            guard s.unicodeScalars.contains("\u{0}") else { return s }
            var mended = String.UnicodeScalarView()
            for u in s.unicodeScalars { mended.append(u == "\u{0}" ? "\u{FFFD}" : u) }
            return String(mended)
        }
    }

    /// Any string (a `referral_code` as entered: a malformed one is unattributed, not invalid).
    static var any: Rule { .string { $0 } }

    /// `Currency`: `^[A-Z]{3}$`, upper-case ISO 4217.
    static var currency: Rule {
        .string { (s) throws(Invalid) in
            guard s.utf8.count == 3, s.utf8.allSatisfy({ (0x41...0x5A).contains($0) }) else {
                throw Invalid("\(quoted(s)) is not an upper-case ISO 4217 code ([A-Z]{3})")
            }
            return s
        }
    }

    /// The envelope `datacontenttype`: `^application/json( *;.*)?$` with ECMA-262 semantics,
    /// where `.` matches no line terminator, so parameters cannot carry a line break.
    static var mediaType: Rule {
        .string { (s) throws(Invalid) in
            let u = Array(s.unicodeScalars)
            let base = Array("application/json".unicodeScalars)
            let params = u.dropFirst(base.count).drop { $0 == " " }
            let terminators: [Unicode.Scalar] = ["\n", "\r", "\u{2028}", "\u{2029}"]
            guard u.starts(with: base),
                u.count == base.count || (params.first == ";" && !params.contains(where: terminators.contains))
            else { throw Invalid("\(quoted(s)) is not application/json") }
            return s
        }
    }

    private static func ascii(_ s: String, _ allowed: ClosedRange<UInt32>, maxLength: Int) throws(Invalid) -> String {
        guard !s.isEmpty else { throw Invalid("empty string") }
        for (n, u) in s.unicodeScalars.enumerated() where !allowed.contains(u.value) {
            throw Invalid("character \(n + 1) is \(quoted(String(u))), outside U+\(hex4(allowed.lowerBound))-U+007E")
        }
        // ASCII only from here, so bytes are characters.
        guard s.utf8.count <= maxLength else {
            throw Invalid("\(s.utf8.count) characters, longer than \(maxLength)")
        }
        return s
    }
}

extension Rule where T == Instant {
    /// `Timestamp`: RFC 3339 with an offset, and a date and time that exist.
    static var timestamp: Rule {
        .string { (s) throws(Invalid) in
            guard let t = Instant(rfc3339: s) else {
                throw Invalid("\(quoted(s)) is not an RFC 3339 date-time with an offset")
            }
            // Valid RFC 3339, but PostgreSQL stores no year 0: accepted, it failed its batch on
            // every delivery instead of being refused once.
            guard t >= Instant.earliestStorable else {
                throw Invalid("\(quoted(s)) is before 0001-01-01T00:00:00Z, the earliest time that can be stored")
            }
            return t
        }
    }
}

extension Rule where T == Int64 {
    /// `AmountMinor`: an integer in 0...2^53-1, so every consumer holds it exactly.
    static var amount: Rule { integer(min: 0, max: 9_007_199_254_740_991) }

    static func integer(min: Int64, max: Int64 = .max) -> Rule {
        .integer { (x) throws(Invalid) in
            guard x >= min else { throw Invalid("\(x) is below the minimum \(min)") }
            guard x <= max else { throw Invalid("\(x) is above the maximum \(max)") }
            return x
        }
    }
}

extension Rule where T == Double {
    /// A JSON Schema `number` at or above `minimum`, or strictly above `exclusiveMinimum`.
    /// Non-finite values (`1e400`) are refused: the schema has no maximum, but no speed is
    /// infinite and a ratio with one would decide an ask on nonsense.
    static func number(minimum: Double? = nil, exclusiveMinimum: Double? = nil) -> Rule {
        Rule { (v: JSONValue) throws(Invalid) -> Double in
            guard case .number(let n) = v else { throw Invalid("expected a number, got \(v.kindDescription)") }
            let x = n.double
            guard x.isFinite else { throw Invalid("\(short(n.lexeme)) is out of range") }
            if let minimum, x < minimum { throw Invalid("\(short(n.lexeme)) is below the minimum \(minimum)") }
            if let exclusiveMinimum, x <= exclusiveMinimum {
                throw Invalid("\(short(n.lexeme)) is not above \(exclusiveMinimum)")
            }
            return x
        }
    }
}

extension Rule where T == Bool {
    static var boolean: Rule {
        Rule { (v: JSONValue) throws(Invalid) -> Bool in
            guard case .bool(let b) = v else { throw Invalid("expected a boolean, got \(v.kindDescription)") }
            return b
        }
    }
}

extension Rule where T == JSONObject {
    static var object: Rule {
        Rule { (v: JSONValue) throws(Invalid) -> JSONObject in
            guard case .object(let o) = v else { throw Invalid("expected an object, got \(v.kindDescription)") }
            return o
        }
    }
}

extension Rule where T: RawRepresentable & CaseIterable, T.RawValue == String {
    /// One of the enum's raw values, compared byte-wise.
    static var oneOf: Rule {
        .string { (s) throws(Invalid) in
            guard let match = T.allCases.first(where: { $0.rawValue.utf8.elementsEqual(s.utf8) }) else {
                let allowed = T.allCases.map(\.rawValue).joined(separator: ", ")
                throw Invalid("\(quoted(s)) is not one of \(allowed)")
            }
            return match
        }
    }
}

/// Reads the members of one object, naming each failure by its dotted path from the event root.
struct FieldReader {
    let object: JSONObject
    let path: String

    /// A required member; `null` is checked by the rule, so it fails like any other wrong type.
    func required<T>(_ name: String, _ rule: Rule<T>) throws(FieldError) -> T {
        guard let v = object[name] else { throw FieldError(path: at(name), reason: "missing") }
        return try check(name, v, rule)
    }

    /// An optional consumed field: absent and `null` both mean no value (contract README).
    func optional<T>(_ name: String, _ rule: Rule<T>) throws(FieldError) -> T? {
        guard let v = object[name], v != .null else { return nil }
        return try check(name, v, rule)
    }

    /// An optional envelope attribute: may be absent, but `null` is not a value its schema allows.
    func ifPresent<T>(_ name: String, _ rule: Rule<T>) throws(FieldError) -> T? {
        guard let v = object[name] else { return nil }
        return try check(name, v, rule)
    }

    private func check<T>(_ name: String, _ v: JSONValue, _ rule: Rule<T>) throws(FieldError) -> T {
        do { return try rule.check(v) } catch { throw FieldError(path: at(name), reason: error.reason) }
    }

    private func at(_ name: String) -> String { path.isEmpty ? name : path + "." + name }
}

/// A number lexeme cut to 40 characters: enough to recognise, never a pasted megabyte.
private func short(_ lexeme: String) -> String {
    lexeme.utf8.count <= 40 ? lexeme : String(lexeme.prefix(40)) + "..."
}

private func hex4(_ v: UInt32) -> String {
    let s = String(v, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, 4 - s.count)) + s
}
