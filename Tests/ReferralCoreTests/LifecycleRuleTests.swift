import Testing

@testable import ReferralCore

private let t0 = at("2027-03-01T00:00:00Z")

private func engine(_ program: Program = consumerProgram(), policy: LifecyclePolicy = .init()) -> ReferralEngine {
    var e = ReferralEngine(programs: [program], start: t0 - .days(1), policy: policy, codeFor: testCode)
    e.referrer("r1", at: t0)
    e.referrer("r2", at: t0)
    return e
}

private func net(_ e: ReferralEngine) -> [String: Int64] { outcome(e).net }

@Suite struct LifecycleRuleTests {
    @Test("same_household: the friend lives with the referrer; rejected, without an offer")
    func sameHouseholdIsRejectedWithoutOffer() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1), household: "hh-r1")
        e.advance(to: t0 + .days(200))
        let v = try #require(e.view(lead: "L1"))
        #expect(v.stage == .rejected && v.reason == "same_household" && v.rule == "fraud.reject_same_household")
        #expect(!e.recordedEffects.contains { if case .friendOfferGranted = $0 { return true } else { return false } })
        #expect(e.issuedRewards.isEmpty)
        #expect(e.statusChanges.map(\.to) == [.rejected])
    }

    @Test("same_household: not a rejection when the program turns the check off")
    func sameHouseholdIsAllowedWhenTheProgramSaysSo() throws {
        var e = engine(consumerProgram(sameHousehold: false))
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1), household: "hh-r1")
        e.advance(to: t0 + .days(200))
        #expect(e.view(lead: "L1")?.stage == .rewarded)
    }

    @Test("same_contact: the friend shares the referrer's contact")
    func sameContactIsRejected() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1), contact: "c-r1")
        e.advance(to: t0 + .days(200))
        #expect(e.view(lead: "L1")?.reason == "same_contact")
        #expect(e.issuedRewards.isEmpty)
    }

    @Test("too_many_leads: counted per code and UTC day by lead time, not arrival")
    func tooManyLeadsPerCodePerDayCountsByLeadTimeNotArrival() throws {
        var e = engine(consumerProgram(maxLeads: 2))
        let day = t0 + .days(3)
        // Delivered latest-first: the third lead of the day by time is the one rejected.
        for (lead, h) in [("L3", 15), ("L2", 10), ("L1", 5)] {
            e.receive(
                .leadCreated(
                    leadId: lead, at: day + .hours(Int64(h)), code: testCode("r1"), householdId: "hh-\(lead)",
                    contactHash: nil, segment: .consumer), at: day + .hours(20))
        }
        // The next UTC day starts a new count.
        e.receive(
            .leadCreated(
                leadId: "L4", at: day + .hours(25), code: testCode("r1"), householdId: "hh-L4", contactHash: nil,
                segment: nil),
            at: day + .hours(25))
        #expect(e.view(lead: "L3")?.reason == "too_many_leads")
        #expect(
            e.view(lead: "L1")?.stage == .lead && e.view(lead: "L2")?.stage == .lead
                && e.view(lead: "L4")?.stage == .lead)
    }

    @Test("already_referred: the earlier lead by time wins the friend, not the first to arrive")
    func alreadyReferredTheEarlierLeadWinsByTimeNotArrival() throws {
        var e = engine()
        // r2's lead arrives first but is dated later than r1's for the same friend account.
        e.receive(
            .leadCreated(
                leadId: "L2", at: t0 + .days(5), code: testCode("r2"), householdId: nil, contactHash: nil, segment: nil),
            at: t0 + .days(5))
        e.receive(.orderPlaced(leadId: "L2", accountId: "f1", at: t0 + .days(6)), at: t0 + .days(6))
        e.receive(
            .leadCreated(
                leadId: "L1", at: t0 + .days(2), code: testCode("r1"), householdId: nil, contactHash: nil, segment: nil),
            at: t0 + .days(7))
        e.receive(.orderPlaced(leadId: "L1", accountId: "f1", at: t0 + .days(3)), at: t0 + .days(7))
        e.receive(
            .serviceActivated(
                accountId: "f1", at: t0 + .days(10), householdId: "hh-f1", contactHash: nil, segment: .consumer),
            at: t0 + .days(10))
        e.advance(to: t0 + .days(200))
        #expect(e.view(lead: "L2")?.stage == .rejected && e.view(lead: "L2")?.reason == "already_referred")
        #expect(e.view(lead: "L1")?.stage == .rewarded)
        #expect(net(e) == ["L1/referrer": 5000, "L1/friend": 2500])
    }

    /// Trap (b): the earliest lead claims the friend whatever becomes of it, so a later fraud
    /// rejection of the winner does not revive the loser.
    @Test("already_referred: stands when the winner is later rejected for fraud (trap b)")
    func alreadyReferredStandsWhenTheWinnerIsRejectedForFraud() throws {
        var e = engine()
        e.receive(
            .leadCreated(
                leadId: "L2", at: t0 + .days(5), code: testCode("r2"), householdId: "hh-f1", contactHash: nil,
                segment: nil), at: t0 + .days(5))
        e.receive(
            .leadCreated(
                leadId: "L1", at: t0 + .days(2), code: testCode("r1"), householdId: "hh-f1", contactHash: nil,
                segment: nil), at: t0 + .days(6))
        #expect(e.view(lead: "L2")?.reason == "already_referred")
        // The winner's friend turns out to live with r1.
        e.receive(.orderPlaced(leadId: "L1", accountId: "f1", at: t0 + .days(3)), at: t0 + .days(7))
        e.receive(
            .serviceActivated(
                accountId: "f1", at: t0 + .days(10), householdId: "hh-r1", contactHash: nil, segment: .consumer),
            at: t0 + .days(10))
        e.advance(to: t0 + .days(200))
        #expect(e.view(lead: "L1")?.reason == "same_household")
        #expect(e.view(lead: "L2")?.reason == "already_referred")
        #expect(e.issuedRewards.isEmpty)
    }

    @Test("referrer_cancelled: a cancelled referrer's code stops attributing later leads")
    func aCancelledReferrersCodeStopsAttributingLaterLeads() throws {
        var e = engine()
        e.receive(.serviceCancelled(accountId: "r1", at: t0 + .days(2)), at: t0 + .days(2))
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(3))
        e.advance(to: t0 + .days(200))
        #expect(e.view(lead: "L1")?.reason == "referrer_cancelled")
        #expect(e.issuedRewards.isEmpty)
    }

    @Test("yearly_cap: milestones in the UTC year are counted; the friend keeps their reward")
    func yearlyCapCountsMilestonesInTheYearAndKeepsTheFriendsReward() throws {
        var e = engine(consumerProgram(maxRewards: 1))
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1), activateAfter: .days(9))
        e.friend(lead: "L2", of: "r1", account: "f2", leadAt: t0 + .days(2), activateAfter: .days(5))
        // A third one whose milestone falls in the next year gets a fresh slot.
        e.friend(lead: "L3", of: "r1", account: "f3", leadAt: at("2027-12-20T00:00:00Z"), activateAfter: .days(15))
        e.advance(to: at("2028-06-01T00:00:00Z"))
        // L2 reached its milestone first (day 7 vs day 10).
        #expect(
            net(e) == [
                "L2/referrer": 5000, "L2/friend": 2500, "L1/friend": 2500, "L3/referrer": 5000, "L3/friend": 2500,
            ])
        let v = try #require(e.view(lead: "L1"))
        #expect(v.stage == .rewarded && v.rule == "limits.max_rewards_per_referrer_per_year")
        #expect(v.rewards.first { $0.beneficiary == .referrer }?.note == "yearly_cap")
    }

    @Test("arrears: qualification waits for the payment")
    func arrearsDelayQualificationUntilPaid() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        let holdEnd = t0 + .days(11) + .days(30)
        e.receive(.invoiceOverdue(accountId: "f1", invoiceId: "i1", at: holdEnd - .days(2)), at: holdEnd - .days(2))
        e.advance(to: holdEnd + .days(1))
        #expect(e.issuedRewards.isEmpty)
        #expect(e.view(lead: "L1")?.rule == "arrears")
        e.receive(
            .invoicePaid(accountId: "f1", invoiceId: "i1", sequence: 2, at: holdEnd + .days(3)), at: holdEnd + .days(3))
        #expect(e.issuedRewards.count == 2)
        #expect(e.view(lead: "L1")?.qualifiedAt == holdEnd + .days(3))
    }

    @Test("in_arrears_past_window: arrears unpaid at the deadline expire the referral")
    func arrearsPastTheWindowExpire() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.receive(.invoiceOverdue(accountId: "f1", invoiceId: "i1", at: t0 + .days(20)), at: t0 + .days(20))
        e.advance(to: t0 + .days(300))
        #expect(e.view(lead: "L1")?.reason == "in_arrears_past_window")
        #expect(e.issuedRewards.isEmpty)
    }

    @Test("no_milestone_in_window: expired when the window ends, with a timer at its end")
    func expiryAtTheEndOfTheAttributionWindow() throws {
        var e = engine()
        e.receive(
            .leadCreated(
                leadId: "L1", at: t0 + .days(1), code: testCode("r1"), householdId: nil, contactHash: nil, segment: nil),
            at: t0 + .days(1))
        #expect(e.nextWakeup == t0 + .days(91))
        e.advance(to: t0 + .days(92))
        #expect(e.view(lead: "L1")?.stage == .expired && e.view(lead: "L1")?.reason == "no_milestone_in_window")
    }

    /// Trap (a): the window is judged on fact times. A lead that arrives after its window closed is
    /// expired at first sight; a late milestone dated inside the window revives it.
    @Test("no_milestone_in_window: a late milestone dated inside the window revives the referral (trap a)")
    func aLateMilestoneInsideTheWindowRevivesAnExpiredReferral() throws {
        var e = engine()
        e.receive(
            .leadCreated(
                leadId: "L1", at: t0 + .days(1), code: testCode("r1"), householdId: nil, contactHash: nil, segment: nil),
            at: t0 + .days(120))
        #expect(e.view(lead: "L1")?.stage == .expired)
        e.receive(.orderPlaced(leadId: "L1", accountId: "f1", at: t0 + .days(2)), at: t0 + .days(121))
        e.receive(
            .serviceActivated(accountId: "f1", at: t0 + .days(40), householdId: nil, contactHash: nil, segment: nil),
            at: t0 + .days(122))
        #expect(e.statusChanges.map(\.to) == [.expired, .qualified, .rewarded])
        #expect(net(e) == ["L1/referrer": 5000, "L1/friend": 2500])
    }

    @Test("cancelled_before_qualifying: a cancellation during the hold loses the referral")
    func cancellationDuringTheHoldIsLost() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.receive(.serviceCancelled(accountId: "f1", at: t0 + .days(20)), at: t0 + .days(20))
        e.advance(to: t0 + .days(300))
        #expect(e.view(lead: "L1")?.stage == .lost && e.view(lead: "L1")?.reason == "cancelled_before_qualifying")
        #expect(e.issuedRewards.isEmpty)
    }

    /// Trap (c): a cancellation dated inside the hold that arrives after the rewards went out. The
    /// end state follows the fact times (lost) and both rewards are reversed, so the net is what
    /// it would have been had the cancellation arrived in time.
    @Test("cancelled_before_qualifying: a late cancellation inside the hold reverses both rewards (trap c)")
    func aLateCancellationInsideTheHoldReversesBothRewards() throws {
        var e = engine(consumerProgram(clawback: .none))
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(50))
        #expect(e.issuedRewards.count == 2)
        e.receive(.serviceCancelled(accountId: "f1", at: t0 + .days(20)), at: t0 + .days(55))
        #expect(e.view(lead: "L1")?.stage == .lost)
        #expect(Set(e.reversals.map(\.reason)) == ["cancelled_before_qualifying"] && e.reversals.count == 2)
        #expect(net(e).isEmpty)
    }

    @Test(
        "clawback: a cancellation inside the clawback window takes back the rewards its mode names",
        arguments: [
            (ClawbackMode.both, [String: Int64]()), (.none, ["L1/referrer": 5000, "L1/friend": 2500]),
            (.referrer, ["L1/friend": 2500]),
        ])
    func clawbackModes(mode: ClawbackMode, expected: [String: Int64]) throws {
        var e = engine(consumerProgram(clawback: mode))
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(50))
        e.receive(.serviceCancelled(accountId: "f1", at: t0 + .days(70)), at: t0 + .days(70))
        e.advance(to: t0 + .days(400))
        #expect(net(e) == expected)
        #expect(e.view(lead: "L1")?.stage == (mode == .none ? .rewarded : .reversed))
        #expect(e.view(lead: "L1")?.reason == (mode == .none ? nil : "clawback"))
        #expect(e.reversals.allSatisfy { $0.reason == "clawback" })
    }

    @Test("clawback: none after the clawback window")
    func cancellationAfterTheClawbackWindowKeepsTheRewards() throws {
        var e = engine(consumerProgram(clawback: .both))
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.receive(.serviceCancelled(accountId: "f1", at: t0 + .days(41) + .days(61)), at: t0 + .days(110))
        #expect(net(e) == ["L1/referrer": 5000, "L1/friend": 2500])
    }

    @Test("self_referral: the lead became the referrer's own account, whatever the fraud settings")
    func selfReferralIsRejected() throws {
        var e = engine(consumerProgram(sameHousehold: false, sameContact: false))
        e.receive(
            .leadCreated(
                leadId: "L1", at: t0 + .days(1), code: testCode("r1"), householdId: nil, contactHash: nil, segment: nil),
            at: t0 + .days(1))
        e.receive(.orderPlaced(leadId: "L1", accountId: "r1", at: t0 + .days(2)), at: t0 + .days(2))
        e.advance(to: t0 + .days(200))
        let v = try #require(e.view(lead: "L1"))
        #expect(v.stage == .rejected && v.reason == "self_referral" && v.rule == "fraud.self_referral")
        #expect(e.issuedRewards.isEmpty)
        #expect(e.statusChanges.last?.reason == "self_referral")
    }

    @Test("cancelled_before_qualifying: the friend cancelled before any milestone, inside the window")
    func cancellationBeforeTheMilestoneIsLost() throws {
        var e = engine()
        e.receive(
            .leadCreated(
                leadId: "L1", at: t0 + .days(1), code: testCode("r1"), householdId: nil, contactHash: nil, segment: nil),
            at: t0 + .days(1))
        e.receive(.orderPlaced(leadId: "L1", accountId: "f1", at: t0 + .days(2)), at: t0 + .days(2))
        e.receive(.serviceCancelled(accountId: "f1", at: t0 + .days(5)), at: t0 + .days(5))
        let v = try #require(e.view(lead: "L1"))
        #expect(v.stage == .lost && v.reason == "cancelled_before_qualifying" && v.rule == "lost")
        #expect(e.nextWakeup == nil)
    }

    @Test("milestone_after_window: a milestone dated after the attribution window expires the referral")
    func aMilestoneAfterTheWindowExpires() throws {
        var e = engine()
        e.receive(
            .leadCreated(
                leadId: "L1", at: t0 + .days(1), code: testCode("r1"), householdId: nil, contactHash: nil, segment: nil),
            at: t0 + .days(1))
        e.receive(.orderPlaced(leadId: "L1", accountId: "f1", at: t0 + .days(2)), at: t0 + .days(2))
        // The window (90 days from the lead) ends at day 91; the activation is dated day 100 and
        // arrives before the window's timer fired.
        e.receive(
            .serviceActivated(accountId: "f1", at: t0 + .days(100), householdId: nil, contactHash: nil, segment: nil),
            at: t0 + .days(30))
        let v = try #require(e.view(lead: "L1"))
        #expect(v.stage == .expired && v.reason == "milestone_after_window" && v.rule == "attribution_window")
        #expect(e.statusChanges.last?.reason == "milestone_after_window")
        e.advance(to: t0 + .days(200))
        #expect(e.issuedRewards.isEmpty)
    }

    /// The friend's milestone is day 11 (lead day 1), the hold ends day 41, the window day 91;
    /// an invoice fell overdue on day 39.
    @Test("cancelled_in_arrears: in arrears from the hold's end and cancelled before paying")
    func cancelledWhileStillInArrearsIsLost() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.receive(.invoiceOverdue(accountId: "f1", invoiceId: "i1", at: t0 + .days(39)), at: t0 + .days(39))
        e.receive(.serviceCancelled(accountId: "f1", at: t0 + .days(50)), at: t0 + .days(50))
        e.advance(to: t0 + .days(200))
        let v = try #require(e.view(lead: "L1"))
        #expect(v.stage == .lost && v.reason == "cancelled_in_arrears" && v.rule == "arrears")
        #expect(e.issuedRewards.isEmpty)
    }

    @Test("cancelled_in_arrears: a cancellation dated before the payment that ended arrears reverses the rewards")
    func aCancellationBeforeThePaymentThatQualifiedIsLost() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.receive(.invoiceOverdue(accountId: "f1", invoiceId: "i1", at: t0 + .days(39)), at: t0 + .days(39))
        e.receive(
            .invoicePaid(accountId: "f1", invoiceId: "i1", sequence: 2, at: t0 + .days(60)), at: t0 + .days(60))
        #expect(e.view(lead: "L1")?.qualifiedAt == t0 + .days(60) && e.issuedRewards.count == 2)
        // Dated before the payment, so before qualifying: not a clawback.
        e.receive(.serviceCancelled(accountId: "f1", at: t0 + .days(55)), at: t0 + .days(61))
        let v = try #require(e.view(lead: "L1"))
        #expect(v.stage == .lost && v.reason == "cancelled_in_arrears")
        #expect(e.reversals.map(\.reason) == ["cancelled_in_arrears", "cancelled_in_arrears"])
        #expect(net(e).isEmpty)
    }

    /// `LifecycleRules.md`, "The one residual order-dependence": the rewards went out, an overdue
    /// invoice dated before the qualification arrived, the deadline reversed them, and only then the
    /// payment dated in time arrived.
    @Test("reversed_before_late_fact: a reward reversed before the fact showing it was due stays reversed")
    func aRewardReversedBeforeALatePaymentStaysReversed() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(50))
        #expect(e.issuedRewards.count == 2)
        e.receive(.invoiceOverdue(accountId: "f1", invoiceId: "i1", at: t0 + .days(40)), at: t0 + .days(51))
        #expect(e.view(lead: "L1")?.stage == .rewarded)
        e.advance(to: t0 + .days(92))
        #expect(e.reversals.map(\.reason) == ["in_arrears_past_window", "in_arrears_past_window"])
        e.receive(
            .invoicePaid(accountId: "f1", invoiceId: "i1", sequence: 2, at: t0 + .days(45)), at: t0 + .days(93))
        let v = try #require(e.view(lead: "L1"))
        #expect(v.stage == .reversed && v.reason == "reversed_before_late_fact")
        #expect(e.statusChanges.last?.reason == "reversed_before_late_fact")
        #expect(e.issuedRewards.count == 2 && net(e).isEmpty)
    }

    @Test func aMismatchedCreditIsReportedNotApplied() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(50))
        let out = e.receive(
            .creditApplied(
                rewardId: "rwd-3001-referrer", accountId: "r1", amountMinor: 4999, currency: "USD", at: t0 + .days(50)),
            at: t0 + .days(50))
        #expect(
            out == [.rewardMismatch(rewardId: "rwd-3001-referrer", accountId: "r1", amountMinor: 4999, currency: "USD")]
        )
        #expect(e.view(lead: "L1")?.rewards.first { $0.beneficiary == .referrer }?.status == .issued)
    }

    @Test func retriesBackOffThenLeaveTheRewardFailed() throws {
        var e = engine(policy: LifecyclePolicy(maxRetries: 2, retryBackoff: .hours(1), maxRetryBackoff: .hours(90)))
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        let start = t0 + .days(50)
        e.advance(to: start)
        e.receive(.creditRejected(rewardId: "rwd-3001-friend", reason: "closed", at: start), at: start)
        #expect(e.nextWakeup == start + .hours(1))
        e.advance(to: start + .hours(1))
        e.receive(
            .creditRejected(rewardId: "rwd-3001-friend", reason: "closed", at: start + .hours(2)), at: start + .hours(2)
        )
        #expect(e.nextWakeup == start + .hours(4))  // doubled
        e.advance(to: start + .hours(4))
        e.receive(
            .creditRejected(rewardId: "rwd-3001-friend", reason: "closed", at: start + .hours(5)), at: start + .hours(5)
        )
        e.advance(to: start + .days(30))
        let retries = e.recordedEffects.filter { if case .rewardRetried = $0 { return true } else { return false } }
        #expect(retries.count == 2)
        #expect(
            e.recordedEffects.contains(
                .rewardFailed(rewardId: "rwd-3001-friend", failure: 3, reason: "closed", final: true)))
        #expect(e.view(lead: "L1")?.rewards.first { $0.beneficiary == .friend }?.status == .failed)
    }

    @Test func firstInvoicePaidMilestone() throws {
        var e = engine(consumerProgram(milestone: .firstInvoicePaid, hold: .days(10)))
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(60))
        #expect(e.issuedRewards.isEmpty && e.view(lead: "L1")?.stage == .activated)
        e.receive(.invoicePaid(accountId: "f1", invoiceId: "i1", sequence: 1, at: t0 + .days(40)), at: t0 + .days(60))
        #expect(e.issuedRewards.count == 2)
        #expect(e.view(lead: "L1")?.qualifiedAt == t0 + .days(50))
    }

    @Test func erasureKeepsTheLedgerAndAPublishedRejection() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1), household: "hh-r1")
        #expect(e.view(lead: "L1")?.reason == "same_household")
        e.receive(.customerErased(accountId: "r1", at: t0 + .days(5)), at: t0 + .days(5))
        e.advance(to: t0 + .days(300))
        #expect(e.view(lead: "L1")?.stage == .rejected)
        #expect(e.issuedRewards.isEmpty)
        #expect(
            !e.facts.contains {
                if case .serviceActivated("r1", _, let hh, let c, _) = $0 {
                    return hh != nil || c != nil
                } else {
                    return false
                }
            })
    }

    @Test func theDecisionFunctionIsIdempotentAndIndependentOfFactOrder() throws {
        var e = engine()
        e.friend(lead: "L1", of: "r1", account: "f1", leadAt: t0 + .days(1))
        e.advance(to: t0 + .days(50))
        let input = LifecycleInput(
            facts: e.facts.reversed() + e.facts, referrals: e.referrals, recorded: e.recordedEffects, now: e.now)
        let d = Lifecycle.decide(input)
        #expect(d.effects.isEmpty)
        #expect(d.referrals == e.state().referrals)
    }
}
