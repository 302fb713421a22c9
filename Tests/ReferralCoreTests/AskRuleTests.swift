import Testing

@testable import ReferralCore

private let t0 = at("2027-01-10T12:00:00Z")

@Suite("Ask moments")
struct AskMomentTests {
    @Test("post_install: one day after the install, as in the contract story, and no separate activation ask")
    func postInstall() throws {
        let code = try #require(ReferralCode.parse("9XR4-T1NB-3"))
        var engine = AskEngine(programs: [askProgram()], start: at("2026-11-20T00:00:00Z"), codeFor: { _ in code })
        let install = at("2026-11-23T10:14:52Z")
        engine.play(
            [
                askFact(install, .installCompleted, account: "acct-1002"),
                askFact(at("2026-11-23T10:31:07Z"), .serviceActivated(segment: .consumer), account: "acct-1002"),
            ],
            until: at("2026-12-20T00:00:00Z"))
        let asks = engine.asks("acct-1002")
        #expect(asks.map(\.moment) == [.postInstall])
        #expect(asks.first?.sentAt == at("2026-11-24T10:14:52Z"))
        #expect(asks.first?.key == "ask:acct-1002:post_install")

        // The published event is the contract's example, field for field.
        let d = ReferralAsks.decide(
            AskInput(
                accountId: "acct-1002", facts: engine.facts(of: "acct-1002"), program: askProgram(),
                code: code, sent: [], now: at("2026-11-24T10:14:52Z")))
        let event = try #require(d.send).event(id: "8c5a2e9f-0d37-4b61-9f4c-e1a8d6b3c027")
        #expect(event.time == at("2026-11-24T10:14:52Z"))
        #expect(event.subject == "acct-1002")
        #expect(event.data["share_url"] == .string("https://example.net/r/9XR4-T1NB-3"))
        #expect(event.data["code"] == .string("9XR4-T1NB-3"))
        #expect(event.data["moment"] == .string("post_install"))
        #expect(
            event.data["friend_offer_text"]
                == .string(
                    "Use my link and get priority installation plus a $25 bill credit when your service goes live."))
    }

    @Test("post_activation: at activation, for an account without an install visit")
    func postActivation() {
        var engine = askEngine()
        engine.play([askFact(t0, .serviceActivated(segment: .consumer))], until: t0 + .days(20))
        #expect(engine.asks().map(\.moment) == [.postActivation])
        #expect(engine.asks().first?.sentAt == t0)
    }

    @Test("post_activation stands when post_install is not enabled")
    func postActivationWithoutPostInstall() {
        var engine = askEngine(askProgram(moments: [.postActivation]))
        engine.play(
            [askFact(t0 - .hours(1), .installCompleted), askFact(t0, .serviceActivated(segment: nil))],
            until: t0 + .days(20))
        #expect(engine.asks().map(\.moment) == [.postActivation])
    }

    @Test(
        "speed_test: at or above 90 % of plan speed only",
        arguments: [(487.3, true), (450.0, true), (449.9, false), (120.0, false)])
    func speedTest(measured: Double, asks: Bool) {
        var engine = askEngine(askProgram(moments: [.speedTest]))
        engine.play(
            [
                askFact(t0, .serviceActivated(segment: nil)),
                askFact(t0 + .days(3), .speedTest(measuredDownMbps: measured, planDownMbps: 500)),
            ], until: t0 + .days(20))
        #expect(engine.asks().map(\.moment) == (asks ? [.speedTest] : []))
        if asks { #expect(engine.asks().first?.sentAt == t0 + .days(3)) }
    }

    @Test(
        "support_win: a resolved ticket rated 4 or 5",
        arguments: [(5, true), (4, true), (3, false), (nil, false)] as [(Int?, Bool)])
    func supportWin(csat: Int?, asks: Bool) {
        var engine = askEngine(askProgram(moments: [.supportWin]))
        engine.play(
            [
                askFact(t0, .serviceActivated(segment: nil)),
                askFact(t0 + .days(2), .ticketOpened(ticketId: "tkt-88412")),
                askFact(t0 + .days(4), .ticketResolved(ticketId: "tkt-88412", csat: csat)),
            ], until: t0 + .days(20))
        #expect(engine.asks().map(\.moment) == (asks ? [.supportWin] : []))
        if asks {
            #expect(engine.asks().first?.sentAt == t0 + .days(4))
            #expect(engine.asks().first?.key == "ask:acct-1:support_win:tkt-88412")
        }
    }

    @Test(
        "bill_savings: a paid invoice with credits",
        arguments: [(5000, true), (0, false), (nil, false)] as [(Int64?, Bool)])
    func billSavings(credits: Int64?, asks: Bool) {
        var engine = askEngine(askProgram(moments: [.billSavings]))
        engine.play(
            [
                askFact(t0, .serviceActivated(segment: nil)),
                askFact(t0 + .days(25), .invoicePaid(invoiceId: "inv-2027-01-1001", creditsMinor: credits)),
            ], until: t0 + .days(40))
        #expect(engine.asks().map(\.moment) == (asks ? [.billSavings] : []))
    }

    @Test("periodic: every periodic_every while active, none after cancellation")
    func periodic() {
        var engine = askEngine(askProgram(moments: [.periodic]))
        engine.play(
            [askFact(t0, .serviceActivated(segment: nil)), askFact(t0 + .days(300), .serviceCancelled)],
            until: t0 + .days(800))
        #expect(engine.asks().map(\.sentAt) == [t0 + .days(90), t0 + .days(180), t0 + .days(270)])
        #expect(engine.asks().allSatisfy { $0.moment == .periodic })
        #expect(engine.decision(for: "acct-1").nextWakeup == nil, "a cancelled account has no timer")
    }

    @Test("periodic restarts from the last ask sent, whatever its moment")
    func periodicAfterMoment() {
        var engine = askEngine(askProgram(moments: [.periodic, .speedTest]))
        engine.play(
            [
                askFact(t0, .serviceActivated(segment: nil)),
                askFact(t0 + .days(50), .speedTest(measuredDownMbps: 500, planDownMbps: 500)),
            ], until: t0 + .days(200))
        #expect(engine.asks().map(\.moment) == [.speedTest, .periodic])
        #expect(engine.asks().map(\.sentAt) == [t0 + .days(50), t0 + .days(140)])
    }

    @Test("a moment not listed in the program is never asked")
    func disabledMoment() {
        var engine = askEngine(askProgram(moments: [.periodic]))
        engine.play(
            [
                askFact(t0, .serviceActivated(segment: nil)),
                askFact(t0 + .days(5), .speedTest(measuredDownMbps: 500, planDownMbps: 500)),
            ], until: t0 + .days(30))
        #expect(engine.asks().isEmpty)
    }

    @Test("no code yet: the ask waits for it, within freshness")
    func waitsForCode() {
        let p = askProgram(moments: [.speedTest])
        let facts = [askFact(t0, .speedTest(measuredDownMbps: 500, planDownMbps: 500))]
        let without = ReferralAsks.decide(
            AskInput(accountId: "acct-1", facts: facts, program: p, code: nil, sent: [], now: t0 + .hours(1)))
        #expect(without.send == nil)
        #expect(without.considered.map(\.status) == [.waiting(.noCode, until: nil)])
        let with = ReferralAsks.decide(
            AskInput(
                accountId: "acct-1", facts: facts, program: p, code: askCode("acct-1"), sent: [], now: t0 + .hours(1)))
        #expect(with.send?.moment == .speedTest)
    }

    @Test("the strongest moment wins when several fall together; the rest wait for min_gap")
    func strongest() throws {
        let p = askProgram()
        let facts = [
            askFact(t0, .serviceActivated(segment: nil)),
            askFact(t0, .speedTest(measuredDownMbps: 500, planDownMbps: 500)),
            askFact(t0, .ticketResolved(ticketId: "t1", csat: 5)),
            askFact(t0, .invoicePaid(invoiceId: "i1", creditsMinor: 100)),
        ]
        let d = ReferralAsks.decide(
            AskInput(accountId: "acct-1", facts: facts, program: p, code: askCode("acct-1"), sent: [], now: t0))
        #expect(d.send?.moment == .supportWin)
        let others = d.considered.filter { $0.status != .sendingNow }
        #expect(Set(others.map(\.moment)) == [.speedTest, .billSavings, .postActivation, .periodic])
        #expect(
            others.filter { $0.moment != .periodic }.allSatisfy {
                $0.status == .waiting(.minGap, until: t0 + .days(30))
            })
        // They go stale (7 days) before the gap ends (30), so the next timer is the periodic ask
        // counted from this one, not a wake-up that could only drop them.
        #expect(d.nextWakeup == t0 + .days(90))

        // Without the support win, the speed test is next in line, then bill savings.
        let d2 = ReferralAsks.decide(
            AskInput(
                accountId: "acct-1", facts: facts.filter { if case .ticketResolved = $0.kind { false } else { true } },
                program: p, code: askCode("acct-1"), sent: [], now: t0))
        #expect(d2.send?.moment == .speedTest)
        #expect(
            ReferralAsks.strength == [.supportWin, .speedTest, .billSavings, .postActivation, .postInstall, .periodic])
    }
}

