import Foundation
import Testing

@testable import ReferralCore

/// Effects are stored by our writer and read back by `JSONDecoder` (the effect cache's misses,
/// `explain`, erasure): every case, with its optional members present and absent and strings
/// that need escaping, must decode to itself and hold what `JSONEncoder` would have written.
@Suite struct EffectJSONTests {
    static let grant = RewardGrant(rewardId: "rwd-1-referrer", referralId: "ref-1", accountId: "acct-\"q\"\\1",
                                   beneficiary: .referrer, kind: .billCredit, amountMinor: 5000, currency: "EUR",
                                   programId: "prog/ä")

    static let effects: [Effect] = [
        .codeIssued(accountId: "acct-1", code: "k7qm-42xd-e", programId: "p"),
        .friendOfferGranted(referralId: "ref-1", leadId: "lead-1", code: "k7qm-42xd-e", priorityInstall: true,
                            kind: .cash, amountMinor: -1, currency: "USD"),
        .statusChanged(StatusChange(referralId: "ref-1", referrerAccountId: "acct-r", leadId: "lead-1",
                                    friendAccountId: nil, from: nil, to: .lead, reason: nil, sequence: 1)),
        .statusChanged(StatusChange(referralId: "ref-1", referrerAccountId: "acct-r", leadId: "lead-1",
                                    friendAccountId: "acct-f", from: .activated, to: .rejected,
                                    reason: "line\nbreak\u{1}", sequence: 7)),
        .rewardIssued(grant),
        .rewardRetried(grant, attempt: 3),
        .rewardReversed(Reversal(rewardId: "rwd-1-friend", referralId: "ref-1", accountId: "acct-f", amountMinor: 2500,
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
    }
}
