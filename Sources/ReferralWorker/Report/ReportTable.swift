import Foundation

/// The report as a terminal table: what a program owner reads first.
enum ReportTable {
    static func render(_ r: ProgramReport) -> String {
        var out = "Referral report \(r.program.map { "for program \($0)" } ?? "for all programs")\n"
        out += "Period \(r.period.from) to \(r.period.to) (\(number(r.period.days)) days)\n\n"

        out += "Asks and participation\n"
        out += rows([
            ["customers asked", "\(r.asks.customersAsked)", ""],
            ["asks sent", "\(r.asks.asksSent)", ""],
            [
                "participating referrers", "\(r.participation.referrers)",
                "\(r.participation.askedReferrers) of them asked",
            ],
            [
                "share of asked who referred", percent(r.participation.rate),
                "rule of thumb \(percent(r.participation.benchmarkRate))",
            ],
            [
                "leads per referrer per year", r.leads.perReferrerPerYear.map(number) ?? "-",
                "rule of thumb \(number(r.leads.benchmarkPerReferrerPerYear))",
            ],
            [
                "estimated leads", number(r.estimate.estimatedLeads),
                "\(r.estimate.customersAsked) asked × \(percent(r.estimate.participationRate)) × \(number(r.estimate.leadsPerReferrer)) leads",
            ],
            ["actual referred leads", "\(r.estimate.actualLeads)", ""],
            [
                "unattributed leads", "\(r.leads.unattributed.total)",
                "\(r.leads.unattributed.withoutCode) without a valid code, \(r.leads.unattributed.unknownCode) with an unknown code",
            ],
            ["repeat advocates", "\(r.repeatAdvocates)", "referrers with 2 or more qualified referrals"],
        ])

        out += "\nFunnel\n"
        out += rows(
            [["stage", "referrals", "conversion", "median time from previous"]]
                + r.funnel.map {
                    [$0.stage, "\($0.count)", percent($0.conversion), duration($0.medianSecondsFromPrevious)]
                })

        if !r.rejections.isEmpty {
            out += "\nRejections\n"
            out += rows(r.rejections.map { [$0.reason, "\($0.count)"] })
        }

        out += "\nReward cost\n"
        if r.rewards.isEmpty { out += "  no rewards\n" }
        for c in r.rewards {
            out += rows([
                ["currency", c.currency, ""],
                ["issued", money(c.issued.amountMinor), "\(c.issued.count) rewards"],
                ["applied", money(c.applied.amountMinor), "\(c.applied.count) rewards"],
                ["pending", money(c.pending.amountMinor), "\(c.pending.count) rewards"],
                ["reversed", money(c.reversed.amountMinor), "\(c.reversed.count) rewards"],
                ["failed", money(c.failed.amountMinor), "\(c.failed.count) rewards"],
                [
                    "net cost", money(c.netCostMinor),
                    "referrers \(money(c.referrerAmountMinor)), friends \(money(c.friendAmountMinor)) issued",
                ],
                [
                    "cost per activation", c.costPerActivationMinor.map { money(Int64($0.rounded())) } ?? "-",
                    "\(c.activations) activations",
                ],
            ])
        }

        out += "\nAsks by moment (leads within \(number(r.asks.followWindowDays)) days)\n"
        if r.asks.byMoment.isEmpty {
            out += "  no asks in the period\n"
        } else {
            out += rows(
                [["moment", "asks", "customers", "leads", "leads per ask"]]
                    + r.asks.byMoment.map {
                        [
                            $0.moment, "\($0.asks)", "\($0.customers)", "\($0.leadsFollowing)",
                            $0.leadsPerAsk.map(number) ?? "-",
                        ]
                    })
            if let best = r.asks.bestMoment { out += "  best moment: \(best)\n" }
        }
        out += breakdowns(r)
        return out
    }

