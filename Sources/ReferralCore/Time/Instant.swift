import CivilTime

/// A point in time, in whole microseconds since 1970-01-01T00:00:00Z.
///
/// The core keeps its own time type instead of `Foundation.Date` so that it stays free of
/// ambient clocks, compares exactly (a Double-based date would round microseconds that
/// PostgreSQL's `timestamptz` keeps) and orders facts deterministically.
public struct Instant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var microseconds: Int64

    public init(microseconds: Int64) { self.microseconds = microseconds }
    public init(seconds: Int64) { self.microseconds = seconds * 1_000_000 }

    public static func < (a: Instant, b: Instant) -> Bool { a.microseconds < b.microseconds }

    public static func + (a: Instant, d: Span) -> Instant { Instant(microseconds: a.microseconds + d.microseconds) }
    public static func - (a: Instant, d: Span) -> Instant { Instant(microseconds: a.microseconds - d.microseconds) }
    public static func - (a: Instant, b: Instant) -> Span { Span(microseconds: a.microseconds - b.microseconds) }

    public var description: String { rfc3339 }

    /// RFC 3339 in UTC: `2026-11-23T10:31:07Z`, with `.ffffff` only when there are microseconds.
    public var rfc3339: String {
        let (days, micros) = floorDivide(microseconds, by: microsecondsPerDay)
        let date = CivilDate(daysSinceEpoch: days)
        let (y, m, d) = (date.year, date.month, date.day)
        let secs = micros / 1_000_000
        let frac = micros % 1_000_000
        guard (0...9999).contains(y) else {
            var s =
                "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(secs / 3600, 2)):\(pad(secs / 60 % 60, 2)):\(pad(secs % 60, 2))"
            if frac != 0 { s += "." + pad(frac, 6) }
            return s + "Z"
        }
        // Every timestamp the daemon stores or publishes goes through here (several per event):
        // digits written into one buffer, not interpolated and padded strings, keep formatting
        // off the hot path's profile.
        var b = [UInt8](repeating: 0, count: frac == 0 ? 20 : 27)
        func put(_ v: Int64, at: Int, width: Int) {
            var v = v
            for i in stride(from: at + width - 1, through: at, by: -1) {
                b[i] = UInt8(truncatingIfNeeded: 48 + v % 10)
                v /= 10
            }
        }
        put(y, at: 0, width: 4)
        b[4] = 45
        put(m, at: 5, width: 2)
        b[7] = 45
        put(d, at: 8, width: 2)
        b[10] = 84
        put(secs / 3600, at: 11, width: 2)
        b[13] = 58
        put(secs / 60 % 60, at: 14, width: 2)
        b[16] = 58
        put(secs % 60, at: 17, width: 2)
        if frac != 0 {
            b[19] = 46
            put(frac, at: 20, width: 6)
        }
        b[b.count - 1] = 90
        return String(decoding: b, as: UTF8.self)
    }

    /// 0001-01-01T00:00:00Z: PostgreSQL's `timestamptz` holds no year 0 (nor, before it, a year
    /// its proleptic calendar would call 1 BC).
    public static let earliestStorable = Instant(startOf: CivilDate(year: 1, month: 1, day: 1))

    /// Parses the contract's timestamp shape: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, `T` and
    /// `Z` in either case. Fractions beyond microseconds are truncated. Returns nil for anything
    /// else, including impossible dates such as February 30th or an hour of 24.
    public init?(rfc3339 text: String) {
        let b = Array(text.utf8)
        func digits(_ at: Int, _ n: Int) -> Int64? {
            guard at + n <= b.count else { return nil }
            var v: Int64 = 0
            for i in at..<(at + n) {
                guard b[i] >= 48, b[i] <= 57 else { return nil }
                v = v * 10 + Int64(b[i] - 48)
            }
            return v
        }
        guard b.count >= 20,
            let y = digits(0, 4), b[4] == UInt8(ascii: "-"), let mo = digits(5, 2), b[7] == UInt8(ascii: "-"),
            let d = digits(8, 2), b[10] == UInt8(ascii: "T") || b[10] == UInt8(ascii: "t"),
            let h = digits(11, 2), b[13] == UInt8(ascii: ":"), let mi = digits(14, 2),
            b[16] == UInt8(ascii: ":"), let s = digits(17, 2)
        else { return nil }
        var i = 19
        var frac: Int64 = 0
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            var n = 0
            while i < b.count, b[i] >= 48, b[i] <= 57 {
                if n < 6 { frac = frac * 10 + Int64(b[i] - 48) }
                n += 1
                i += 1
            }
            guard n > 0 else { return nil }
            for _ in n..<max(n, 6) { frac *= 10 }
        }
        guard i < b.count else { return nil }
        var offset: Int64 = 0
        if b[i] == UInt8(ascii: "Z") || b[i] == UInt8(ascii: "z") {
            i += 1
        } else if b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") {
            guard let oh = digits(i + 1, 2), i + 3 < b.count, b[i + 3] == UInt8(ascii: ":"),
                let om = digits(i + 4, 2), oh < 24, om < 60
            else { return nil }
            offset = (oh * 60 + om) * 60 * (b[i] == UInt8(ascii: "-") ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        let date = CivilDate(year: y, month: mo, day: d)
        guard i == b.count, date.isValid, h < 24, mi < 60, s < 61 else { return nil }
        // A leap second (:60) is read as the next second's start, as PostgreSQL does.
        let secondsOfDay = h * 3600 + mi * 60 + s - offset
        microseconds = (date.daysSinceEpoch * 86_400 + secondsOfDay) * 1_000_000 + frac
    }
}