@Suite("Ask holds")
struct AskHoldTests {
    let speedTestDay = t0 + .days(10)
    var base: [AskFact] {
        [
            askFact(t0, .serviceActivated(segment: nil)),
            askFact(speedTestDay, .speedTest(measuredDownMbps: 480, planDownMbps: 500)),
        ]
    }
    let program = askProgram(moments: [.speedTest])

    func run(_ extra: [AskFact]) -> AskEngine {
        var engine = askEngine(program)
        engine.play(base + extra, until: speedTestDay + .days(40))
        return engine
    }

    /// The speed test's consideration at the end of the run.
    func verdict(_ engine: AskEngine) -> AskConsideration.Status? {
        engine.decision(for: "acct-1").considered.first { $0.moment == .speedTest }?.status
    }

    @Test("opted out: no ask, skipped as opted_out once stale")
    func optedOut() {
        let engine = run([askFact(t0 + .days(1), .preferencesChanged(referralPrompts: false))])
        #expect(engine.asks().isEmpty)
        #expect(verdict(engine) == .skipped(.optedOut))
    }

    @Test("opted back in within freshness: the held ask goes then")
    func optedBackIn() {
        let engine = run([
            askFact(t0 + .days(1), .preferencesChanged(referralPrompts: false)),
            askFact(speedTestDay + .days(2), .preferencesChanged(referralPrompts: true)),
        ])
        #expect(engine.asks().map(\.sentAt) == [speedTestDay + .days(2)])
    }

