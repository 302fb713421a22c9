import ReferralTestKit
import Testing

@testable import ReferralCore

/// Rewards `by_plan` (contract README, "Programs"): the amount follows the plan of the friend's
/// first activation, whatever the order the facts arrive in.
@Suite struct RewardsByPlanTests {
    static let t0 = at("2027-03-01T00:00:00Z")

    static var program: Program {
        var p = consumerProgram()
        p.referrerReward.byPlan = ["fiber-1000": 15000, "fiber-500": 8000, "basic": 1000]
        p.friendReward.byPlan = ["fiber-1000": 7500]
        return p
    }

    /// A referrer, a friend's lead, order and install, then the given activations (time, plan);
    /// delivered in `order` (indexes into the list of facts), then the clock runs past the hold.
    static func amounts(activations: [(Span, String?)], order: [Int]? = nil) -> [String: Int64] {
        var e = ReferralEngine(programs: [program], start: t0 - .days(1), codeFor: testCode)
        e.referrer("r1", at: t0)
        var facts: [Fact] = [
            .leadCreated(
                leadId: "L1", at: t0 + .days(1), code: testCode("r1"), householdId: "hh-f1", contactHash: "c-f1",
                segment: .consumer),
            .orderPlaced(leadId: "L1", accountId: "f1", at: t0 + .days(2)),
            .installCompleted(accountId: "f1", at: t0 + .days(5)),
        ]
        for (offset, plan) in activations {
            facts.append(
                .serviceActivated(
                    accountId: "f1", at: t0 + offset, householdId: "hh-f1", contactHash: "c-f1", segment: .consumer))
            if let plan { facts.append(.planChosen(accountId: "f1", planId: plan, at: t0 + offset)) }
        }
        let sequence = (order ?? Array(facts.indices)).map { facts[$0] }
        for fact in sequence { e.receive(fact, at: max(e.now, fact.at)) }
        e.advance(to: t0 + .days(200))
        var out: [String: Int64] = [:]
        for case .rewardIssued(let g) in e.recordedEffects { out[g.beneficiary.rawValue] = g.amountMinor }
        return out
    }

