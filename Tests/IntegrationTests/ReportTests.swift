import Foundation
import Postgres
import ReferralCore
import ReferralStore
import Testing

@testable import ReferralWorker

/// `referrald report` over a fully known database: every figure of the JSON report is computed
/// by hand below from the rows inserted, so a wrong join, filter or ratio shows as one figure.
@Suite(.serialized, .tearsDownTestBeds) struct ReportTests {
    /// January 2026, program `consumer`:
    ///
    ///   ref-1  A  lead 01-05  order +1d  install +2d  activation +1d  rewards +10d  credit applied +1d
    ///   ref-2  A  lead 01-10  order +3d  install +1d  activation +2d  rewards +10d  (referrer reversed, friend failed)
    ///   ref-3  B  lead 01-12  order +12h
    ///   ref-4  B  lead 01-15  rejected same_household
    ///   ref-5  C  lead 01-20  rejected too_many_leads
    ///   ref-6  C  lead 2025-12-20 (before the period; its reward must not count)
    ///   ref-7  X  lead 01-11, program business (another program)
    ///   unattributed: lead-u1 without code, lead-u2 with an unknown code, lead-u3 after the period
    ///   asks: A post_install 01-02, B post_activation 01-03, D post_install 01-04, E speed_test 01-05,
    ///         A periodic 2025-12-01 (before), X post_install 01-06 (business)
    ///
    /// Version 2: channels phone (lead-1's first fact; its second says web), web (lead-2, lead-u1),
    /// phone (lead-3), none (lead-4, lead-u2), retail (lead-5); plans fiber-1000 (F1's first
    /// activation), fiber-500 (F2's first; its later fiber-1000 does not count), none (F3); the
    /// consumer program's budget 200.00 a month, 60.00 + 40.00 committed in January on two shards;
    /// ref-6's friend reward issued 2026-02-01 12:00 (February's spend so far).
    static func loadKnownScenario(_ db: PostgresConnection) async throws {
        try await db.run { c in
            try c.executeScript(
                """
                INSERT INTO program_versions (program_id, version, canonical, program) VALUES
                    ('consumer', 1, 'c', '{}'), ('business', 1, 'b', '{}'),
                    -- The report reads the budget of the latest version.
                    ('consumer', 2, 'c2', '{"currency": "USD", "budget": {"monthly_minor": 20000, "pause_asks_at": 0.8}}');
                INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version,
                                       friend_account_id, stage, reason, rule) VALUES
                    ('ref-1', 'lead-1', 'CODE-A', 'acct-A', 'consumer', 1, 'acct-F1', 'rewarded', NULL, 'qualify'),
                    ('ref-2', 'lead-2', 'CODE-A', 'acct-A', 'consumer', 1, 'acct-F2', 'reversed', 'clawback', 'clawback'),
                    ('ref-3', 'lead-3', 'CODE-B', 'acct-B', 'consumer', 1, 'acct-F3', 'ordered', NULL, 'attribution_window'),
                    ('ref-4', 'lead-4', 'CODE-B', 'acct-B', 'consumer', 1, NULL, 'rejected', 'same_household', 'fraud'),
                    ('ref-5', 'lead-5', 'CODE-C', 'acct-C', 'consumer', 1, NULL, 'rejected', 'too_many_leads', 'limits'),
                    ('ref-6', 'lead-6', 'CODE-C', 'acct-C', 'consumer', 1, 'acct-F6', 'rewarded', NULL, 'qualify'),
                    ('ref-7', 'lead-7', 'CODE-X', 'acct-X', 'business', 1, 'acct-F7', 'activated', NULL, 'qualify');
                INSERT INTO facts (kind, at, lead_id, account_id, code, reward_id) VALUES
                    ('lead', '2026-01-05T00:00:00Z', 'lead-1', NULL, 'CODE-A', NULL),
                    ('lead', '2026-01-10T00:00:00Z', 'lead-2', NULL, 'CODE-A', NULL),
                    ('lead', '2026-01-12T00:00:00Z', 'lead-3', NULL, 'CODE-B', NULL),
                    ('lead', '2026-01-15T00:00:00Z', 'lead-4', NULL, 'CODE-B', NULL),
                    ('lead', '2026-01-20T00:00:00Z', 'lead-5', NULL, 'CODE-C', NULL),
                    ('lead', '2025-12-20T00:00:00Z', 'lead-6', NULL, 'CODE-C', NULL),
                    ('lead', '2026-01-11T00:00:00Z', 'lead-7', NULL, 'CODE-X', NULL),
                    ('lead', '2026-01-07T00:00:00Z', 'lead-u1', NULL, NULL, NULL),
                    ('lead', '2026-01-08T00:00:00Z', 'lead-u2', NULL, 'ZZZZ-ZZZZ-0', NULL),
                    ('lead', '2026-02-03T00:00:00Z', 'lead-u3', NULL, NULL, NULL),
                    -- A second copy of lead-1, later: the lead's time is its first fact.
                    ('lead', '2026-01-06T00:00:00Z', 'lead-1', NULL, 'CODE-A', NULL),
                    ('order', '2026-01-06T00:00:00Z', 'lead-1', 'acct-F1', NULL, NULL),
                    ('installed', '2026-01-08T00:00:00Z', NULL, 'acct-F1', NULL, NULL),
                    ('activated', '2026-01-09T00:00:00Z', NULL, 'acct-F1', NULL, NULL),
                    ('credit_applied', '2026-01-20T00:00:00Z', NULL, 'acct-A', NULL, 'rwd-1-referrer'),
                    ('order', '2026-01-13T00:00:00Z', 'lead-2', 'acct-F2', NULL, NULL),
                    ('installed', '2026-01-14T00:00:00Z', NULL, 'acct-F2', NULL, NULL),
                    ('activated', '2026-01-16T00:00:00Z', NULL, 'acct-F2', NULL, NULL),
                    ('order', '2026-01-12T12:00:00Z', 'lead-3', 'acct-F3', NULL, NULL),
                    ('order', '2025-12-21T00:00:00Z', 'lead-6', 'acct-F6', NULL, NULL),
                    ('activated', '2025-12-22T00:00:00Z', NULL, 'acct-F6', NULL, NULL),
                    ('order', '2026-01-12T00:00:00Z', 'lead-7', 'acct-F7', NULL, NULL),
                    ('activated', '2026-01-13T00:00:00Z', NULL, 'acct-F7', NULL, NULL);
                INSERT INTO rewards (reward_id, referral_id, beneficiary, account_id, kind, amount_minor, currency,
                                     program_id, state, issued_at, updated_at) VALUES
                    ('rwd-1-referrer', 'ref-1', 'referrer', 'acct-A', 'bill_credit', 5000, 'USD', 'consumer', 'applied', '2026-01-19T00:00:00Z', '2026-01-20T00:00:00Z'),
                    ('rwd-1-friend', 'ref-1', 'friend', 'acct-F1', 'bill_credit', 2500, 'USD', 'consumer', 'issued', '2026-01-19T00:00:00Z', '2026-01-19T00:00:00Z'),
                    ('rwd-2-referrer', 'ref-2', 'referrer', 'acct-A', 'bill_credit', 5000, 'USD', 'consumer', 'reversed', '2026-01-26T00:00:00Z', '2026-01-28T00:00:00Z'),
                    ('rwd-2-friend', 'ref-2', 'friend', 'acct-F2', 'bill_credit', 2500, 'USD', 'consumer', 'failed', '2026-01-26T00:00:00Z', '2026-01-27T00:00:00Z'),
                    ('rwd-6-referrer', 'ref-6', 'referrer', 'acct-C', 'bill_credit', 5000, 'USD', 'consumer', 'applied', '2026-01-02T00:00:00Z', '2026-01-02T00:00:00Z'),
                    ('rwd-6-friend', 'ref-6', 'friend', 'acct-F6', 'bill_credit', 2500, 'USD', 'consumer', 'issued', '2026-02-01T12:00:00Z', '2026-02-01T12:00:00Z');
                UPDATE facts SET channel = 'phone' WHERE kind = 'lead' AND ((lead_id = 'lead-1' AND at < '2026-01-06') OR lead_id = 'lead-3');
                UPDATE facts SET channel = 'web' WHERE kind = 'lead' AND (lead_id IN ('lead-2', 'lead-u1') OR at = '2026-01-06');
                UPDATE facts SET channel = 'retail' WHERE kind = 'lead' AND lead_id = 'lead-5';
                INSERT INTO facts (kind, at, account_id, plan_id) VALUES
                    ('plan', '2026-01-09T00:00:00Z', 'acct-F1', 'fiber-1000'),
                    ('plan', '2026-01-16T00:00:00Z', 'acct-F2', 'fiber-500'),
                    ('plan', '2026-01-20T00:00:00Z', 'acct-F2', 'fiber-1000');
                INSERT INTO budget_counters (program_id, month, currency, shard, committed_minor) VALUES
                    ('consumer', '2026-01-01', 'USD', 0, 6000), ('consumer', '2026-01-01', 'USD', 1, 4000),
                    ('consumer', '2026-02-01', 'USD', 0, 2500), ('business', '2026-01-01', 'USD', 0, 999);
                INSERT INTO asks (ask_key, account_id, moment, program_id, due_at, sent_at) VALUES
                    ('k1', 'acct-A', 'post_install', 'consumer', '2026-01-02T00:00:00Z', '2026-01-02T00:00:00Z'),
                    ('k2', 'acct-B', 'post_activation', 'consumer', '2026-01-03T00:00:00Z', '2026-01-03T00:00:00Z'),
                    ('k3', 'acct-D', 'post_install', 'consumer', '2026-01-04T00:00:00Z', '2026-01-04T00:00:00Z'),
                    ('k4', 'acct-E', 'speed_test', 'consumer', '2026-01-05T00:00:00Z', '2026-01-05T00:00:00Z'),
                    ('k5', 'acct-A', 'periodic', 'consumer', '2025-12-01T00:00:00Z', '2025-12-01T00:00:00Z'),
                    ('k6', 'acct-X', 'post_install', 'business', '2026-01-06T00:00:00Z', '2026-01-06T00:00:00Z');
                """)
        }
    }

