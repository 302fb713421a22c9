import Foundation

/// The report as one self-contained HTML page: inline CSS and SVG, no scripts, fonts or images
/// from elsewhere, so it can be mailed, archived or opened offline and shows the same.
enum ReportHTML {
    static func render(_ r: ProgramReport) -> String {
        let title = "Referral report — \(r.program ?? "all programs")"
        var body = "<h1>\(esc(title))</h1>\n"
        body +=
            "<p class=\"period\">\(esc(r.period.from)) to \(esc(r.period.to)) (\(ReportTable.number(r.period.days)) days)</p>\n"
        body += "<section><h2>Funnel</h2>\n\(funnelSVG(r.funnel))</section>\n"
        body += "<section><h2>Weekly trend</h2>\n\(trendSVG(r.weekly))</section>\n"
        body +=
            "<section><h2>Against the rules of thumb</h2>\n"
            + table([
                ["customers asked", "\(r.asks.customersAsked)", ""],
                [
                    "share of asked who referred", ReportTable.percent(r.participation.rate),
                    "rule of thumb \(ReportTable.percent(r.participation.benchmarkRate))",
                ],
                [
                    "leads per referrer per year", r.leads.perReferrerPerYear.map(ReportTable.number) ?? "-",
                    "rule of thumb \(ReportTable.number(r.leads.benchmarkPerReferrerPerYear))",
                ],
                ["estimated leads", ReportTable.number(r.estimate.estimatedLeads), "asked × 25 % × 2 per year"],
                ["actual referred leads", "\(r.estimate.actualLeads)", ""],
                [
                    "unattributed leads", "\(r.leads.unattributed.total)",
                    "\(r.leads.unattributed.withoutCode) without code, \(r.leads.unattributed.unknownCode) unknown code",
                ],
                ["repeat advocates", "\(r.repeatAdvocates)", "2 or more qualified referrals"],
            ]) + "</section>\n"
        body +=
            "<section><h2>Reward cost</h2>\n"
            + table(
                [["currency", "issued", "applied", "pending", "reversed", "failed", "net cost", "per activation"]]
                    + r.rewards.map { c in
                        [
                            c.currency, ReportTable.money(c.issued.amountMinor),
                            ReportTable.money(c.applied.amountMinor),
                            ReportTable.money(c.pending.amountMinor), ReportTable.money(c.reversed.amountMinor),
                            ReportTable.money(c.failed.amountMinor), ReportTable.money(c.netCostMinor),
                            c.costPerActivationMinor.map { ReportTable.money(Int64($0.rounded())) } ?? "-",
                        ]
                    }, header: true) + "</section>\n"
        body +=
            "<section><h2>Rejections</h2>\n"
            + table([["reason", "referrals"]] + r.rejections.map { [$0.reason, "\($0.count)"] }, header: true)
            + "</section>\n"
        body +=
            "<section><h2>Asks by moment</h2>\n"
            + table(
                [
                    [
                        "moment", "asks", "customers",
                        "leads within \(ReportTable.number(r.asks.followWindowDays)) days", "leads per ask",
                    ]
                ]
                    + r.asks.byMoment.map {
                        [
                            $0.moment, "\($0.asks)", "\($0.customers)", "\($0.leadsFollowing)",
                            $0.leadsPerAsk.map(ReportTable.number) ?? "-",
                        ]
                    },
                header: true) + (r.asks.bestMoment.map { "<p>Best moment: <strong>\(esc($0))</strong></p>\n" } ?? "")
            + "</section>\n"
        body += breakdowns(r)
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>\(esc(title))</title>
            <style>
            body { font-family: system-ui, sans-serif; margin: 2em; color: #1d2433; max-width: 60em; }
            h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
            table { border-collapse: collapse; } td, th { padding: .25em .8em; border-bottom: 1px solid #dde; text-align: right; }
            td:first-child, th:first-child { text-align: left; }
            .period { color: #556; }
            svg text { font-family: system-ui, sans-serif; font-size: 13px; fill: #1d2433; }
            </style></head>
            <body>
            \(body)</body></html>

            """
    }

    /// One horizontal bar per stage, width proportional to the referrals that reached it.
    static func funnelSVG(_ steps: [ProgramReport.FunnelStep]) -> String {
        let width = 640.0
        let labelWidth = 90.0
        let barMax = 400.0
        let rowHeight = 34.0
        let top = Double(max(steps.first?.count ?? 0, 1))
        var svg =
            "<svg id=\"funnel\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(rowHeight * Double(steps.count) + 10))\" role=\"img\" aria-label=\"Referral funnel\">\n"
        for (i, s) in steps.enumerated() {
            let y = 5 + Double(i) * rowHeight
            // A stage with referrals keeps a visible sliver, so "1 of 100 000" is not drawn as nothing.
            let w = s.count == 0 ? 0 : max(2, barMax * Double(s.count) / top)
            svg += "<text class=\"funnel-label\" x=\"0\" y=\"\(fmt(y + 19))\">\(esc(s.stage))</text>"
            svg +=
                "<rect class=\"funnel-bar\" data-stage=\"\(esc(s.stage))\" data-count=\"\(s.count)\" x=\"\(fmt(labelWidth))\" y=\"\(fmt(y))\" width=\"\(fmt(w))\" height=\"26\" rx=\"3\" fill=\"\(palette[i % palette.count])\"/>"
            let conversion = s.conversion.map { " (\(ReportTable.percent($0)))" } ?? ""
            svg +=
                "<text class=\"funnel-value\" x=\"\(fmt(labelWidth + w + 8))\" y=\"\(fmt(y + 19))\">\(s.count)\(esc(conversion))</text>\n"
        }
        return svg + "</svg>\n"
    }

    /// Leads, activations and qualifications per week of the lead, as three lines.
    static func trendSVG(_ weeks: [ProgramReport.Week]) -> String {
        let width = 640.0
        let height = 220.0
        let left = 44.0
        let bottom = 30.0
        let top = 14.0
        let right = 110.0
        guard !weeks.isEmpty else { return "<p>No referral leads in the period.</p>\n" }
        let peak = Double(max(weeks.map(\.leads).max() ?? 1, 1))
        let step = weeks.count > 1 ? (width - left - right) / Double(weeks.count - 1) : 0
        func x(_ i: Int) -> Double { left + Double(i) * step }
        func y(_ v: Int64) -> Double { height - bottom - (height - bottom - top) * Double(v) / peak }
        var svg =
            "<svg id=\"trend\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\" aria-label=\"Weekly trend\">\n"
        svg +=
            "<line x1=\"\(fmt(left))\" y1=\"\(fmt(height - bottom))\" x2=\"\(fmt(width - right))\" y2=\"\(fmt(height - bottom))\" stroke=\"#99a\"/>"
        svg +=
            "<line x1=\"\(fmt(left))\" y1=\"\(fmt(top))\" x2=\"\(fmt(left))\" y2=\"\(fmt(height - bottom))\" stroke=\"#99a\"/>\n"
        svg += "<text x=\"\(fmt(left - 6))\" y=\"\(fmt(top + 4))\" text-anchor=\"end\">\(Int64(peak))</text>"
        svg += "<text x=\"\(fmt(left - 6))\" y=\"\(fmt(height - bottom))\" text-anchor=\"end\">0</text>\n"
        let series: [(String, KeyPath<ProgramReport.Week, Int64>, String)] = [
            ("leads", \.leads, palette[0]), ("activated", \.activated, palette[3]),
            ("qualified", \.qualified, palette[4]),
        ]
        for (n, (name, key, color)) in series.enumerated() {
            let points = weeks.enumerated().map { "\(fmt(x($0.offset))),\(fmt(y($0.element[keyPath: key])))" }.joined(
                separator: " ")
            svg +=
                "<polyline class=\"trend-line\" data-series=\"\(name)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(points)\"/>"
            for (i, w) in weeks.enumerated() {
                svg += "<circle cx=\"\(fmt(x(i)))\" cy=\"\(fmt(y(w[keyPath: key])))\" r=\"3\" fill=\"\(color)\"/>"
            }
            svg +=
                "<text class=\"trend-legend\" x=\"\(fmt(width - right + 14))\" y=\"\(fmt(top + 10 + Double(n) * 18))\" style=\"fill: \(color)\">\(name)</text>\n"
        }
        // Week labels: first, last and, between them, as many as fit without overlapping.
        let every = max(1, Int((Double(weeks.count) * 80 / (width - left - right)).rounded(.up)))
        for (i, w) in weeks.enumerated() where i % every == 0 || i == weeks.count - 1 {
            svg +=
                "<text class=\"trend-week\" x=\"\(fmt(x(i)))\" y=\"\(fmt(height - 10))\" text-anchor=\"middle\">\(esc(String(w.weekStart.prefix(10))))</text>"
        }
        return svg + "\n</svg>\n"
    }

    static func table(_ rows: [[String]], header: Bool = false) -> String {
        var out = "<table>\n"
        for (i, row) in rows.enumerated() {
            let cell = header && i == 0 ? "th" : "td"
            out += "<tr>" + row.map { "<\(cell)>\(esc($0))</\(cell)>" }.joined() + "</tr>\n"
        }
        return out + "</table>\n"
    }

    static let palette = ["#3465a4", "#4e86c6", "#6aa1d8", "#2e9e6a", "#d98a1c", "#b5452c"]

    static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }

    /// Program ids and reasons come from files and events: escaped, so none can inject markup.
    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
