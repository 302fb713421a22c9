import Foundation
import Testing

@testable import ReferralCore

/// Effects are stored by our writer and read back by our reader (the effect cache's misses,
/// `explain`, erasure): every case, with its optional members present and absent and strings
/// that need escaping, must decode to itself and hold what `JSONEncoder` would have written, and
/// rows written by `JSONEncoder` (releases before our writer) must read back the same.
@Suite struct EffectJSONTests {
    static let grant = RewardGrant(
        rewardId: "rwd-1-referrer", referralId: "ref-1", accountId: "acct-\"q\"\\1",
        beneficiary: .referrer, kind: .billCredit, amountMinor: 5000, currency: "EUR",
        programId: "prog/ä")

    static let effects: [Effect] = [
        .codeIssued(accountId: "acct-1", code: "k7qm-42xd-e", programId: "p"),
        .friendOfferGranted(
            referralId: "ref-1", leadId: "lead-1", code: "k7qm-42xd-e", priorityInstall: true,
            kind: .cash, amountMinor: -1, currency: "USD"),
        .statusChanged(
            StatusChange(
                referralId: "ref-1", referrerAccountId: "acct-r", leadId: "lead-1",
                friendAccountId: nil, from: nil, to: .lead, reason: nil, sequence: 1)),
        .statusChanged(
            StatusChange(
                referralId: "ref-1", referrerAccountId: "acct-r", leadId: "lead-1",
                friendAccountId: "acct-f", from: .activated, to: .rejected,
                reason: "line\nbreak\u{1}", sequence: 7)),
        .rewardIssued(grant),
        .rewardRetried(grant, attempt: 3),
        .rewardReversed(
            Reversal(
                rewardId: "rwd-1-friend", referralId: "ref-1", accountId: "acct-f", amountMinor: 2500,
                currency: "EUR", reason: "service_cancelled")),
        .rewardApplied(rewardId: "rwd-1-referrer"),
        .rewardMismatch(rewardId: "rwd-1-referrer", accountId: "acct-r", amountMinor: Int64.max, currency: "EUR"),
        .rewardFailed(rewardId: "rwd-1-referrer", failure: 2, reason: "account closed", final: false),
    ]

    @Test(arguments: effects)
    func storedJSONDecodesToItselfAndMatchesTheSynthesizedShape(_ effect: Effect) throws {
        let ours = effect.storedJSON()
        #expect(try JSONDecoder().decode(Effect.self, from: Data(ours)) == effect)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let theirs = try encoder.encode(effect)
        #expect(try JSONValue.parse(ours) == JSONValue.parse(Array(theirs)))
        #expect(try Effect(storedJSON: ours) == effect)
        #expect(try Effect(storedJSON: Array(theirs)) == effect)
    }

    /// PostgreSQL's `jsonb` output spaces the members and orders keys its own way; an optional
    /// member may also come as `null` rather than absent.
    @Test func readsTheDatabasesSpacingAndNullOptionals() throws {
        let stored =
            #"{"statusChanged": {"_0": {"to": "lead", "from": null, "leadId": "l-1", "reason": null, "sequence": 1, "referralId": "ref-1", "referrerAccountId": "r-1"}}}"#
        #expect(
            try Effect(storedJSON: Array(stored.utf8))
                == .statusChanged(
                    StatusChange(
                        referralId: "ref-1", referrerAccountId: "r-1", leadId: "l-1", friendAccountId: nil, from: nil,
                        to: .lead,
                        reason: nil, sequence: 1)))
    }

    /// A row this release cannot read fails the batch with a reason that names the member, and
    /// no value: stored effects carry customers' ids.
    @Test(arguments: [
        (#"{"rewardApplied": {}}"#, "rewardApplied.rewardId is not a string"),
        (
            #"{"statusChanged": {"_0": {"to": "sideways", "leadId": "l", "sequence": 1, "referralId": "r", "referrerAccountId": "a"}}}"#,
            "statusChanged._0.to is not a known Stage"
        ),
        (
            #"{"rewardIssued": {"_0": {"rewardId": "secret-id", "amountMinor": 1.5}}}"#,
            "rewardIssued._0.referralId is not a string"
        ),
        (#"{"somethingNew": {}}"#, "unknown case somethingNew"),
        (#"{"a": {}, "b": {}}"#, "not an object with one case"),
    ])
    func unreadableRowsSayWhatIsWrong(_ stored: String, _ reason: String) {
        #expect {
            _ = try Effect(storedJSON: Array(stored.utf8))
        } throws: { error in
            let text = "\(error)"
            return text.contains(reason) && !text.contains("secret")
        }
    }
}