    static let january = ReportScope(
        from: Instant(rfc3339: "2026-01-01T00:00:00Z")!, to: Instant(rfc3339: "2026-02-01T00:00:00Z")!,
        programId: "consumer")

    @Test func everyFigureOfTheJSONReportOverAKnownScenario() async throws {
        let bed = try await TestBed.make()
        try await Self.loadKnownScenario(bed.db)
        let generated = Instant(rfc3339: "2026-02-02T00:00:00Z")!
        let report = try await ProgramReport.make(bed.database, scope: Self.january, now: generated)
        // What a consumer of the JSON reads: the documented keys, decoded back.
        let json = report.render(.json)
        let r = try ProgramReport.decode(json: json)
        #expect(r == report)

        #expect(r.schema == "referrald.report/2")
        #expect(r.generatedAt == "2026-02-02T00:00:00Z")
        #expect(r.period == .init(from: "2026-01-01T00:00:00Z", to: "2026-02-01T00:00:00Z", days: 31))
        #expect(r.program == "consumer")
        #expect(r.benchmarks == .init(participationRate: 0.25, leadsPerReferrerPerYear: 2))

        // Asks: A, B, D, E in the period and program (not A's December ask, not X's business one).
        #expect(r.asks.customersAsked == 4)
        #expect(r.asks.asksSent == 4)
        #expect(r.asks.followWindowDays == 30)
        #expect(
            r.asks.byMoment == [
                // lead-3, lead-4
                .init(moment: "post_activation", asks: 1, customers: 1, leadsFollowing: 2, leadsPerAsk: 2),
                // lead-1, lead-2
                .init(moment: "post_install", asks: 2, customers: 2, leadsFollowing: 2, leadsPerAsk: 1),
                .init(moment: "speed_test", asks: 1, customers: 1, leadsFollowing: 0, leadsPerAsk: 0),
            ])
        #expect(r.asks.bestMoment == "post_activation")

