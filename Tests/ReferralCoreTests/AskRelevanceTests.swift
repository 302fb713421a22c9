import ReferralTestKit
import Testing

@testable import ReferralCore

/// `ReferralAsks.relevantFacts`: on long account histories (years of daily speed tests, monthly
/// invoices, tickets, preference changes), deciding on the relevant facts alone sends the same
/// ask and wakes at the same time as deciding on all of them, at any moment, with any program.
@Suite struct AskRelevanceTests {
    static let base = at("2027-01-01T00:00:00Z")

    /// One account's three years: activation and install, a speed test most days (a third of
    /// accounts run them daily, automated), invoices monthly (some overdue, some never paid,
    /// some with credits, now and then a second payment fact), tickets (some never resolved,
    /// some resolved before they were opened, some resolved twice), preferences toggled.
    static func history(_ id: String, _ rng: inout SeededGenerator) -> [AskFact] {
        var facts: [AskFact] = []
        func add(_ t: Instant, _ kind: AskFact.Kind) { facts.append(AskFact(accountId: id, at: t, kind: kind)) }
        let activated = base + rng.span(.days(0), .days(60))
        let end = activated + .days(1100)
        func someTime() -> Instant { activated + rng.span(.hours(-48), .days(1100)) }
        add(activated, .serviceActivated(segment: .consumer))
        if rng.chance(0.8) { add(activated - rng.span(.minutes(5), .days(3)), .installCompleted) }
        if rng.chance(0.2) {
            add(
                activated + rng.span(.days(1), .days(400)),
                .enrolled(firstAskAt: activated + rng.span(.days(1), .days(500))))
        }
        let daily = rng.chance(0.35)
        var t = activated
        while t < end {
            t = t + (daily ? .days(1) : rng.span(.days(3), .days(40)))
            add(
                t + rng.span(.seconds(0), .hours(3)),
                .speedTest(measuredDownMbps: Double.random(in: 380...520, using: &rng), planDownMbps: 500))
        }
        for month in 0..<36 {
            let invoice = "inv-\(month)"
            let due = activated + .days(Int64(month) * 30)
            if rng.chance(0.1) {
                add(due, .invoiceOverdue(invoiceId: invoice))
                if rng.chance(0.3) { continue }
            }
            let credits: Int64? = rng.chance(0.2) ? Int64.random(in: 100...3000, using: &rng) : nil
            let paid = due + rng.span(.days(0), .days(25))
            add(paid, .invoicePaid(invoiceId: invoice, creditsMinor: credits))
            if rng.chance(0.05) {
                add(paid + rng.span(.days(1), .days(40)), .invoicePaid(invoiceId: invoice, creditsMinor: credits))
            }
        }
        for k in 0..<Int.random(in: 0...12, using: &rng) {
            let ticket = "tkt-\(k)"
            let opened = someTime()
            add(opened, .ticketOpened(ticketId: ticket))
            guard rng.chance(0.85) else { continue }
            let resolved =
                rng.chance(0.1) ? opened - rng.span(.minutes(1), .hours(6)) : opened + rng.span(.hours(1), .days(20))
            add(
                resolved,
                .ticketResolved(ticketId: ticket, csat: rng.chance(0.2) ? nil : Int.random(in: 1...5, using: &rng)))
            if rng.chance(0.1) {
                add(resolved + rng.span(.days(1), .days(30)), .ticketResolved(ticketId: ticket, csat: 5))
            }
        }
        for _ in 0..<Int.random(in: 0...6, using: &rng) {
            add(someTime(), .preferencesChanged(referralPrompts: rng.chance(0.5)))
        }
        if rng.chance(0.05) { add(someTime(), .serviceCancelled) }
        return facts.shuffled(using: &rng)
    }

    /// Asks already sent before `now`, some of them for occurrences the facts define.
    static func sent(_ id: String, facts: [AskFact], before now: Instant, _ rng: inout SeededGenerator) -> [SentAsk] {
        var out: [SentAsk] = []
        for f in facts where f.at < now && rng.chance(0.02) {
            let (moment, occurrence): (AskMoment, String?) =
                switch f.kind {
                case .speedTest: (.speedTest, f.at.rfc3339)
                case .ticketResolved(let t, _): (.supportWin, t)
                case .invoicePaid(let i, _): (.billSavings, i)
                default: (.periodic, f.at.rfc3339)
                }
            let sentAt = min(now, f.at + rng.span(.seconds(0), .days(5)))
            out.append(
                SentAsk(
                    key: ReferralAsks.key(accountId: id, moment: moment, occurrence: occurrence),
                    moment: moment, dueAt: f.at, sentAt: sentAt))
        }
        return out
    }

    @Test func decidingOnTheRelevantFactsSendsAndWakesAsOnAllOfThem() {
        var rng = SeededGenerator(state: 0xA5C5_2026)
        var decisions = 0
        var sends = 0
        var kept = 0
        var all = 0
        for n in 0..<60 {
            let id = "acct-\(n)"
            let facts = Self.history(id, &rng)
            let program = askProgram(
                minGap: [.days(0), .days(7), .days(30)].randomElement(using: &rng)!,
                maxPerYear: [1, 4, 12].randomElement(using: &rng)!,
                periodic: [.days(30), .days(90)].randomElement(using: &rng)!)
            let freshness: Span = [.days(1), .days(7), .days(14)].randomElement(using: &rng)!
            for _ in 0..<25 {
                let now = Self.base + rng.span(.days(0), .days(1200))
                let sent = Self.sent(id, facts: facts, before: now, &rng)
                let relevant = ReferralAsks.relevantFacts(facts, now: now, freshness: freshness)
                func decide(_ facts: [AskFact]) -> AskDecision {
                    ReferralAsks.decide(
                        AskInput(
                            accountId: id, facts: facts, program: program, code: askCode(id), sent: sent,
                            now: now, policy: AskPolicy(freshness: freshness)))
                }
                let full = decide(facts)
                let windowed = decide(relevant)
                #expect(
                    full.send?.key == windowed.send?.key,
                    "\(id) at \(now.rfc3339): sends \(String(describing: full.send?.key)) on all facts, \(String(describing: windowed.send?.key)) on the relevant ones"
                )
                #expect(full.send?.dueAt == windowed.send?.dueAt)
                #expect(
                    full.nextWakeup == windowed.nextWakeup,
                    "\(id) at \(now.rfc3339): wakes \(String(describing: full.nextWakeup?.rfc3339)) vs \(String(describing: windowed.nextWakeup?.rfc3339))"
                )
                decisions += 1
                if full.send != nil { sends += 1 }
                // The share read of what lies behind the window (facts ahead of now are all read,
                // as the generator dates three years of them from the start).
                let from = now - freshness
                kept += relevant.filter { $0.at < from }.count
                all += facts.filter { $0.at < from }.count
            }
        }
        print(
            "ask relevance: \(decisions) decisions (\(sends) sending); of the facts older than the window, \(kept) of \(all) read (\(kept * 100 / max(all, 1)) %)"
        )
        // The property must have been exercised: sends happened, and the window kept little.
        #expect(sends > 50)
        #expect(kept * 5 < all)
    }
}
