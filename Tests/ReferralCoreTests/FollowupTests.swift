import Testing

@testable import ReferralCore

@Suite("Follow-ups on stalled referrals")
struct FollowupTests {
    let since = at("2026-11-20T09:12:00Z")
    var ordered: StageEntry {
        StageEntry(
            referralId: "ref-3002", leadId: "lead-2002", stage: .ordered, enteredAt: since, stalledAfter: .days(7))
    }

    @Test("due stalled_after after entering the stage; the event is the contract's example")
    func dueAfterStall() throws {
        let before = Followups.decide([ordered], sent: [], now: since + .days(7) - .seconds(1))
        #expect(before.due.isEmpty)
        #expect(before.nextWakeup == since + .days(7))

        let d = Followups.decide([ordered], sent: [], now: at("2026-11-27T09:12:00Z"))
        let f = try #require(d.due.first)
        #expect(d.due.count == 1)
        #expect(f.key == "followup:ref-3002:ordered")
        let event = f.event(id: "1d9f6c3b-7e20-4a85-b4d9-a0c3e7f1b562")
        #expect(event.time == at("2026-11-27T09:12:00Z"))
        #expect(event.subject == "ref-3002")
        #expect(event.data["stage"] == .string("ordered"))
        #expect(event.data["lead_id"] == .string("lead-2002"))
        #expect(event.data["stalled_since"] == .string("2026-11-20T09:12:00Z"))
    }

    @Test("one per stall: a recorded follow-up is not repeated, and no timer is left")
    func onePerStall() {
        let first = Followups.decide([ordered, ordered], sent: [], now: since + .days(8))
        #expect(first.due.count == 1, "the same entry twice in one call is still one stall")
        let later = Followups.decide([ordered], sent: Set(first.due.map(\.key)), now: since + .days(30))
        #expect(later.due.isEmpty)
        #expect(later.nextWakeup == nil)
    }

    @Test("end stages never stall", arguments: [Stage.qualified, .rewarded, .rejected, .expired, .lost, .reversed])
    func endStages(stage: Stage) {
        var e = ordered
        e.stage = stage
        let d = Followups.decide([e], sent: [], now: since + .days(100))
        #expect(d.due.isEmpty)
        #expect(d.nextWakeup == nil)
    }

    @Test("a referral that moves on and stalls again gets a new follow-up")
    func movesOnAndStallsAgain() throws {
        let first = Followups.decide([ordered], sent: [], now: since + .days(7))
        var installed = ordered
        installed.stage = .installed
        installed.enteredAt = since + .days(9)
        let sent = Set(first.due.map(\.key))
        #expect(Followups.decide([installed], sent: sent, now: since + .days(15)).due.isEmpty)
        let again = try #require(Followups.decide([installed], sent: sent, now: since + .days(16)).due.first)
        #expect(again.stage == .installed)
        #expect(again.stalledSince == since + .days(9))
        #expect(again.key != first.due.first?.key)
    }

    @Test("stage entries come from the lifecycle's views and the facts that moved each referral")
    func entriesFromLifecycle() throws {
        let start = at("2027-03-01T00:00:00Z")
        var engine = ReferralEngine(programs: [consumerProgram()], start: start, codeFor: testCode)
        engine.receive(
            .serviceActivated(
                accountId: "r1", at: start, householdId: "hh-r1", contactHash: "c-r1", segment: .consumer), at: start)
        let leadAt = start + .days(1)
        let orderAt = start + .days(2)
        engine.receive(
            .leadCreated(
                leadId: "lead-1", at: leadAt, code: testCode("r1"), householdId: "hh-f1", contactHash: "c-f1",
                segment: .consumer), at: leadAt)
        func entries() -> [StageEntry] {
            Followups.entries(views: engine.state().referrals, referrals: engine.referrals, facts: engine.facts)
        }
        #expect(entries().map(\.stage) == [.lead])
        #expect(entries().first?.enteredAt == leadAt)

        engine.receive(.orderPlaced(leadId: "lead-1", accountId: "f1", at: orderAt), at: orderAt)
        let e = try #require(entries().first)
        #expect(e.stage == .ordered)
        #expect(e.enteredAt == orderAt)
        #expect(e.stalledAfter == .days(7))
        #expect(e.referralId == engine.referrals.first?.referralId)

        // Qualified and rewarded: no longer in flight, no entry at all.
        let activated = orderAt + .days(3)
        engine.receive(
            .serviceActivated(
                accountId: "f1", at: activated, householdId: "hh-f1", contactHash: "c-f1", segment: .consumer),
            at: activated)
        #expect(entries().map(\.stage) == [.activated])
        engine.advance(to: activated + .days(31))
        #expect(entries().isEmpty)
    }
}
