import CivilTime

/// The UTC calendar the rules count in: the code's day (`max_leads_per_code_per_day`), the
/// referrer's year (`max_rewards_per_referrer_per_year`) and the budget's month.
extension Instant {
    init(utcDay day: Int64) { self.init(microseconds: day * microsecondsPerDay) }
    init(startOf date: CivilDate) { self.init(utcDay: date.daysSinceEpoch) }

    /// Days since 1970-01-01 of the instant's UTC day.
    var utcDay: Int64 { floorDivide(microseconds, by: microsecondsPerDay).quotient }
    var utcDate: CivilDate { CivilDate(daysSinceEpoch: utcDay) }

    /// The UTC calendar year of the instant.
    var utcYear: Int64 { utcDate.year }

    /// The first instant of the instant's UTC calendar month.
    var utcMonthStart: Instant { Instant(startOf: utcDate.firstOfMonth) }

    /// The first instant of the UTC calendar month after the instant's.
    var nextUTCMonthStart: Instant { Instant(startOf: utcDate.firstOfNextMonth) }

    /// 1 January of `year`, 00:00 UTC.
    static func yearStart(_ year: Int64) -> Instant { Instant(startOf: CivilDate(year: year, month: 1, day: 1)) }
}
