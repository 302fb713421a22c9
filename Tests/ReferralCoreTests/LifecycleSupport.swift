import Testing

@testable import ReferralCore

func at(_ text: String) -> Instant {
    guard let t = Instant(rfc3339: text) else { fatalError("bad time \(text)") }
    return t
}

let epoch2027 = at("2027-01-01T00:00:00Z")

/// The contract README's consumer program, with overrides for the rule under test.
func consumerProgram(
    id: String = "consumer", segment: Segment = .consumer, milestone: Milestone = .serviceActivated,
    hold: Span = .days(30), window: Span = .days(90), clawbackWindow: Span = .days(60),
    clawback: ClawbackMode = .referrer, maxRewards: Int = 10, maxLeads: Int = 5,
    sameHousehold: Bool = true, sameContact: Bool = true,
    referrerAmount: Int64 = 5000, friendAmount: Int64 = 2500
) -> Program {
    Program(
        id: id, segment: segment, currency: "USD", shareURL: "https://example.net/r/{code}",
        friendOfferText:
            "Use my link and get priority installation plus a $25 bill credit when your service goes live.",
        referrerReward: .init(kind: .billCredit, amountMinor: referrerAmount),
        friendReward: .init(kind: .billCredit, amountMinor: friendAmount, priorityInstall: true),
        qualify: .init(milestone: milestone, hold: hold), attributionWindow: window, clawbackWindow: clawbackWindow,
        clawback: clawback, limits: .init(maxRewardsPerReferrerPerYear: maxRewards, maxLeadsPerCodePerDay: maxLeads),
        fraud: .init(rejectSameHousehold: sameHousehold, rejectSameContact: sameContact),
        asks: .init(
            moments: AskMoment.allCases, delayAfterInstall: .days(1), minGap: .days(30), maxPerYear: 4,
            periodicEvery: .days(90)),
        followup: .init(stalledAfter: .days(7)))
}

func testCode(_ account: String) -> String { "CODE-\(account)" }

/// What the central property compares: per lead, the end stage with its reason, and the net
/// amount (issued minus reversed) per beneficiary. Keyed by lead id because referral ids are
/// handed out in arrival order, as the store's sequence does.
struct Outcome: Hashable, CustomStringConvertible {
    var stages: [String: String] = [:]
    var net: [String: Int64] = [:]

    var description: String {
        let s = stages.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let n = net.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        return "stages[\(s)] net[\(n)]"
    }
}

func outcome(_ engine: ReferralEngine) -> Outcome {
    var o = Outcome()
    let leadOf = Dictionary(uniqueKeysWithValues: engine.referrals.map { ($0.referralId, $0.leadId) })
    for view in engine.state().referrals {
        o.stages[view.leadId] = "\(view.stage.rawValue)/\(view.reason ?? "-")"
    }
    for e in engine.recordedEffects {
        switch e {
        case .rewardIssued(let g):
            o.net["\(leadOf[g.referralId]!)/\(g.beneficiary.rawValue)", default: 0] += g.amountMinor
        case .rewardReversed(let r):
            let who = r.rewardId.hasSuffix("-referrer") ? "referrer" : "friend"
            o.net["\(leadOf[r.referralId]!)/\(who)", default: 0] -= r.amountMinor
        default: break
        }
    }
    o.net = o.net.filter { $0.value != 0 }
    return o
}

extension ReferralEngine {
    /// A referrer that can refer: activated, with a code.
    mutating func referrer(
        _ account: String, at t: Instant, household: String? = nil, contact: String? = nil, segment: Segment = .consumer
    ) {
        receive(
            .serviceActivated(
                accountId: account, at: t, householdId: household ?? "hh-\(account)",
                contactHash: contact ?? "c-\(account)", segment: segment), at: t)
    }

    /// A friend's whole way in: lead, order, install, activation (days after the lead).
    mutating func friend(
        lead: String, of referrer: String, account: String, leadAt t: Instant, household: String? = nil,
        contact: String? = nil, activateAfter: Span = .days(10)
    ) {
        receive(
            .leadCreated(
                leadId: lead, at: t, code: testCode(referrer), householdId: household ?? "hh-\(account)",
                contactHash: contact ?? "c-\(account)", segment: .consumer), at: t)
        receive(.orderPlaced(leadId: lead, accountId: account, at: t + .days(1)), at: t + .days(1))
        receive(
            .installCompleted(accountId: account, at: t + activateAfter - .hours(1)), at: t + activateAfter - .hours(1))
        receive(
            .serviceActivated(
                accountId: account, at: t + activateAfter, householdId: household ?? "hh-\(account)",
                contactHash: contact ?? "c-\(account)", segment: .consumer), at: t + activateAfter)
    }

    func view(lead: String) -> ReferralView? { state().referrals.first { $0.leadId == lead } }

    var statusChanges: [StatusChange] {
        recordedEffects.compactMap { if case .statusChanged(let s) = $0 { return s } else { return nil } }
    }
    var issuedRewards: [RewardGrant] {
        recordedEffects.compactMap { if case .rewardIssued(let g) = $0 { return g } else { return nil } }
    }
    var reversals: [Reversal] {
        recordedEffects.compactMap { if case .rewardReversed(let r) = $0 { return r } else { return nil } }
    }
}
