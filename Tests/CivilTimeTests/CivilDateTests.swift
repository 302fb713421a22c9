import CivilTime
import Testing

@Suite struct CivilDateTests {
    @Test func theEpochIsDayZero() {
        #expect(CivilDate(daysSinceEpoch: 0) == CivilDate(year: 1970, month: 1, day: 1))
        #expect(CivilDate(year: 1970, month: 1, day: 1).daysSinceEpoch == 0)
    }

    /// Dates checked against another calendar (GNU date, proleptic Gregorian), on both sides of
    /// the epoch and of the 400-year eras the algorithm counts in.
    static let datesByDay: [(days: Int64, date: CivilDate)] = [
        (-1, CivilDate(year: 1969, month: 12, day: 31)),
        (-719_468, CivilDate(year: 0, month: 3, day: 1)),
        (-719_162, CivilDate(year: 1, month: 1, day: 1)),
        (-25_567, CivilDate(year: 1900, month: 1, day: 1)),
        (10_957, CivilDate(year: 2000, month: 1, day: 1)),
        (11_016, CivilDate(year: 2000, month: 2, day: 29)),
        (19_782, CivilDate(year: 2024, month: 2, day: 29)),
        (20_513, CivilDate(year: 2026, month: 3, day: 1)),
        (2_932_896, CivilDate(year: 9999, month: 12, day: 31)),
    ]

    @Test(arguments: datesByDay)
    func knownDays(days: Int64, date: CivilDate) {
        #expect(CivilDate(daysSinceEpoch: days) == date)
        #expect(date.daysSinceEpoch == days)
    }

    /// Every day of a wide range, negative days included, maps to a valid date and back, and
    /// consecutive days are consecutive dates.
    @Test func roundTripsOverAWideRangeOfDays() {
        var previous = CivilDate(daysSinceEpoch: -1_000_001)
        for days in Int64(-1_000_000)...1_000_000 {
            let date = CivilDate(daysSinceEpoch: days)
            let next =
                previous.day < CivilDate.daysIn(month: previous.month, year: previous.year)
                ? CivilDate(year: previous.year, month: previous.month, day: previous.day + 1)
                : previous.firstOfNextMonth
            if !date.isValid || date.daysSinceEpoch != days || date != next {
                Issue.record("day \(days): \(date) does not follow \(previous)")
                return
            }
            previous = date
        }
    }

    @Test func roundTripsFarFromTheEpoch() {
        let wrong = stride(from: Int64(-100_000_000_000), through: 100_000_000_000, by: 7_777_777).filter {
            CivilDate(daysSinceEpoch: $0).daysSinceEpoch != $0
        }
        #expect(wrong.isEmpty)
    }

    static let leapness: [(year: Int64, leap: Bool)] = [
        (1900, false), (2000, true), (2024, true), (2100, false), (2023, false), (0, true), (-4, true), (-100, false),
    ]

    @Test(arguments: leapness)
    func leapYears(year: Int64, leap: Bool) {
        #expect(CivilDate.isLeapYear(year) == leap)
        #expect(CivilDate.daysIn(month: 2, year: year) == (leap ? 29 : 28))
        #expect(CivilDate(year: year, month: 2, day: 29).isValid == leap)
        // The day after 28 February is 29 February only in a leap year.
        let after28 = CivilDate(daysSinceEpoch: CivilDate(year: year, month: 2, day: 28).daysSinceEpoch + 1)
        #expect(after28 == (leap ? CivilDate(year: year, month: 2, day: 29) : CivilDate(year: year, month: 3, day: 1)))
        // A year is 366 days long exactly when it is a leap year.
        let length =
            CivilDate(year: year + 1, month: 1, day: 1).daysSinceEpoch
            - CivilDate(year: year, month: 1, day: 1).daysSinceEpoch
        #expect(length == (leap ? 366 : 365))
    }

    @Test func invalidDates() {
        #expect(!CivilDate(year: 2026, month: 2, day: 30).isValid)
        #expect(!CivilDate(year: 2026, month: 4, day: 31).isValid)
        #expect(!CivilDate(year: 2026, month: 13, day: 1).isValid)
        #expect(!CivilDate(year: 2026, month: 0, day: 1).isValid)
        #expect(!CivilDate(year: 2026, month: 1, day: 0).isValid)
        #expect(CivilDate(year: 2026, month: 12, day: 31).isValid)
    }

    @Test func monthStarts() {
        let date = CivilDate(year: 2026, month: 12, day: 17)
        #expect(date.firstOfMonth == CivilDate(year: 2026, month: 12, day: 1))
        #expect(date.firstOfNextMonth == CivilDate(year: 2027, month: 1, day: 1))
        #expect(CivilDate(year: 2024, month: 2, day: 29).firstOfNextMonth == CivilDate(year: 2024, month: 3, day: 1))
    }

    @Test func floorDivisionRoundsTowardsNegativeInfinity() {
        #expect(floorDivide(-1, by: microsecondsPerDay) == (-1, microsecondsPerDay - 1))
        #expect(floorDivide(-microsecondsPerDay, by: microsecondsPerDay) == (-1, 0))
        #expect(floorDivide(microsecondsPerDay + 5, by: microsecondsPerDay) == (1, 5))
        #expect(floorDivide(0, by: 7) == (0, 0))
    }
}