    /// Version 2's sections: spend by plan and by moment, channels, the budget and forecast.
    static func breakdowns(_ r: ProgramReport) -> String {
        func rounded(_ x: Double?) -> String { x.map { money(Int64($0.rounded())) } ?? "-" }
        var out = "\nSpend by the friend's plan\n"
        out +=
            r.spendByPlan.isEmpty
            ? "  no rewards\n"
            : rows(
                [["plan", "currency", "issued", "reversed", "net cost", "qualified", "per qualified"]]
                    + r.spendByPlan.map {
                        [
                            $0.plan, $0.currency, money($0.issued.amountMinor), money($0.reversed.amountMinor),
                            money($0.netCostMinor), "\($0.qualified)", rounded($0.costPerQualifiedMinor),
                        ]
                    })
        out += "\nCost per qualified referral by ask moment followed\n"
        out +=
            r.costPerQualifiedByMoment.isEmpty
            ? "  no rewards\n"
            : rows(
                [["moment", "currency", "net cost", "qualified", "per qualified"]]
                    + r.costPerQualifiedByMoment.map {
                        [
                            $0.moment, $0.currency, money($0.netCostMinor), "\($0.qualified)",
                            rounded($0.costPerQualifiedMinor),
                        ]
                    })
        out += "\nLeads by channel\n"
        out +=
            r.channels.isEmpty
            ? "  no leads\n"
            : rows(
                [["channel", "referred leads", "activated", "qualified", "conversion", "unattributed"]]
                    + r.channels.map {
                        [
                            $0.channel, "\($0.leads)", "\($0.activated)", "\($0.qualified)", percent($0.conversion),
                            "\($0.unattributed)",
                        ]
                    })
        out += "\nSpend by month against budget\n"
        out +=
            r.budget.months.isEmpty
            ? "  no spend and no budget\n"
            : rows(
                [["month", "program", "issued", "reversed", "net spend", "committed", "budget", "spent"]]
                    + r.budget.months.map {
                        [
                            $0.month, $0.program, money($0.issued.amountMinor), money($0.reversed.amountMinor),
                            money($0.netSpendMinor) + " " + $0.currency, money($0.committedMinor),
                            $0.budgetMonthlyMinor.map(money) ?? "-", percent($0.spentShareOfBudget),
                        ]
                    })
        if let first = r.budget.forecast.first {
            out +=
                "\nForecast for \(first.month) at the rate so far (\(percent(first.elapsedFraction)) of the month elapsed)\n"
            out += rows(
                [["program", "spent", "forecast", "budget", "forecast of budget"]]
                    + r.budget.forecast.map {
                        [
                            $0.program, money($0.spentMinor) + " " + $0.currency, rounded($0.forecastMinor),
                            $0.budgetMonthlyMinor.map(money) ?? "-", percent($0.forecastShareOfBudget),
                        ]
                    })
        }
        return out
    }

    /// Left-aligned first column, right-aligned numbers, two spaces between columns.
    static func rows(_ rows: [[String]]) -> String {
        let widths = (0..<(rows.map(\.count).max() ?? 0)).map { i in
            rows.map { i < $0.count ? $0[i].count : 0 }.max() ?? 0
        }
        return rows.map { row in
            "  "
                + row.enumerated().map { i, cell in
                    let pad = String(repeating: " ", count: widths[i] - cell.count)
                    return i == 0 || i == row.count - 1 && i > 1 ? cell + pad : pad + cell
                }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }.joined(separator: "\n") + "\n"
    }

    static func percent(_ x: Double?) -> String { x.map { String(format: "%.1f %%", $0 * 100) } ?? "-" }
    static func number(_ x: Double) -> String { x == x.rounded() ? String(Int64(x)) : String(format: "%.2f", x) }
    static func money(_ minor: Int64) -> String {
        (minor < 0 ? "-" : "") + String(format: "%lld.%02lld", abs(minor) / 100, abs(minor) % 100)
    }

    static func duration(_ seconds: Double?) -> String {
        guard let s = seconds else { return "-" }
        let total = Int64(s.rounded())
        let d = total / 86_400
        let h = total % 86_400 / 3600
        let m = total % 3600 / 60
        if d > 0 { return "\(d)d \(h)h" }
        if h > 0 { return "\(h)h \(m)m" }
        return m > 0 ? "\(m)m" : "\(total)s"
    }
}
