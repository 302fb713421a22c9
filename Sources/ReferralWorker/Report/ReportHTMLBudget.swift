import Foundation

/// Version 2's sections of the HTML report: the budget bars and the cost per plan.
extension ReportHTML {
    static func breakdowns(_ r: ProgramReport) -> String {
        func rounded(_ x: Double?) -> String { x.map { ReportTable.money(Int64($0.rounded())) } ?? "-" }
        var body = "<section><h2>Budget by month</h2>\n\(budgetSVG(r.budget.months))"
        body += table(
            [["month", "program", "issued", "reversed", "net spend", "committed", "budget", "spent"]]
                + r.budget.months.map {
                    [
                        $0.month, $0.program, ReportTable.money($0.issued.amountMinor),
                        ReportTable.money($0.reversed.amountMinor),
                        ReportTable.money($0.netSpendMinor) + " " + $0.currency, ReportTable.money($0.committedMinor),
                        $0.budgetMonthlyMinor.map(ReportTable.money) ?? "-", ReportTable.percent($0.spentShareOfBudget),
                    ]
                },
            header: true)
        if let first = r.budget.forecast.first {
            body +=
                "<p>Forecast for \(esc(first.month)) at the rate so far (\(esc(ReportTable.percent(first.elapsedFraction))) of the month elapsed):</p>\n"
            body += table(
                [["program", "spent", "forecast", "budget", "forecast of budget"]]
                    + r.budget.forecast.map {
                        [
                            $0.program, ReportTable.money($0.spentMinor) + " " + $0.currency, rounded($0.forecastMinor),
                            $0.budgetMonthlyMinor.map(ReportTable.money) ?? "-",
                            ReportTable.percent($0.forecastShareOfBudget),
                        ]
                    },
                header: true)
        }
        body +=
            "</section>\n<section><h2>Cost per qualified referral by the friend's plan</h2>\n\(planCostSVG(r.spendByPlan))"
        body +=
            table(
                [["plan", "currency", "issued", "reversed", "net cost", "qualified", "per qualified"]]
                    + r.spendByPlan.map {
                        [
                            $0.plan, $0.currency, ReportTable.money($0.issued.amountMinor),
                            ReportTable.money($0.reversed.amountMinor),
                            ReportTable.money($0.netCostMinor), "\($0.qualified)", rounded($0.costPerQualifiedMinor),
                        ]
                    },
                header: true) + "</section>\n"
        body +=
            "<section><h2>Cost per qualified referral by ask moment followed</h2>\n"
            + table(
                [["moment", "currency", "net cost", "qualified", "per qualified"]]
                    + r.costPerQualifiedByMoment.map {
                        [
                            $0.moment, $0.currency, ReportTable.money($0.netCostMinor), "\($0.qualified)",
                            rounded($0.costPerQualifiedMinor),
                        ]
                    },
                header: true) + "</section>\n"
        body +=
            "<section><h2>Leads by channel</h2>\n"
            + table(
                [["channel", "referred leads", "activated", "qualified", "conversion", "unattributed"]]
                    + r.channels.map {
                        [
                            $0.channel, "\($0.leads)", "\($0.activated)", "\($0.qualified)",
                            ReportTable.percent($0.conversion), "\($0.unattributed)",
                        ]
                    },
                header: true) + "</section>\n"
        return body
    }

