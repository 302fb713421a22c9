import Testing

@testable import ReferralCore

/// An erasure strips every lead the erased account ordered, also one whose friend is another
/// account (an earlier order). Found by the widened differential generator: the incremental path
/// kept that lead's household claim, so a later lead of the same household was rejected
/// `already_referred` where the facts (and the oracle) no longer rank it behind anyone.
@Suite struct ErasureOfANonFriendOrderTests {
    @Test(
        "a later lead of the household is judged on what the erasure left",
        arguments: [ReferralEngine.Mode.oracle, .incremental])
    func laterLeadOfTheErasedHousehold(mode: ReferralEngine.Mode) throws {
        let t0 = at("2027-03-01T00:00:00Z")
        var e = ReferralEngine(programs: [consumerProgram()], start: t0, mode: mode, codeFor: testCode)
        e.referrer("r1", at: t0)
        e.referrer("r2", at: t0)
        e.receive(
            .leadCreated(
                leadId: "l2", at: t0 + .days(1), code: testCode("r1"), householdId: "hh-x", contactHash: "c-l2",
                segment: .consumer), at: t0 + .days(1))
        e.receive(.orderPlaced(leadId: "l2", accountId: "f-other", at: t0 + .days(2)), at: t0 + .days(2))
        e.receive(.orderPlaced(leadId: "l2", accountId: "f2", at: t0 + .days(2) + .minutes(30)), at: t0 + .days(3))
        e.receive(.customerErased(accountId: "f2", at: t0 + .days(4)), at: t0 + .days(4))
        e.receive(
            .leadCreated(
                leadId: "l4", at: t0 + .days(5), code: testCode("r2"), householdId: "hh-x", contactHash: "c-l4",
                segment: .consumer), at: t0 + .days(5))
        let view = try #require(e.view(lead: "l4"))
        #expect(view.stage != .rejected, "\(view.stage) \(view.reason ?? "")")
        #expect(e.state().effects.isEmpty, "the incremental path left a decision the facts would change")
    }
}