    @Test("open ticket: the ask waits for the resolution, and is dropped when the ticket outlives freshness")
    func openTicket() {
        let resolvedInTime = run([
            askFact(speedTestDay - .days(1), .ticketOpened(ticketId: "t1")),
            askFact(speedTestDay + .days(3), .ticketResolved(ticketId: "t1", csat: 2)),
        ])
        #expect(resolvedInTime.asks().map(\.sentAt) == [speedTestDay + .days(3)])

        let resolvedLate = run([
            askFact(speedTestDay - .days(1), .ticketOpened(ticketId: "t1")),
            askFact(speedTestDay + .days(9), .ticketResolved(ticketId: "t1", csat: 2)),
        ])
        #expect(resolvedLate.asks().isEmpty)
        #expect(verdict(resolvedLate) == .skipped(.openTicket))
    }

    @Test("a ticket opened after the ask was scheduled still holds it: rules are checked when due")
    func ticketOpenedAfterScheduling() {
        var engine = askEngine(askProgram(moments: [.postInstall], delay: .days(1)))
        engine.play(
            [
                askFact(t0, .installCompleted), askFact(t0 + .minutes(20), .serviceActivated(segment: nil)),
                askFact(t0 + .hours(5), .ticketOpened(ticketId: "t1")),
            ], until: t0 + .days(30))
        #expect(engine.asks().isEmpty)
    }