    /// One bar per program and month with a budget: spent (solid) over committed (light) on a
    /// track as long as the budget, whose end is marked; past the budget, the bar runs over
    /// the mark, so an overspend is seen, not clipped.
    static func budgetSVG(_ months: [ProgramReport.BudgetMonth]) -> String {
        let budgeted = months.filter { $0.budgetMonthlyMinor != nil }
        guard !budgeted.isEmpty else { return "<p>No program has a monthly budget.</p>\n" }
        let width = 640.0
        let labelWidth = 150.0
        let barMax = 360.0
        let rowHeight = 40.0
        var svg =
            "<svg id=\"budget\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(rowHeight * Double(budgeted.count) + 10))\" role=\"img\" aria-label=\"Spend against budget\">\n"
        for (i, m) in budgeted.enumerated() {
            let limit = Double(m.budgetMonthlyMinor ?? 0)
            // The longest of the three fills the bar's room, so the limit mark stays inside it.
            let scale = barMax / max(limit, Double(m.committedMinor), Double(m.netSpendMinor), 1)
            let y = 5 + Double(i) * rowHeight
            func w(_ v: Double) -> Double { max(0, v) * scale }
            svg += "<text class=\"budget-label\" x=\"0\" y=\"\(fmt(y + 17))\">\(esc("\(m.program) \(m.month)"))</text>"
            svg +=
                "<rect class=\"budget-track\" x=\"\(fmt(labelWidth))\" y=\"\(fmt(y))\" width=\"\(fmt(w(limit)))\" height=\"24\" fill=\"#eef1f6\" stroke=\"#99a\"/>"
            svg +=
                "<rect class=\"budget-committed\" x=\"\(fmt(labelWidth))\" y=\"\(fmt(y + 4))\" width=\"\(fmt(w(Double(m.committedMinor))))\" height=\"16\" fill=\"\(palette[2])\"/>"
            svg +=
                "<rect class=\"budget-bar\" data-program=\"\(esc(m.program))\" data-month=\"\(esc(m.month))\" data-spent=\"\(m.netSpendMinor)\" data-committed=\"\(m.committedMinor)\" data-limit=\"\(m.budgetMonthlyMinor ?? 0)\" x=\"\(fmt(labelWidth))\" y=\"\(fmt(y + 8))\" width=\"\(fmt(w(Double(m.netSpendMinor))))\" height=\"8\" fill=\"\(palette[0])\"/>"
            svg +=
                "<line class=\"budget-limit\" x1=\"\(fmt(labelWidth + w(limit)))\" y1=\"\(fmt(y - 2))\" x2=\"\(fmt(labelWidth + w(limit)))\" y2=\"\(fmt(y + 26))\" stroke=\"\(palette[5])\" stroke-width=\"2\"/>"
            let text =
                "spent \(ReportTable.money(m.netSpendMinor)) / committed \(ReportTable.money(m.committedMinor)) / limit \(ReportTable.money(Int64(limit))) \(m.currency)"
            svg +=
                "<text class=\"budget-value\" x=\"\(fmt(labelWidth))\" y=\"\(fmt(y + 37))\" style=\"font-size: 11px\">\(esc(text))</text>\n"
        }
        return svg + "</svg>\n"
    }

    /// One horizontal bar per plan (and currency): the net cost per qualified referral.
    static func planCostSVG(_ plans: [ProgramReport.PlanCost]) -> String {
        let costed = plans.filter { $0.costPerQualifiedMinor != nil }
        guard !costed.isEmpty else { return "<p>No qualified referral in the period.</p>\n" }
        let width = 640.0
        let labelWidth = 150.0
        let barMax = 360.0
        let rowHeight = 30.0
        let top = max(costed.compactMap(\.costPerQualifiedMinor).max() ?? 1, 1)
        var svg =
            "<svg id=\"plan-cost\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(rowHeight * Double(costed.count) + 10))\" role=\"img\" aria-label=\"Cost per qualified referral by plan\">\n"
        for (i, p) in costed.enumerated() {
            let cost = p.costPerQualifiedMinor ?? 0
            let y = 5 + Double(i) * rowHeight
            // A plan that cost something keeps a visible sliver beside one that cost a hundred times more.
            let w = cost <= 0 ? 0 : max(2, barMax * cost / top)
            svg += "<text class=\"plan-cost-label\" x=\"0\" y=\"\(fmt(y + 16))\">\(esc(p.plan))</text>"
            svg +=
                "<rect class=\"plan-cost-bar\" data-plan=\"\(esc(p.plan))\" data-currency=\"\(esc(p.currency))\" data-cost=\"\(Int64(cost.rounded()))\" x=\"\(fmt(labelWidth))\" y=\"\(fmt(y))\" width=\"\(fmt(w))\" height=\"22\" rx=\"3\" fill=\"\(palette[(i + 3) % palette.count])\"/>"
            svg +=
                "<text class=\"plan-cost-value\" x=\"\(fmt(labelWidth + w + 8))\" y=\"\(fmt(y + 16))\">\(esc(ReportTable.money(Int64(cost.rounded())) + " " + p.currency))</text>\n"
        }
        return svg + "</svg>\n"
    }
}
