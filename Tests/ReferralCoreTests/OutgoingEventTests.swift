import Testing

@testable import ReferralCore

/// One event of every published type, built with the typed constructors; the conformance suite
/// compares their shape with the contract's published examples.
func sampleEvent(_ type: PublishedType) throws -> OutgoingEvent {
    let t = try #require(Instant(rfc3339: "2026-11-23T10:31:10Z"))
    let code = try #require(ReferralCode.parse("9XR4-T1NB-3"))
    switch type {
    case .codeIssued:
        return .codeIssued(
            id: "e1", time: t, accountId: "acct-1002", code: code,
            shareURL: "https://example.net/r/9XR4-T1NB-3", programId: "consumer")
    case .friendOfferGranted:
        return .friendOfferGranted(
            id: "e2", time: t, referralId: "ref-1", leadId: "lead-1", referralCode: code,
            priorityInstall: true, friendRewardKind: .billCredit, friendRewardAmountMinor: 2500,
            currency: "USD")
    case .rewardIssued:
        return .rewardIssued(
            id: "e3", time: t, rewardId: "rwd-1", referralId: "ref-1", accountId: "acct-1",
            beneficiary: .friend, kind: .cash, amountMinor: 5000, currency: "USD", programId: "consumer")
    case .rewardReversed:
        return .rewardReversed(
            id: "e4", time: t, rewardId: "rwd-1", referralId: "ref-1", accountId: "acct-1",
            amountMinor: 5000, currency: "USD", reason: "cancelled")
    case .askDue:
        return .askDue(
            id: "e5", time: t, accountId: "acct-1", moment: .supportWin, code: code,
            shareURL: "https://example.net/r/9XR4-T1NB-3", friendOfferText: "Get $25")
    case .leadFollowupDue:
        return try #require(
            .leadFollowupDue(
                id: "e6", time: t, referralId: "ref-1", leadId: "lead-1",
                stage: .installed, stalledSince: t - .days(7)))
    case .statusChanged:
        return try #require(
            .statusChanged(
                id: "e7", time: t, referralId: "ref-1", referrerAccountId: "acct-1",
                leadId: "lead-1", friendAccountId: nil, from: nil, to: .lead, reason: nil))
    }
}

@Suite struct OutgoingEventTests {
    @Test func encodesACompactDeterministicEnvelope() throws {
        let event = try sampleEvent(.codeIssued)
        let text = String(decoding: event.encoded(), as: UTF8.self)
        #expect(
            text == #"{"specversion":"1.0","id":"e1","source":"referrald","type":"referral.code.issued","#
                + #""time":"2026-11-23T10:31:10Z","subject":"acct-1002","datacontenttype":"application/json","#
                + #""data":{"account_id":"acct-1002","code":"9XR4-T1NB-3","share_url":"https://example.net/r/9XR4-T1NB-3","#
                + #""program_id":"consumer"}}"#)
        #expect(event.encoded() == event.encoded())
    }

    @Test func absentSubjectIsOmittedNotNull() throws {
        var event = try sampleEvent(.rewardIssued)
        event.subject = nil
        let envelope = try #require(try JSONValue.parse(event.encoded()).objectValue)
        #expect(envelope.keys == ["specversion", "id", "source", "type", "time", "datacontenttype", "data"])
    }

    @Test func missingValuesAreWrittenAsNull() throws {
        let data = try sampleEvent(.statusChanged).data
        #expect(
            data.keys == ["referral_id", "referrer_account_id", "lead_id", "friend_account_id", "from", "to", "reason"])
        #expect(data["friend_account_id"] == .null)
        #expect(data["from"] == .null)
        #expect(data["reason"] == .null)
    }

    @Test(arguments: PublishedType.allCases)
    func everyPublishedEventReadsBackAsItsType(type: PublishedType) throws {
        let envelope = try #require(try JSONValue.parse(sampleEvent(type).encoded()).objectValue)
        #expect(envelope["type"] == .string(type.rawValue))
        #expect(envelope["source"] == .string("referrald"))
        #expect(envelope["subject"] != nil)
    }

    @Test func schemaRulesAcrossFieldsAreKept() throws {
        let t = Instant(seconds: 0)
        #expect(
            OutgoingEvent.leadFollowupDue(
                id: "e", time: t, referralId: "r", leadId: "l", stage: .rewarded, stalledSince: t) == nil)
        #expect(
            OutgoingEvent.statusChanged(
                id: "e", time: t, referralId: "r", referrerAccountId: "a", leadId: "l",
                friendAccountId: nil, from: .lead, to: .rejected, reason: nil) == nil)
        #expect(
            OutgoingEvent.statusChanged(
                id: "e", time: t, referralId: "r", referrerAccountId: "a", leadId: "l",
                friendAccountId: nil, from: .lead, to: .rejected, reason: "") == nil)
        let rejected = try #require(
            OutgoingEvent.statusChanged(
                id: "e", time: t, referralId: "r", referrerAccountId: "a", leadId: "l", friendAccountId: "f",
                from: .lead, to: .rejected, reason: "already_referred"))
        #expect(rejected.data["reason"] == .string("already_referred"))
        #expect(rejected.data["friend_account_id"] == .string("f"))
    }
}