/// A length of time in microseconds (a hold, a window, a gap).
public struct Span: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var microseconds: Int64
    public init(microseconds: Int64) { self.microseconds = microseconds }
    public static func seconds(_ s: Int64) -> Span { Span(microseconds: s * 1_000_000) }
    public static func minutes(_ m: Int64) -> Span { .seconds(m * 60) }
    public static func hours(_ h: Int64) -> Span { .seconds(h * 3600) }
    public static func days(_ d: Int64) -> Span { .seconds(d * 86_400) }
    public static func < (a: Span, b: Span) -> Bool { a.microseconds < b.microseconds }
    public static func + (a: Span, b: Span) -> Span { Span(microseconds: a.microseconds + b.microseconds) }
    public static func * (a: Span, n: Int64) -> Span { Span(microseconds: a.microseconds * n) }

    /// The shortest exact form with the contract's units: `30d`, `36h`, `10m`, `45s`.
    public var description: String {
        let s = microseconds / 1_000_000
        if microseconds % 1_000_000 != 0 { return "\(microseconds)us" }
        if s != 0, s % 86_400 == 0 { return "\(s / 86_400)d" }
        if s != 0, s % 3600 == 0 { return "\(s / 3600)h" }
        if s != 0, s % 60 == 0 { return "\(s / 60)m" }
        return "\(s)s"
    }

    /// Parses a duration written with a unit, as programs files do: `45s`, `10m`, `36h`, `30d`.
    /// A bare number is refused: "30" could mean seconds or days, and a wrong guess silently
    /// turns a 30-day hold into a 30-second one.
    public init?(_ text: String) {
        guard let unit = text.last, let n = Int64(text.dropLast()), n >= 0 else { return nil }
        switch unit {
        case "s": microseconds = n * 1_000_000
        case "m": microseconds = n * 60_000_000
        case "h": microseconds = n * 3_600_000_000
        case "d": microseconds = n * 86_400_000_000
        default: return nil
        }
    }
}

/// Stored as its RFC 3339 text (`effective_from` of a stored program), as the contract writes times.
extension Instant: Codable {
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let text = try c.decode(String.self)
        guard let at = Instant(rfc3339: text) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "\"\(text)\" is not an RFC 3339 time")
        }
        self = at
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rfc3339)
    }
}

/// Stored as the programs file writes it (`30d`): a bare number in stored JSON would reopen the
/// seconds-or-days ambiguity that `Span("30")` refuses.
extension Span: Codable {
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let text = try c.decode(String.self)
        guard let span = Span(text) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "\"\(text)\" is not a duration with a unit")
        }
        self = span
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// The clock is passed in: the core never reads the time itself, so tests and replays decide it.
public protocol Clock: Sendable {
    func now() -> Instant
}

private func pad(_ v: Int64, _ width: Int) -> String {
    let s = String(v)
    return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
}

extension Duration {
    /// The duration in seconds, with its fraction: for figures printed and logged.
    public var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
