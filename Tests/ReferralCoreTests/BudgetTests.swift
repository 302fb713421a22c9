import Testing

@testable import ReferralCore

/// The monthly budget: what a referral commits and in which month, and how a budget that
/// reached `pause_asks_at` holds asks and lets them go after the month's turn.
@Suite struct BudgetCommitmentTests {
    let nov = at("2027-11-01T00:00:00Z"), dec = at("2027-12-01T00:00:00Z"), jan = at("2028-01-01T00:00:00Z")

    func engine(_ program: Program = consumerProgram()) -> ReferralEngine {
        var e = ReferralEngine(
            programs: [program], start: at("2027-10-01T00:00:00Z"), mode: .incremental, codeFor: testCode)
        e.referrer("r1", at: at("2027-10-01T00:00:00Z"))
        return e
    }

    func committed(_ e: ReferralEngine, _ month: Instant) -> Int64 {
        e.budgetCounters.filter { $0.key.month == month }.map(\.value).reduce(0, +)
    }

    @Test("a reward in its hold commits in its milestone's month, and stays there once issued in the next")
    func holdSpanningTwoMonths() {
        var e = engine()
        // Lead 10 Nov, activation (the milestone) 20 Nov, 30-day hold: issued 20 Dec.
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: at("2027-11-10T00:00:00Z"))
        e.advance(to: at("2027-11-25T00:00:00Z"))
        #expect(committed(e, nov) == 7500)
        #expect(e.issuedRewards.isEmpty)
        e.advance(to: at("2027-12-25T00:00:00Z"))
        #expect(e.issuedRewards.count == 2)
        #expect(committed(e, nov) == 7500)
        #expect(committed(e, dec) == 0)
    }

    @Test("a cancellation inside the hold gives the commitment back")
    func cancelledInHold() {
        var e = engine()
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: at("2027-11-10T00:00:00Z"))
        e.advance(to: at("2027-11-22T00:00:00Z"))
        #expect(committed(e, nov) == 7500)
        e.receive(.serviceCancelled(accountId: "f1", at: at("2027-11-25T00:00:00Z")), at: at("2027-11-25T00:00:00Z"))
        #expect(committed(e, nov) == 0)
        #expect(e.commitments.values.allSatisfy { $0.isEmpty })
    }

    @Test("a reversal lowers the month it happens in, not the month of the milestone")
    func reversalInItsOwnMonth() {
        var e = engine()
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: at("2027-11-10T00:00:00Z"))
        e.advance(to: at("2027-12-25T00:00:00Z"))
        // Cancelled 5 Jan, inside the 60-day clawback window: the referrer's reward is reversed.
        e.receive(.serviceCancelled(accountId: "f1", at: at("2028-01-05T00:00:00Z")), at: at("2028-01-05T00:00:00Z"))
        #expect(e.reversals.map(\.amountMinor) == [5000])
        #expect(committed(e, nov) == 7500)
        #expect(committed(e, jan) == -5000)
    }

    @Test("a referrer reward withheld by the yearly cap commits nothing; the friend's does")
    func cappedReferrerReward() {
        var e = engine(consumerProgram(maxRewards: 1))
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: at("2027-11-01T00:00:00Z"))
        e.friend(lead: "l2", of: "r1", account: "f2", leadAt: at("2027-11-05T00:00:00Z"))
        e.advance(to: at("2027-11-20T00:00:00Z"))
        // Both in their hold: the first takes the year's only slot.
        #expect(committed(e, nov) == 5000 + 2500 + 2500)
        e.advance(to: at("2028-01-31T00:00:00Z"))
        #expect(e.issuedRewards.map(\.amountMinor).sorted() == [2500, 2500, 5000])
        #expect(committed(e, nov) == 10_000)
    }

    @Test("the amount committed follows the friend's plan, as the reward will")
    func committedByPlan() {
        var program = consumerProgram()
        program.referrerReward.byPlan = ["fiber-1000": 15_000]
        var e = engine(program)
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: at("2027-11-10T00:00:00Z"))
        e.receive(
            .planChosen(accountId: "f1", planId: "fiber-1000", at: at("2027-11-20T00:00:00Z")),
            at: at("2027-11-20T00:00:00Z"))
        #expect(committed(e, nov) == 15_000 + 2500)
        e.advance(to: at("2027-12-25T00:00:00Z"))
        #expect(e.issuedRewards.map(\.amountMinor).sorted() == [2500, 15_000])
        #expect(committed(e, nov) == 17_500)
    }
}

@Suite struct BudgetAskHoldTests {
    // No periodic moment: its next occurrence would be one more (scheduled) consideration.
    let program = askProgram(moments: [.postActivation, .speedTest])

    func decide(_ account: String, facts: [AskFact], sent: [SentAsk] = [], now: Instant, held: Bool) -> AskDecision {
        ReferralAsks.decide(
            AskInput(
                accountId: account, facts: facts, program: program, code: askCode(account), sent: sent,
                now: now, budgetHold: held ? ProgramBudget.hold(accountId: account, now: now) : nil))
    }