        // Referrers A, B, C; of them A and B were asked: 2 of 4 asked customers referred.
        #expect(r.participation == .init(referrers: 3, askedReferrers: 2, rate: 0.5, benchmarkRate: 0.25))

        let years = 31.0 / 365
        #expect(r.leads.total == 7)
        #expect(r.leads.referred == 5)
        #expect(r.leads.unattributed == .init(total: 2, withoutCode: 1, unknownCode: 1))
        #expect(abs(r.leads.perReferrerPerYear! - 5.0 / 3 / years) < 1e-9)
        #expect(r.leads.benchmarkPerReferrerPerYear == 2)

        #expect(r.estimate.customersAsked == 4)
        #expect(r.estimate.participationRate == 0.25)
        #expect(abs(r.estimate.leadsPerReferrer - 2 * years) < 1e-9)
        #expect(abs(r.estimate.estimatedLeads - 4 * 0.25 * 2 * years) < 1e-9)
        #expect(r.estimate.actualLeads == 5)

        let day = 86_400.0
        #expect(
            r.funnel == [
                .init(stage: "lead", count: 5, conversion: nil, medianSecondsFromPrevious: nil),
                .init(stage: "ordered", count: 3, conversion: 0.6, medianSecondsFromPrevious: 1 * day),  // 1d, 3d, 12h
                // 2d, 1d
                .init(stage: "installed", count: 2, conversion: 2.0 / 3, medianSecondsFromPrevious: 1.5 * day),
                .init(stage: "activated", count: 2, conversion: 1, medianSecondsFromPrevious: 1.5 * day),  // 1d, 2d
                .init(stage: "qualified", count: 2, conversion: 1, medianSecondsFromPrevious: 10 * day),  // 10d, 10d
                .init(stage: "rewarded", count: 1, conversion: 0.5, medianSecondsFromPrevious: 1 * day),  // ref-1 only
            ])
        #expect(r.rejections == [.init(reason: "same_household", count: 1), .init(reason: "too_many_leads", count: 1)])
        #expect(
            r.outcomes == [
                .init(stage: "ordered", reason: nil, count: 1),
                .init(stage: "rejected", reason: "same_household", count: 1),
                .init(stage: "rejected", reason: "too_many_leads", count: 1),
                .init(stage: "reversed", reason: "clawback", count: 1),
                .init(stage: "rewarded", reason: nil, count: 1),
            ])
        // ref-6's reward (lead in December) is not this period's cost.
        #expect(
            r.rewards == [
                .init(
                    currency: "USD", issued: .init(count: 4, amountMinor: 15000),
                    applied: .init(count: 1, amountMinor: 5000),
                    pending: .init(count: 1, amountMinor: 2500), reversed: .init(count: 1, amountMinor: 5000),
                    failed: .init(count: 1, amountMinor: 2500), referrerAmountMinor: 10000, friendAmountMinor: 5000,
                    netCostMinor: 7500, activations: 2, costPerActivationMinor: 3750)
            ])
        #expect(r.repeatAdvocates == 1)  // A: ref-1 and ref-2 qualified
        #expect(
            r.weekly == [
                .init(weekStart: "2026-01-05T00:00:00Z", leads: 2, activated: 2, qualified: 2),
                .init(weekStart: "2026-01-12T00:00:00Z", leads: 2, activated: 0, qualified: 0),
                .init(weekStart: "2026-01-19T00:00:00Z", leads: 1, activated: 0, qualified: 0),
            ])

        // Version 2. By the friend's first plan: ref-1 (F1, fiber-1000) and ref-2 (F2, fiber-500);
        // ref-3..5 have no reward, so no spend to break down.
        #expect(
            r.spendByPlan == [
                .init(
                    plan: "fiber-1000", currency: "USD", issued: .init(count: 2, amountMinor: 7500),
                    reversed: .init(count: 0, amountMinor: 0),
                    netCostMinor: 7500, qualified: 1, costPerQualifiedMinor: 7500),
                .init(
                    plan: "fiber-500", currency: "USD", issued: .init(count: 2, amountMinor: 7500),
                    reversed: .init(count: 1, amountMinor: 5000),
                    netCostMinor: 2500, qualified: 1, costPerQualifiedMinor: 2500),
            ])
        // ref-1 and ref-2 followed A's post_install ask (01-02); the rewarded referrals of the
        // other moments have no reward.
        #expect(
            r.costPerQualifiedByMoment == [
                .init(
                    moment: "post_install", currency: "USD", issued: .init(count: 4, amountMinor: 15000),
                    reversed: .init(count: 1, amountMinor: 5000), netCostMinor: 10000, qualified: 2,
                    costPerQualifiedMinor: 5000)
            ])
        #expect(
            r.channels == [
                // ref-1, ref-3
                .init(channel: "phone", leads: 2, activated: 1, qualified: 1, conversion: 0.5, unattributed: 0),
                // ref-5
                .init(channel: "retail", leads: 1, activated: 0, qualified: 0, conversion: 0, unattributed: 0),
                // ref-4; lead-u2
                .init(channel: "unknown", leads: 1, activated: 0, qualified: 0, conversion: 0, unattributed: 1),
                // ref-2; lead-u1
                .init(channel: "web", leads: 1, activated: 1, qualified: 1, conversion: 1, unattributed: 1),
            ])
        // January by issue time, whatever the lead's time: ref-6's December lead's referrer reward
        // (01-02) counts, its friend reward (02-01) does not; rwd-2-referrer reversed on 01-28;
        // the business program's commitment is another program's.
        #expect(
            r.budget.months == [
                .init(
                    month: "2026-01", program: "consumer", currency: "USD", issued: .init(count: 5, amountMinor: 20000),
                    reversed: .init(count: 1, amountMinor: 5000), netSpendMinor: 15000, committedMinor: 10000,
                    budgetMonthlyMinor: 20000, spentShareOfBudget: 0.75, committedShareOfBudget: 0.5)
            ])
        // Generated on 02-02 00:00: one day of February's 28 gone, 25.00 spent, 700.00 at that rate.
        let forecast = try #require(r.budget.forecast.first)
        #expect(r.budget.forecast.count == 1)
        #expect(forecast.month == "2026-02" && forecast.program == "consumer" && forecast.currency == "USD")
        #expect(forecast.spentMinor == 2500 && forecast.budgetMonthlyMinor == 20000)
        #expect(abs(forecast.elapsedFraction - 1.0 / 28) < 1e-12)
        #expect(abs(forecast.forecastMinor! - 70000) < 1e-6)
        #expect(abs(forecast.forecastShareOfBudget! - 3.5) < 1e-9)

        // Undefined ratios are written as null, never left out: the schema's keys are all present.
        #expect(json.contains("\"conversion\" : null"))
        #expect(json.contains("\"median_seconds_from_previous\" : null"))
    }

    @Test func everyProgramAndAnEmptyPeriod() async throws {
        let bed = try await TestBed.make()
        try await Self.loadKnownScenario(bed.db)
        var all = Self.january
        all.programId = nil
        let r = try await ProgramReport.make(bed.database, scope: all, now: all.to)
        // ref-7 (business) joins: 6 referrals, 4 referrers, X asked too.
        #expect(r.program == nil)
        #expect(r.leads.referred == 6)
        #expect(r.participation == .init(referrers: 4, askedReferrers: 3, rate: 0.6, benchmarkRate: 0.25))
        #expect(r.funnel.map(\.count) == [6, 4, 3, 3, 2, 1])  // ref-7 has no install fact yet counts as past it
        // The business program has no budget, yet its commitment and month show; ref-7's friend
        // named no plan and ref-7 has no reward.
        #expect(
            r.budget.months.map {
                "\($0.month) \($0.program) \($0.committedMinor) \($0.budgetMonthlyMinor.map(String.init) ?? "none")"
            }
                == ["2026-01 business 999 none", "2026-01 consumer 10000 20000"])
        #expect(r.spendByPlan.map(\.plan) == ["fiber-1000", "fiber-500"])
        // Generated at the period's end, the first instant of February: nothing elapsed, no forecast.
        #expect(
            r.budget.forecast.map {
                "\($0.program) \($0.spentMinor) \($0.elapsedFraction) \($0.forecastMinor.map { "\($0)" } ?? "null")"
            }
                == ["consumer 0 0.0 null"])
        #expect(r.render(.json).contains("\"forecast_minor\" : null"))

        var empty = Self.january
        empty.from = Instant(rfc3339: "2030-01-01T00:00:00Z")!
        empty.to = Instant(rfc3339: "2030-02-01T00:00:00Z")!
        let none = try await ProgramReport.make(bed.database, scope: empty, now: empty.to)
        #expect(none.funnel.map(\.count) == [0, 0, 0, 0, 0, 0])
        #expect(none.funnel.allSatisfy { $0.conversion == nil && $0.medianSecondsFromPrevious == nil })
        #expect(none.participation.rate == nil && none.leads.perReferrerPerYear == nil && none.asks.bestMoment == nil)
        #expect(none.rewards.isEmpty && none.weekly.isEmpty)
        #expect(none.spendByPlan.isEmpty && none.costPerQualifiedByMoment.isEmpty && none.channels.isEmpty)
        // A month without spend still shows against its budget.
        #expect(none.budget.months.map(\.month) == ["2030-01"] && none.budget.months.first?.netSpendMinor == 0)
        #expect(try ProgramReport.decode(json: none.render(.json)) == none)
        #expect(none.render(.table).contains("no asks in the period"))
    }

    @Test func tableAndHTMLCarryTheFigures() async throws {
        let bed = try await TestBed.make()
        try await Self.loadKnownScenario(bed.db)
        let r = try await ProgramReport.make(bed.database, scope: Self.january, now: Self.january.to)
        let table = r.render(.table)
        for line in [
            "share of asked who referred", "50.0 %", "rule of thumb 25.0 %", "unattributed leads",
            "cost per activation", "37.50", "best moment: post_activation", "rewarded",
            "Spend by the friend's plan", "fiber-1000", "Leads by channel", "retail", "Spend by month against budget",
            "150.00 USD", "75.0 %",
        ] {
            #expect(table.contains(line), "\(line) in\n\(table)")
        }
        let html = r.render(.html)
        // Self-contained: the SVG namespace is the only URL, and nothing is loaded from elsewhere.
        let withoutNamespace = html.replacingOccurrences(of: "http://www.w3.org/2000/svg", with: "")
        for external in ["http", "<script", "<link", "src=", "url("] {
            #expect(!withoutNamespace.contains(external), "\(external)")
        }
        try await BrowserCheck.expectFunnel(
            html: html, name: "report-known", counts: r.funnel.map { ($0.stage, $0.count) },
            also: [
                "class=\"budget-bar\" data-program=\"consumer\" data-month=\"2026-01\" data-spent=\"15000\" data-committed=\"10000\" data-limit=\"20000\"",
                "class=\"plan-cost-bar\" data-plan=\"fiber-1000\" data-currency=\"USD\" data-cost=\"7500\"",
                "class=\"plan-cost-bar\" data-plan=\"fiber-500\" data-currency=\"USD\" data-cost=\"2500\"",
            ])
    }
}