    @Test func theAmountFollowsThePlanOfTheFirstActivation() {
        #expect(Self.amounts(activations: [(.days(6), "fiber-1000")]) == ["referrer": 15000, "friend": 7500])
        #expect(Self.amounts(activations: [(.days(6), "fiber-500")]) == ["referrer": 8000, "friend": 2500])
        // A later activation on another plan changes nothing: the first one decides.
        #expect(
            Self.amounts(activations: [(.days(6), "fiber-500"), (.days(9), "fiber-1000")]) == [
                "referrer": 8000, "friend": 2500,
            ])
    }

    @Test func aPlanAbsentOrNotInTheMapGetsTheProgramsAmount() {
        #expect(Self.amounts(activations: [(.days(6), nil)]) == ["referrer": 5000, "friend": 2500])
        #expect(Self.amounts(activations: [(.days(6), "copper-50")]) == ["referrer": 5000, "friend": 2500])
        // The first activation named no plan: a later one that does is not the first.
        #expect(
            Self.amounts(activations: [(.days(6), nil), (.days(7), "fiber-1000")]) == [
                "referrer": 5000, "friend": 2500,
            ])
    }

    /// What `explain` shows support: the friend's plan among the inputs, and each reward at the
    /// amount it was decided at. An earlier activation on another plan that arrives after the
    /// rewards went out changes the plan shown, never the amount of a reward already issued.
    @Test func explainShowsTheFriendsPlanAndTheAmountEachRewardWasDecidedAt() {
        var e = ReferralEngine(programs: [Self.program], start: Self.t0 - .days(1), codeFor: testCode)
        e.referrer("r1", at: Self.t0)
        for fact: Fact in [
            .leadCreated(
                leadId: "L1", at: Self.t0 + .days(1), code: testCode("r1"), householdId: "hh-f1", contactHash: "c-f1",
                segment: .consumer),
            .orderPlaced(leadId: "L1", accountId: "f1", at: Self.t0 + .days(2)),
            .serviceActivated(
                accountId: "f1", at: Self.t0 + .days(6), householdId: "hh-f1", contactHash: "c-f1", segment: .consumer),
            .planChosen(accountId: "f1", planId: "fiber-500", at: Self.t0 + .days(6)),
        ] { e.receive(fact, at: max(e.now, fact.at)) }
        e.advance(to: Self.t0 + .days(200))
        func explained() -> ReferralView? {
            Lifecycle.decide(
                LifecycleInput(
                    facts: e.facts, referrals: e.referrals, recorded: e.recordedEffects, now: e.now,
                    policy: e.policy, explain: true)
            ).referrals.first
        }
        let view = explained()
        #expect(view?.inputs.first { $0.name == "friend_plan" }?.value == "fiber-500")
        #expect(
            view?.rewards.map { "\($0.beneficiary.rawValue) \($0.amountMinor) \($0.status.rawValue)" }
                == ["referrer 8000 issued", "friend 2500 issued"])

        // Provisioning corrects the history: an activation a day earlier, on fiber-1000.
        for fact: Fact in [
            .serviceActivated(
                accountId: "f1", at: Self.t0 + .days(5), householdId: "hh-f1", contactHash: "c-f1", segment: .consumer),
            .planChosen(accountId: "f1", planId: "fiber-1000", at: Self.t0 + .days(5)),
        ] { e.receive(fact, at: e.now) }
        let corrected = explained()
        #expect(corrected?.inputs.first { $0.name == "friend_plan" }?.value == "fiber-1000")
        #expect(corrected?.rewards.map(\.amountMinor) == [8000, 2500])
        #expect(!e.recordedEffects.contains { if case .rewardReversed = $0 { true } else { false } })
    }

    @Test func twoActivationsAtOneInstantTakeTheHigherAmount() {
        #expect(
            Self.amounts(activations: [(.days(6), "fiber-500"), (.days(6), "fiber-1000")]) == [
                "referrer": 15000, "friend": 7500,
            ])
        #expect(
            Self.amounts(activations: [(.days(6), "fiber-1000"), (.days(6), "basic")]) == [
                "referrer": 15000, "friend": 7500,
            ])
    }

    /// Every arrival order gives the same amounts, as long as the first activation is known
    /// before the rewards go out (they go out at the end of the hold, long after it here).
    @Test func everyArrivalOrderGivesTheSameAmounts() {
        let activations: [(Span, String?)] = [(.days(8), "fiber-500"), (.days(6), "fiber-1000"), (.days(6), "basic")]
        let want = Self.amounts(activations: activations)
        #expect(want == ["referrer": 15000, "friend": 7500])
        var rng = SeededGenerator(state: 7)
        for _ in 0..<40 {
            let order = Array(0..<9).shuffled(using: &rng)
            #expect(Self.amounts(activations: activations, order: order) == want, "order \(order)")
        }
    }

    /// The documented order-dependent case (LifecycleRules.md): a reward issued on the plan
    /// known then stands as issued when an earlier activation on another plan arrives after it.
    @Test func aRewardStandsAsIssuedWhenAnEarlierPlanArrivesAfterIt() {
        var e = ReferralEngine(programs: [Self.program], start: Self.t0 - .days(1), codeFor: testCode)
        e.referrer("r1", at: Self.t0)
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: Self.t0 + .days(1))  // activated day 11, no plan
        e.advance(to: Self.t0 + .days(60))
        e.receive(
            batch: [
                .serviceActivated(
                    accountId: "f1", at: Self.t0 + .days(9), householdId: "hh-f1", contactHash: "c-f1",
                    segment: .consumer),
                .planChosen(accountId: "f1", planId: "fiber-1000", at: Self.t0 + .days(9)),
            ], at: Self.t0 + .days(61))
        e.advance(to: Self.t0 + .days(200))
        let issued = e.issuedRewards.map(\.amountMinor).sorted()
        #expect(issued == [2500, 5000])
        #expect(e.reversals.isEmpty)
    }

    @Test func theOfferCarriesTheMapAndTheProgramsAmount() throws {
        let event = OutgoingEvent.friendOfferGranted(
            id: "e1", time: Self.t0, referralId: "ref-1", leadId: "L1",
            referralCode: try #require(ReferralCode.parse("K7QM-42XD-E")),
            priorityInstall: true, friendRewardKind: .billCredit, friendRewardAmountMinor: 2500, currency: "USD",
            friendRewardByPlan: ["fiber-1000": 7500])
        let body = String(decoding: event.encoded(), as: UTF8.self)
        #expect(
            body.contains(
                #""friend_reward":{"kind":"bill_credit","amount_minor":2500,"currency":"USD","by_plan":{"fiber-1000":7500}}"#
            ))
    }
}