    @Test("in arrears: held until the overdue invoice is paid")
    func arrears() {
        let unpaid = run([askFact(speedTestDay - .days(2), .invoiceOverdue(invoiceId: "inv-1"))])
        #expect(unpaid.asks().isEmpty)
        #expect(verdict(unpaid) == .skipped(.inArrears))

        let paid = run([
            askFact(speedTestDay - .days(2), .invoiceOverdue(invoiceId: "inv-1")),
            askFact(speedTestDay + .days(1), .invoicePaid(invoiceId: "inv-1", creditsMinor: nil)),
        ])
        #expect(paid.asks().map(\.sentAt) == [speedTestDay + .days(1)])
    }

    @Test("cancelled: no ask, whatever the cancellation's date")
    func cancelled() {
        // Known before the ask is due, though dated after it (a scheduled cancellation).
        var engine = askEngine(program)
        engine.receive(askFact(t0, .serviceActivated(segment: nil)), at: t0)
        engine.receive(askFact(speedTestDay + .days(20), .serviceCancelled), at: t0 + .days(1))
        engine.receive(base[1], at: speedTestDay)
        engine.advance(to: speedTestDay + .days(40))
        #expect(engine.asks().isEmpty)
        #expect(verdict(engine) == .skipped(.cancelled))
    }

    @Test("erased: no ask ever follows")
    func erased() {
        let engine = run([askFact(t0 + .days(5), .customerErased)])
        #expect(engine.asks().isEmpty)
        #expect(verdict(engine) == .skipped(.erased))
    }

    @Test("a resolution dated before its opening (clock skew) closes the ticket")
    func skewedResolution() {
        let engine = run([
            askFact(speedTestDay - .hours(1), .ticketOpened(ticketId: "T 9001")),
            askFact(speedTestDay - .hours(5), .ticketResolved(ticketId: "T 9001", csat: nil)),
        ])
        #expect(engine.asks().map(\.sentAt) == [speedTestDay])
    }
}

@Suite("Ask limits")
struct AskLimitTests {
    @Test("min_gap: a second moment inside the gap waits, and is dropped once stale")
    func minGapDropsStale() {
        var engine = askEngine(askProgram(moments: [.speedTest, .supportWin]))
        engine.play(
            [
                askFact(t0, .serviceActivated(segment: nil)),
                askFact(t0 + .days(1), .speedTest(measuredDownMbps: 500, planDownMbps: 500)),
                askFact(t0 + .days(11), .ticketResolved(ticketId: "t1", csat: 5)),
            ], until: t0 + .days(60))
        #expect(engine.asks().map(\.moment) == [.speedTest])
        let win = engine.decision(for: "acct-1").considered.first { $0.moment == .supportWin }
        #expect(win?.status == .skipped(.minGap))
    }

    @Test("min_gap: with a long freshness the held moment goes exactly when the gap ends")
    func minGapWaits() {
        var engine = askEngine(askProgram(moments: [.speedTest, .supportWin]), freshness: .days(60))
        engine.play(
            [
                askFact(t0, .serviceActivated(segment: nil)),
                askFact(t0 + .days(1), .speedTest(measuredDownMbps: 500, planDownMbps: 500)),
                askFact(t0 + .days(11), .ticketResolved(ticketId: "t1", csat: 5)),
            ], until: t0 + .days(90))
        #expect(engine.asks().map(\.moment) == [.speedTest, .supportWin])
        #expect(engine.asks().map(\.sentAt) == [t0 + .days(1), t0 + .days(31)])
    }

    @Test("a backlog after an outage goes out spaced by min_gap, strongest first, not in a burst")
    func backlogAfterOutage() {
        var engine = askEngine(
            askProgram(moments: [.speedTest, .supportWin, .billSavings], minGap: .days(10)), freshness: .days(60))
        engine.receive(askFact(t0, .serviceActivated(segment: nil)), at: t0)
        // The worker is down from day 1 to day 20; three moments happen meanwhile, and their
        // messages are delivered in one batch when it comes back.
        let back = t0 + .days(20)
        engine.receive(
            [
                askFact(t0 + .days(3), .invoicePaid(invoiceId: "i1", creditsMinor: 900)),
                askFact(t0 + .days(5), .speedTest(measuredDownMbps: 500, planDownMbps: 500)),
                askFact(t0 + .days(8), .ticketResolved(ticketId: "t1", csat: 4)),
            ], at: back)
        engine.advance(to: t0 + .days(80))
        #expect(engine.asks().map(\.sentAt) == [back, back + .days(10), back + .days(20)])
        #expect(engine.asks().map(\.moment) == [.supportWin, .speedTest, .billSavings])
    }