/// Opens a report in headless Chromium: the funnel's bars must be in the rendered DOM with their
/// labels, and a screenshot is kept for a person to look at. Skipped (and said so) without
/// Chromium, as the contract checks are.
enum BrowserCheck {
    static let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// `also`: further markup the rendered DOM must hold (the budget and plan bars).
    static func expectFunnel(html: String, name: String, counts: [(String, Int64)], also: [String]) async throws {
        guard let chromium else {
            print(
                "chromium not installed: the browser check of the HTML report is skipped (apt-get install -y chromium)")
            return
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "referrald-\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let page = dir.appendingPathComponent("report.html")
        try html.write(to: page, atomically: true, encoding: .utf8)
        let dom = try await run(chromium, ["--dump-dom", page.absoluteString])
        for (stage, count) in counts {
            #expect(
                dom.contains("class=\"funnel-bar\" data-stage=\"\(stage)\" data-count=\"\(count)\""),
                "bar \(stage) \(count)")
            #expect(
                dom.contains("<text class=\"funnel-label\" x=\"0\"") && dom.contains(">\(stage)</text>"),
                "label \(stage)")
        }
        for markup in also { #expect(dom.contains(markup), "\(markup)") }
        let png = dir.appendingPathComponent("report.png")
        _ = try await run(chromium, ["--screenshot=\(png.path)", "--window-size=900,1400", page.absoluteString])
        let size = (try FileManager.default.attributesOfItem(atPath: png.path)[.size] as? Int) ?? 0
        #expect(size > 10_000, "screenshot \(png.path) has \(size) bytes")
        print("report screenshot: \(png.path)")
    }

    static func run(_ executable: String, _ arguments: [String]) async throws -> String {
        // --no-sandbox: the tests may run as root, where Chromium refuses its sandbox.
        try await Subprocess.run(
            URL(fileURLWithPath: executable),
            ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"] + arguments
        ).output
    }
}
