import Testing

@testable import ReferralCore

/// Operator actions as the lifecycle sees them: a rejection and a reversal are facts, a pause is
/// an input; each is decided the same way by the oracle and by the incremental path.
@Suite struct OperatorActionTests {
    let t0 = at("2027-03-01T00:00:00Z")

    func engine(_ mode: ReferralEngine.Mode = .incremental) -> ReferralEngine {
        var e = ReferralEngine(programs: [consumerProgram()], start: t0, mode: mode, codeFor: testCode)
        e.referrer("r1", at: t0)
        return e
    }

    @Test(
        "operator: a referral rejected by an operator in its hold ends rejected (operator) and is never paid",
        arguments: [ReferralEngine.Mode.oracle, .incremental])
    func rejectInHold(mode: ReferralEngine.Mode) throws {
        var e = engine(mode)
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(15))
        e.receive(.operatorRejected(leadId: "l1", at: t0 + .days(15)), at: t0 + .days(15))
        e.advance(to: t0 + .days(120))
        let view = try #require(e.view(lead: "l1"))
        #expect(view.stage == .rejected)
        #expect(view.reason == "operator")
        #expect(view.rule == "operator")
        #expect(e.issuedRewards.isEmpty)
        #expect(e.statusChanges.last?.reason == "operator")
        #expect(e.budgetCounters.values.allSatisfy { $0 == 0 }, "a rejected referral commits nothing")
    }

    @Test(
        "operator: rejecting a rewarded referral reverses both rewards, reason operator, once",
        arguments: [ReferralEngine.Mode.oracle, .incremental])
    func rejectRewarded(mode: ReferralEngine.Mode) throws {
        var e = engine(mode)
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(50))
        #expect(e.issuedRewards.count == 2)
        e.receive(.operatorRejected(leadId: "l1", at: t0 + .days(50)), at: t0 + .days(50))
        e.receive(.operatorRejected(leadId: "l1", at: t0 + .days(51)), at: t0 + .days(51))
        #expect(e.reversals.map(\.reason) == ["operator", "operator"])
        #expect(Set(e.reversals.map(\.rewardId)) == Set(e.issuedRewards.map(\.rewardId)))
        #expect(try #require(e.view(lead: "l1")).stage == .rejected)
    }

    @Test("an ended referral stays as it ended: a rule's rejection keeps its reason")
    func rejectEnded() throws {
        var e = engine()
        // The friend is the referrer's own household: rejected same_household at the order.
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: t0 + .days(1), household: "hh-r1")
        let before = e.statusChanges.count
        e.receive(.operatorRejected(leadId: "l1", at: t0 + .days(20)), at: t0 + .days(20))
        #expect(try #require(e.view(lead: "l1")).reason == "same_household")
        #expect(e.statusChanges.count == before)
    }

    @Test("operator: a reward reversed by an operator is reversed once, reason operator; the other stands")
    func reverseOne() throws {
        var e = engine()
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(50))
        let referrer = try #require(e.issuedRewards.first { $0.beneficiary == .referrer })
        e.receive(.operatorReversed(rewardId: referrer.rewardId, at: t0 + .days(50)), at: t0 + .days(50))
        e.receive(.operatorReversed(rewardId: referrer.rewardId, at: t0 + .days(52)), at: t0 + .days(52))
        #expect(e.reversals.map(\.rewardId) == [referrer.rewardId])
        #expect(e.reversals.map(\.reason) == ["operator"])
        let view = try #require(e.view(lead: "l1"))
        #expect(view.stage == .rewarded)
        #expect(view.rewards.map(\.status).sorted { $0.rawValue < $1.rawValue } == [.issued, .reversed])
    }

    @Test(
        "rewards falling due during a pause wait at qualified and are issued on resume, once, with their ids",
        arguments: [ReferralEngine.Mode.oracle, .incremental])
    func pauseAndResume(mode: ReferralEngine.Mode) throws {
        var paused = engine(mode)
        var never = engine(mode)
        for e in [0, 1] {
            var engine = e == 0 ? paused : never
            if e == 0 { engine.pause("*") }
            engine.friend(lead: "l1", of: "r1", account: "f1", leadAt: t0 + .days(1))
            engine.advance(to: t0 + .days(50))
            if e == 0 { paused = engine } else { never = engine }
        }
        #expect(paused.issuedRewards.isEmpty)
        #expect(try #require(paused.view(lead: "l1")).stage == .qualified)
        #expect(paused.statusChanges.map(\.to).last == .qualified)
        // Held rewards are promised: they commit their amounts like those in a hold.
        #expect(paused.budgetCounters.values.reduce(0, +) == 7500)
        paused.advance(to: t0 + .days(60))
        #expect(paused.issuedRewards.isEmpty, "time alone does not lift a pause")
        paused.resume("*")
        paused.resume("*")
        #expect(paused.issuedRewards.map(\.rewardId).sorted() == never.issuedRewards.map(\.rewardId).sorted())
        #expect(paused.issuedRewards.map(\.amountMinor).sorted() == never.issuedRewards.map(\.amountMinor).sorted())
        #expect(try #require(paused.view(lead: "l1")).stage == .rewarded)
        #expect(paused.budgetCounters.values.reduce(0, +) == 7500)
    }

    @Test("a pause of one program holds only that program's rewards")
    func pauseOneProgram() {
        var e = engine()
        e.pause("business")
        e.friend(lead: "l1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(50))
        #expect(e.issuedRewards.count == 2)
    }
}