    @Test("a skipped ask does not count towards min_gap")
    func skippedDoesNotCount() {
        var engine = askEngine(askProgram(moments: [.speedTest, .supportWin]))
        engine.play(
            [
                askFact(t0, .serviceActivated(segment: nil)),
                askFact(t0 + .days(1), .preferencesChanged(referralPrompts: false)),
                askFact(t0 + .days(2), .speedTest(measuredDownMbps: 500, planDownMbps: 500)),
                askFact(t0 + .days(12), .preferencesChanged(referralPrompts: true)),
                askFact(t0 + .days(14), .ticketResolved(ticketId: "t1", csat: 5)),
            ], until: t0 + .days(40))
        #expect(engine.asks().map(\.moment) == [.supportWin])
        #expect(engine.asks().map(\.sentAt) == [t0 + .days(14)])
    }

    @Test("max_per_year: a rolling window of 366 days")
    func maxPerYear() {
        var engine = askEngine(
            askProgram(moments: [.speedTest], minGap: .days(1), maxPerYear: 2), freshness: .days(400))
        var facts = [askFact(t0, .serviceActivated(segment: nil))]
        for week in 1...60 {
            facts.append(askFact(t0 + .days(Int64(week) * 7), .speedTest(measuredDownMbps: 500, planDownMbps: 500)))
        }
        engine.play(facts, until: t0 + .days(500))
        let sent = engine.asks().map(\.sentAt)
        #expect(sent.prefix(3) == [t0 + .days(7), t0 + .days(14), t0 + .days(7 + 366)])
        for s in sent { #expect(sent.filter { $0 > s - .days(366) && $0 <= s }.count <= 2) }
    }

    @Test("max_per_year 0: never an ask")
    func maxZero() {
        var engine = askEngine(askProgram(maxPerYear: 0))
        engine.play([askFact(t0, .serviceActivated(segment: nil))], until: t0 + .days(400))
        #expect(engine.asks().isEmpty)
        let mid = ReferralAsks.decide(
            AskInput(
                accountId: "acct-1", facts: engine.facts(of: "acct-1"), program: askProgram(maxPerYear: 0),
                code: askCode("acct-1"), sent: [], now: t0 + .days(91)))
        #expect(
            mid.considered.first { $0.moment == .periodic && $0.dueAt == t0 + .days(90) }?.status
                == .waiting(.maxPerYear, until: nil))
        #expect(mid.nextWakeup == t0 + .days(180), "no timer for a hold that time cannot lift")
    }
}

@Suite("Ask keys and facts")
struct AskKeyTests {
    @Test("a recorded key is never sent again: redelivery, replay, a second instance")
    func keyDeduplicates() {
        let p = askProgram()
        let facts = [askFact(t0, .serviceActivated(segment: nil))]
        let input = AskInput(
            accountId: "acct-1", facts: facts + facts, program: p, code: askCode("acct-1"), sent: [], now: t0)
        let a = ReferralAsks.decide(input)
        let b = ReferralAsks.decide(input)
        #expect(a.send != nil)
        #expect(a.send?.key == b.send?.key)
        var again = input
        again.sent = [a.send!.record]
        again.now = t0 + .days(400)
        // Even with every gap long over, the same occurrence is not asked twice.
        #expect(ReferralAsks.decide(again).send?.moment != .postActivation)
    }

    @Test("a later duplicate of the install with another time does not make a second post_install ask")
    func oneShotKeyIgnoresTime() {
        let k1 = ReferralAsks.key(accountId: "acct-1", moment: .postInstall, occurrence: nil)
        var engine = askEngine(askProgram(moments: [.postInstall], minGap: .seconds(0)))
        engine.play(
            [askFact(t0, .installCompleted), askFact(t0, .serviceActivated(segment: nil))], until: t0 + .days(3))
        engine.receive(askFact(t0 - .hours(3), .installCompleted), at: t0 + .days(3))
        engine.advance(to: t0 + .days(10))
        #expect(engine.asks().map(\.key) == [k1])
    }