    @Test(
        "the month's turn and the threshold",
        arguments: [
            ("2027-12-31T23:59:59Z", "2028-01-01T00:00:00Z"), ("2028-02-29T12:00:00Z", "2028-03-01T00:00:00Z"),
            ("2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"),
        ])
    func turn(now: String, next: String) {
        #expect(ProgramBudget.hold(accountId: "a", now: at(now)).turn == at(next))
        #expect(ProgramBudget.month(of: at(now)) <= at(now))
        #expect(ProgramBudget.month(of: at(now)) > at(now) - .days(31))
        let budget = Program.Budget(monthlyMinor: 10_000, pauseAsksAt: 0.9)
        #expect(!ProgramBudget.holdsAsks(committedMinor: 8999, budget: budget))
        #expect(ProgramBudget.holdsAsks(committedMinor: 9000, budget: budget))
    }

    @Test("held asks are released over the first three days, not in a flood at midnight, the same on every instance")
    func spread() {
        let now = at("2027-12-10T08:00:00Z")
        var perHour: [Int64: Int] = [:]
        for i in 0..<3000 {
            let hold = ProgramBudget.hold(accountId: "acct-\(i)", now: now)
            #expect(hold == ProgramBudget.hold(accountId: "acct-\(i)", now: now + .days(5)))
            #expect(hold.release >= hold.turn && hold.release < hold.turn + ProgramBudget.releaseSpread)
            perHour[(hold.release - hold.turn).microseconds / 3_600_000_000, default: 0] += 1
        }
        // 72 hours: about 42 an hour; no hour takes more than twice its share.
        #expect(perHour.count == 72)
        #expect(perHour.values.max()! < 84, "\(perHour.sorted { $0.key < $1.key })")
    }

    @Test("a held ask waits for the account's release, and goes then")
    func heldThenSent() throws {
        let t = at("2027-12-28T12:00:00Z")
        let facts = [askFact(t, .serviceActivated(segment: .consumer))]
        let held = decide("acct-1", facts: facts, now: t, held: true)
        #expect(held.send == nil)
        let release = ProgramBudget.hold(accountId: "acct-1", now: t).release(expiring: t + .days(7))
        #expect(held.considered.map(\.status) == [.waiting(.budget, until: release)])
        #expect(held.nextWakeup == release)
        #expect(release >= at("2028-01-01T00:00:00Z"))
        let after = decide("acct-1", facts: facts, now: release, held: false)
        #expect(try #require(after.send).moment == .postActivation)
    }

    @Test("an ask that would go stale before its account's release goes before it goes stale")
    func releasedBeforeStale() throws {
        // Due 26 Dec 12:00, fresh until 2 Jan 12:00: an account released later than that goes
        // an hour before its freshness ends.
        let t = at("2027-12-26T12:00:00Z")
        let late = try #require(
            (0..<500).map { "acct-\($0)" }.first {
                ProgramBudget.hold(accountId: $0, now: t).release > at("2028-01-02T12:00:00Z")
            })
        let facts = [askFact(t, .serviceActivated(segment: .consumer), account: late)]
        let held = decide(late, facts: facts, now: t, held: true)
        #expect(held.nextWakeup == at("2028-01-02T11:00:00Z"))
        #expect(decide(late, facts: facts, now: at("2028-01-02T11:00:00Z"), held: false).send != nil)
    }

    @Test("an ask stale before the month turns is not woken for, and is skipped")
    func staleBeforeTurn() {
        let t = at("2027-12-10T12:00:00Z")
        let facts = [askFact(t, .serviceActivated(segment: .consumer))]
        let held = decide("acct-1", facts: facts, now: t, held: true)
        #expect(held.send == nil)
        #expect(held.nextWakeup == nil)
        let later = decide("acct-1", facts: facts, now: at("2028-01-02T00:00:00Z"), held: false)
        #expect(later.send == nil)
        #expect(later.considered.map(\.status) == [.skipped(.stale)])
    }

    @Test("a released ask is still subject to min_gap")
    func releaseKeepsMinGap() {
        let t = at("2027-12-28T12:00:00Z")
        let facts = [
            askFact(t - .days(30), .serviceActivated(segment: .consumer)),
            askFact(t, .speedTest(measuredDownMbps: 480, planDownMbps: 500)),
        ]
        let sent = [
            SentAsk(
                key: ReferralAsks.key(accountId: "acct-1", moment: .postActivation, occurrence: nil),
                moment: .postActivation, dueAt: t - .days(30), sentAt: t - .days(10))
        ]
        let release = ProgramBudget.hold(accountId: "acct-1", now: t).release(expiring: t + .days(7))
        let after = decide("acct-1", facts: facts, sent: sent, now: release, held: false)
        #expect(after.send == nil)
        #expect(after.considered.first { $0.moment == .speedTest }?.status == .waiting(.minGap, until: t + .days(20)))
    }
}
