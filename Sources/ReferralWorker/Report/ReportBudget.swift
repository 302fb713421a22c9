import ReferralCore
import ReferralStore

extension ProgramReport.Money {
    init(_ m: ReportFigures.Money) { self.init(count: m.count, amountMinor: m.amountMinor) }
}

extension ProgramReport {
    /// Each month's spend against its program's budget, and the current month's forecast: for
    /// every program with spend so far this month or a budget, the spend (issued minus reversed
    /// since the month began) divided by the share of the month elapsed at `now`.
    static func budget(_ f: ReportFigures, now: Instant) -> Budget {
        func ratio(_ a: Double, _ b: Double) -> Double? { b > 0 ? a / b : nil }
        let limits = Dictionary(f.budgets.map { ($0.programId, $0) }, uniquingKeysWith: { a, _ in a })
        // A budget is in its program's currency: a month's spend in another has none to compare with.
        func limit(_ program: String, _ currency: String) -> Int64? {
            limits[program].flatMap { $0.currency == currency ? $0.monthlyMinor : nil }
        }
        let months = f.months.map { m -> BudgetMonth in
            let net = m.issued.amountMinor - m.reversed.amountMinor
            let budget = limit(m.programId, m.currency)
            return BudgetMonth(
                month: m.month, program: m.programId, currency: m.currency, issued: Money(m.issued),
                reversed: Money(m.reversed), netSpendMinor: net, committedMinor: m.committedMinor,
                budgetMonthlyMinor: budget, spentShareOfBudget: budget.flatMap { ratio(Double(net), Double($0)) },
                committedShareOfBudget: budget.flatMap { ratio(Double(m.committedMinor), Double($0)) })
        }
        let mtd = f.monthToDate
        let elapsed =
            ratio(
                Double(now.microseconds - mtd.start.microseconds), Double(mtd.end.microseconds - mtd.start.microseconds)
            ) ?? 0
        var spent: [String: [String: Int64]] = [:]
        for s in mtd.spend { spent[s.programId, default: [:]][s.currency] = s.issuedMinor - s.reversedMinor }
        for b in f.budgets where spent[b.programId]?[b.currency] == nil {
            spent[b.programId, default: [:]][b.currency] = 0
        }
        let forecast = spent.flatMap { program, byCurrency in
            byCurrency.map { currency, minor -> Forecast in
                let projected = ratio(Double(minor), elapsed)
                let budget = limit(program, currency)
                return Forecast(
                    month: mtd.month, program: program, currency: currency, spentMinor: minor, elapsedFraction: elapsed,
                    forecastMinor: projected, budgetMonthlyMinor: budget,
                    forecastShareOfBudget: budget.flatMap { b in projected.flatMap { ratio($0, Double(b)) } })
            }
        }.sorted { ($0.program, $0.currency) < ($1.program, $1.currency) }
        return Budget(months: months, forecast: forecast)
    }
}