    @Test("the program follows the first activation's segment; consumer when none is known")
    func segment() {
        #expect(ReferralAsks.segment(of: []) == .consumer)
        #expect(
            ReferralAsks.segment(of: [
                askFact(t0 + .days(1), .serviceActivated(segment: .consumer)),
                askFact(t0, .serviceActivated(segment: .business)),
            ]) == .business)
        #expect(
            ReferralAsks.segment(of: [
                askFact(t0, .serviceActivated(segment: nil)),
                askFact(t0, .serviceActivated(segment: .business)),
            ]) == .business)
    }

    @Test("another account's facts never hold or trigger this account's asks")
    func otherAccountsIgnored() {
        let facts = [
            askFact(t0, .serviceActivated(segment: nil)),
            askFact(t0 - .days(1), .ticketOpened(ticketId: "t1"), account: "acct-2"),
            askFact(t0, .ticketResolved(ticketId: "t2", csat: 5), account: "acct-2"),
        ]
        let d = ReferralAsks.decide(
            AskInput(
                accountId: "acct-1", facts: facts, program: askProgram(), code: askCode("acct-1"), sent: [], now: t0))
        #expect(d.send?.moment == .postActivation)
        #expect(!d.considered.contains { $0.moment == .supportWin })
    }

    @Test("ids are escaped so that no account can forge another's key")
    func escaping() {
        #expect(
            ReferralAsks.key(accountId: "a:b", moment: .supportWin, occurrence: escapeKeyPart("c"))
                == "ask:a%3Ab:support_win:c")
        #expect(
            ReferralAsks.key(accountId: "a", moment: .supportWin, occurrence: escapeKeyPart("b:c"))
                == "ask:a:support_win:b%3Ac")
        #expect(Followups.key(referralId: "ref-1%", stage: .lead) == "followup:ref-1%25:lead")
    }

    @Test(
        "wire events map to ask facts dated by their own time field, else the envelope time",
        arguments: ConsumedType.allCases)
    func fromEvent(type: ConsumedType) throws {
        let event = try classify(body: Fixtures.consumed(type)).get()
        let fact = AskFact.from(event)
        func expected(_ time: String, _ kind: AskFact.Kind) -> AskFact { askFact(at(time), kind, account: "acct-7002") }
        switch type {
        case .installCompleted: #expect(fact == expected("2027-03-10T10:58:59.123456Z", .installCompleted))
        case .serviceActivated: #expect(fact == expected("2027-03-10T11:59:30Z", .serviceActivated(segment: nil)))
        case .serviceCancelled: #expect(fact == expected("2027-03-31T23:59:59-00:30", .serviceCancelled))
        case .speedtestCompleted:
            #expect(fact == expected("2027-03-11T19:00:00Z", .speedTest(measuredDownMbps: 0, planDownMbps: 150)))
        case .ticketOpened: #expect(fact == expected("2027-03-12T09:00:00Z", .ticketOpened(ticketId: "T 9001")))
        case .ticketResolved:
            #expect(fact == expected("2027-03-12T10:00:00+05:30", .ticketResolved(ticketId: "T 9001", csat: nil)))
        case .preferencesChanged:
            #expect(fact == expected("2027-03-13T10:00:00Z", .preferencesChanged(referralPrompts: true)))
        case .customerErased: #expect(fact == expected("2027-06-01T00:00:00Z", .customerErased))
        case .invoiceOverdue:
            #expect(fact == expected("2027-04-20T06:00:00Z", .invoiceOverdue(invoiceId: "inv-7002-03")))
        case .invoicePaid:
            #expect(fact == expected("2027-04-21T06:00:00Z", .invoicePaid(invoiceId: "inv-7002-03", creditsMinor: nil)))
        case .leadCreated, .orderPlaced, .installScheduled, .creditApplied, .creditRejected:
            #expect(fact == nil)
        }
    }
}
