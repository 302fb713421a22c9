import Testing

@testable import ReferralCore

/// The contract's story (examples/README.md), event by event.
@Suite struct LifecycleStoryTests {
    @Test func theContractStory() throws {
        let codes: [String: String] = ["acct-1001": "K7QM-42XD-E", "acct-1002": "9XR4-T1NB-3"]
        var e = ReferralEngine(
            programs: [consumerProgram()], start: at("2026-06-01T00:00:00Z"), codeFor: { codes[$0] ?? "CODE-\($0)" })
        e.receive(
            .serviceActivated(
                accountId: "acct-1001", at: at("2026-06-01T09:00:00Z"), householdId: "hh-1001", contactHash: "c-1001",
                segment: .consumer),
            at: at("2026-06-01T09:00:01Z"))
        #expect(
            e.recordedEffects.contains(.codeIssued(accountId: "acct-1001", code: "K7QM-42XD-E", programId: "consumer")))

        let lead = e.receive(
            .leadCreated(
                leadId: "lead-2001", at: at("2026-11-02T18:40:13Z"), code: "K7QM-42XD-E",
                householdId: "hh-1002", contactHash: "c-1002", segment: .consumer), at: at("2026-11-02T18:40:13Z"))
        #expect(
            lead.contains(
                .friendOfferGranted(
                    referralId: "ref-3001", leadId: "lead-2001", code: "K7QM-42XD-E", priorityInstall: true,
                    kind: .billCredit, amountMinor: 2500, currency: "USD")))
        #expect(
            lead.contains(
                .statusChanged(
                    .init(
                        referralId: "ref-3001", referrerAccountId: "acct-1001", leadId: "lead-2001",
                        friendAccountId: nil, from: nil, to: .lead, reason: nil, sequence: 1))))

        let order = e.receive(
            .orderPlaced(leadId: "lead-2001", accountId: "acct-1002", at: at("2026-11-04T15:22:41Z")),
            at: at("2026-11-04T15:22:41Z"))
        #expect(
            order == [
                .statusChanged(
                    .init(
                        referralId: "ref-3001", referrerAccountId: "acct-1001", leadId: "lead-2001",
                        friendAccountId: "acct-1002", from: .lead, to: .ordered, reason: nil, sequence: 2))
            ])
        e.receive(
            .installCompleted(accountId: "acct-1002", at: at("2026-11-23T10:14:52Z")), at: at("2026-11-23T10:15:00Z"))
        let activation = e.receive(
            .serviceActivated(
                accountId: "acct-1002", at: at("2026-11-23T10:31:07Z"), householdId: "hh-1002",
                contactHash: "c-1002", segment: .consumer), at: at("2026-11-23T10:31:10Z"))
        #expect(activation.contains(.codeIssued(accountId: "acct-1002", code: "9XR4-T1NB-3", programId: "consumer")))
        #expect(e.statusChanges.map(\.to) == [.lead, .ordered, .installed, .activated])
        // The durable timer is the end of the 30d hold.
        #expect(e.nextWakeup == at("2026-12-23T10:31:07Z"))
        #expect(e.issuedRewards.isEmpty)

        let hold = e.advance(to: at("2026-12-23T10:32:00Z"))
        let referrer = RewardGrant(
            rewardId: "rwd-3001-referrer", referralId: "ref-3001", accountId: "acct-1001", beneficiary: .referrer,
            kind: .billCredit, amountMinor: 5000, currency: "USD", programId: "consumer")
        let friend = RewardGrant(
            rewardId: "rwd-3001-friend", referralId: "ref-3001", accountId: "acct-1002", beneficiary: .friend,
            kind: .billCredit, amountMinor: 2500, currency: "USD", programId: "consumer")
        #expect(hold.contains(.rewardIssued(referrer)) && hold.contains(.rewardIssued(friend)))
        #expect(e.statusChanges.suffix(2).map(\.to) == [.qualified, .rewarded])
        #expect(e.log.first { $0.effect == .rewardIssued(referrer) }?.at == at("2026-12-23T10:31:07Z"))

        let applied = e.receive(
            .creditApplied(
                rewardId: "rwd-3001-referrer", accountId: "acct-1001", amountMinor: 5000, currency: "USD",
                at: at("2026-12-23T10:35:00Z")), at: at("2026-12-23T10:35:00Z"))
        #expect(applied == [.rewardApplied(rewardId: "rwd-3001-referrer")])
        let rejected = e.receive(
            .creditRejected(
                rewardId: "rwd-3001-friend", reason: "account_not_billable", at: at("2026-12-23T10:35:02Z")),
            at: at("2026-12-23T10:35:02Z"))
        #expect(
            rejected == [
                .rewardFailed(rewardId: "rwd-3001-friend", failure: 1, reason: "account_not_billable", final: false)
            ])
        #expect(e.nextWakeup == at("2026-12-23T11:35:02Z"))
        let retry = e.advance(to: at("2026-12-24T00:00:00Z"))
        #expect(retry == [.rewardRetried(friend, attempt: 1)])

        // Overdue after qualification: the reward stands.
        let overdue = e.receive(
            .invoiceOverdue(accountId: "acct-1002", invoiceId: "inv-2026-12-1002", at: at("2027-01-12T06:00:00Z")),
            at: at("2027-01-12T06:00:00Z"))
        #expect(overdue.isEmpty)

        let cancel = e.receive(
            .serviceCancelled(accountId: "acct-1002", at: at("2027-01-20T17:44:00Z")), at: at("2027-01-20T17:44:05Z"))
        #expect(
            cancel.contains(
                .rewardReversed(
                    .init(
                        rewardId: "rwd-3001-referrer", referralId: "ref-3001", accountId: "acct-1001",
                        amountMinor: 5000, currency: "USD", reason: "clawback"))))
        #expect(e.reversals.count == 1)
        #expect(e.statusChanges.last?.to == .reversed && e.statusChanges.last?.reason == "clawback")

        let erased = e.receive(
            .customerErased(accountId: "acct-1002", at: at("2027-02-15T13:08:00Z")), at: at("2027-02-15T13:08:00Z"))
        #expect(erased.isEmpty)
        #expect(
            !e.facts.contains {
                if case .serviceActivated("acct-1002", _, let hh, _, _) = $0 { return hh != nil } else { return false }
            })
        let view = try #require(e.explain(referralId: "ref-3001"))
        #expect(view.stage == .reversed && view.rule == "clawback")
        #expect(view.rewards.map(\.status) == [.reversed, .issued])
        #expect(!view.inputs.contains { $0.value.contains("hh-") || $0.value.contains("c-100") })
        // Nothing left to do, and re-deciding is idempotent.
        #expect(e.nextWakeup == nil)
        #expect(e.state().effects.isEmpty)
    }
}
