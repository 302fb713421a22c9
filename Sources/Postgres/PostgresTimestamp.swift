/// A `timestamptz` as whole microseconds since 1970-01-01T00:00:00Z, PostgreSQL's own
/// resolution: a `Double`-based `Date` would round the last digits and break equality checks
/// of a value written and read back.
public struct PostgresTimestamp: Sendable, Hashable, Comparable {
    public var microsecondsSinceEpoch: Int64

    public init(microsecondsSinceEpoch: Int64) {
        self.microsecondsSinceEpoch = microsecondsSinceEpoch
    }

    public static func < (a: Self, b: Self) -> Bool { a.microsecondsSinceEpoch < b.microsecondsSinceEpoch }

    private static let microsPerDay: Int64 = 86_400_000_000

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the form sent to the server. Years before 1 AD are
    /// written with PostgreSQL's ` BC` suffix (year 0 is 1 BC): ISO 8601's negative years are
    /// not accepted by its parser.
    var iso8601: String {
        let (days, micros) = floorDivide(microsecondsSinceEpoch, Self.microsPerDay)
        let (year, month, day) = civil(fromDays: days)
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
        microsecondsSinceEpoch = (days(fromCivil: year, month, day) * 86_400 + secondsOfDay) * 1_000_000 + fraction
    }
}

/// Floor division and its non-negative remainder: times before 1970 must land on the day
/// before, not be truncated towards zero (which would put 1969-12-31T23:59:59 on 1970-01-01).
private func floorDivide(_ a: Int64, _ b: Int64) -> (quotient: Int64, remainder: Int64) {
    let q = a / b
    let r = a % b
    return r < 0 ? (q - 1, r + b) : (q, r)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
/// Year 0 is 1 BC.
func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
    let y = month <= 2 ? year - 1 : year
    let era = floorDivide(y, 400).quotient
    let yearOfEra = y - era * 400
    let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
    let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
    return era * 146_097 + dayOfEra - 719_468
}

/// The inverse of `days(fromCivil:)` (Hinnant's `civil_from_days`).
func civil(fromDays days: Int64) -> (year: Int64, month: Int64, day: Int64) {
    let z = days + 719_468
    let era = floorDivide(z, 146_097).quotient
    let dayOfEra = z - era * 146_097
    let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
    let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
    let mp = (5 * dayOfYear + 2) / 153
    let day = dayOfYear - (153 * mp + 2) / 5 + 1
    let month = mp < 10 ? mp + 3 : mp - 9
    return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
}

private func pad(_ value: Int64, _ width: Int) -> String {
    let digits = String(value)
    return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}
