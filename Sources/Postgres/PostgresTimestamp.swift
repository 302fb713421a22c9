import CivilTime

/// A `timestamptz` as whole microseconds since 1970-01-01T00:00:00Z, PostgreSQL's own
/// resolution: a `Double`-based `Date` would round the last digits and break equality checks
/// of a value written and read back.
public struct PostgresTimestamp: Sendable, Hashable, Comparable {
    public var microsecondsSinceEpoch: Int64

    public init(microsecondsSinceEpoch: Int64) {
        self.microsecondsSinceEpoch = microsecondsSinceEpoch
    }

    public static func < (a: Self, b: Self) -> Bool { a.microsecondsSinceEpoch < b.microsecondsSinceEpoch }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the form sent to the server. Years before 1 AD are
    /// written with PostgreSQL's ` BC` suffix (year 0 is 1 BC): ISO 8601's negative years are
    /// not accepted by its parser.
    var iso8601: String {
        let (days, micros) = floorDivide(microsecondsSinceEpoch, by: microsecondsPerDay)
        let date = CivilDate(daysSinceEpoch: days)
        let (year, month, day) = (date.year, date.month, date.day)
        let seconds = micros / 1_000_000
        var text = pad(year > 0 ? year : 1 - year, 4) + "-" + pad(month, 2) + "-" + pad(day, 2)
        text += "T" + pad(seconds / 3600, 2) + ":" + pad(seconds / 60 % 60, 2) + ":" + pad(seconds % 60, 2)
        text += "." + pad(micros % 1_000_000, 6) + "Z"
        return year > 0 ? text : text + " BC"
    }

    /// Parses PostgreSQL's ISO output: `2026-11-23 10:31:07.123456+00`, with an optional
    /// fraction, an offset of `±HH`, `±HH:MM` or `±HH:MM:SS` (historic zones have seconds),
    /// years of more than four digits and a ` BC` suffix. The session runs with
    /// `TimeZone = 'UTC'`, but the offset is honoured so that a caller's `SET TimeZone` cannot
    /// shift values silently. `infinity` and anything malformed give nil.
    init?(postgresText text: String) {
        let b = Array(text.utf8)
        var i = 0
        func number(minDigits: Int, maxDigits: Int) -> Int64? {
            let start = i
            var value: Int64 = 0
            while i < b.count, b[i] >= 48, b[i] <= 57, i - start < maxDigits {
                value = value * 10 + Int64(b[i] - 48)
                i += 1
            }
            return i - start >= minDigits ? value : nil
        }
        func expect(_ c: Character) -> Bool {
            guard i < b.count, b[i] == c.asciiValue! else { return false }
            i += 1
            return true
        }
        guard var year = number(minDigits: 4, maxDigits: 7), expect("-"),
            let month = number(minDigits: 2, maxDigits: 2), expect("-"),
            let day = number(minDigits: 2, maxDigits: 2), expect(" ") || expect("T"),
            let hour = number(minDigits: 2, maxDigits: 2), expect(":"),
            let minute = number(minDigits: 2, maxDigits: 2), expect(":"),
            let second = number(minDigits: 2, maxDigits: 2)
        else { return nil }
        var fraction: Int64 = 0
        if expect(".") {
            let start = i
            guard let digits = number(minDigits: 1, maxDigits: 6) else { return nil }
            fraction = digits
            for _ in (i - start)..<6 { fraction *= 10 }
        }
        guard i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") else { return nil }
        let sign: Int64 = b[i] == UInt8(ascii: "-") ? -1 : 1
        i += 1
        guard let offsetHours = number(minDigits: 2, maxDigits: 2) else { return nil }
        var offsetSeconds = offsetHours * 3600
        if expect(":") {
            guard let m = number(minDigits: 2, maxDigits: 2) else { return nil }
            offsetSeconds += m * 60
            if expect(":") {
                guard let s = number(minDigits: 2, maxDigits: 2) else { return nil }
                offsetSeconds += s
            }
        }
        if i < b.count {
            guard expect(" "), expect("B"), expect("C"), year > 0 else { return nil }
            year = 1 - year
        }
        guard i == b.count, (1...12).contains(month), (1...31).contains(day),
            hour < 24, minute < 60, second < 60
        else { return nil }
        let secondsOfDay = hour * 3600 + minute * 60 + second - sign * offsetSeconds
        let days = CivilDate(year: year, month: month, day: day).daysSinceEpoch
        microsecondsSinceEpoch = (days * 86_400 + secondsOfDay) * 1_000_000 + fraction
    }
}

private func pad(_ value: Int64, _ width: Int) -> String {
    let digits = String(value)
    return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}
