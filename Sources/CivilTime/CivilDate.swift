/// A day of the proleptic Gregorian calendar, counted in days since 1970-01-01 (UTC days: no
/// leap seconds, no time zones). Year 0 is 1 BC, year -1 is 2 BC.
///
/// Exact integer arithmetic (Howard Hinnant's `days_from_civil` and `civil_from_days`), so that
/// every instant before 1970 or after 9999 lands on its right day: a `Foundation.Calendar` would
/// bring time zones and a Julian switch-over that stored timestamps do not have.
public struct CivilDate: Hashable, Sendable {
    public var year: Int64
    /// 1...12.
    public var month: Int64
    /// 1...31.
    public var day: Int64

    public init(year: Int64, month: Int64, day: Int64) {
        self.year = year
        self.month = month
        self.day = day
    }

    /// The date `days` days after 1970-01-01 (before it when negative): `civil_from_days`.
    public init(daysSinceEpoch days: Int64) {
        let z = days + 719_468
        let era = floorDivide(z, by: 146_097).quotient
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        // Months counted from March, so that February's leap day ends the counting year.
        let marchMonth = (5 * dayOfYear + 2) / 153
        day = dayOfYear - (153 * marchMonth + 2) / 5 + 1
        month = marchMonth < 10 ? marchMonth + 3 : marchMonth - 9
        year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
    }

    /// Days from 1970-01-01 to this date (negative before it): `days_from_civil`. Meaningful
    /// only for a valid date (`isValid`).
    public var daysSinceEpoch: Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = floorDivide(y, by: 400).quotient
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// Whether the date exists: February 30th and month 13 do not.
    public var isValid: Bool { (1...12).contains(month) && day >= 1 && day <= Self.daysIn(month: month, year: year) }

    /// The first day of this date's month.
    public var firstOfMonth: CivilDate { CivilDate(year: year, month: month, day: 1) }

    /// The first day of the month after this date's.
    public var firstOfNextMonth: CivilDate {
        month == 12 ? CivilDate(year: year + 1, month: 1, day: 1) : CivilDate(year: year, month: month + 1, day: 1)
    }

    public static func isLeapYear(_ year: Int64) -> Bool { (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 }

    /// The length of `month` (1...12) in `year`.
    public static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: return isLeapYear(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }
}

/// Microseconds in a UTC day.
public let microsecondsPerDay: Int64 = 86_400_000_000

/// Division by a positive `b` rounding towards negative infinity, with its remainder in
/// `0..<b`: an instant
/// before 1970 must land on the day before, not be truncated towards zero (which would put
/// 1969-12-31T23:59:59 on 1970-01-01).
public func floorDivide(_ a: Int64, by b: Int64) -> (quotient: Int64, remainder: Int64) {
    let q = a / b
    let r = a % b
    return r < 0 ? (q - 1, r + b) : (q, r)
}
