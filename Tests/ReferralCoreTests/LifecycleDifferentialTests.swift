import ReferralTestKit
import Testing

@testable import ReferralCore

/// The generator of `makeScenario`, widened to the facts that move a key and so take an entry
/// out of a ranking, letting the entry at the boundary back in: an earlier order to another
/// account, a second version of a lead with another time, an earlier activation that moves a
/// milestone into the previous year, an erasure that removes household keys, an operator's
/// rejection, and (in `runBoth`) a second program version with other limits, installed mid-stream.
func makeWideScenario(seed: UInt64) -> Scenario {
    var scenario = makeScenario(seed: seed)
    var rng = SeededGenerator(state: seed ^ 0x5EED)
    // Around the turn of the year now and then, so that an earlier activation changes the
    // milestone's year (the cap counts per UTC year).
    let shift: Span = seed % 3 == 0 ? at("2027-12-20T00:00:00Z") - at("2027-03-07T00:00:00Z") : .days(0)
    var facts = scenario.facts.map { shifted($0, by: shift) }
    var extra: [Fact] = []
    for fact in facts {
        switch fact {
        case .leadCreated(let lead, let t, let code, let hh, let contact, let seg) where rng.chance(0.15):
            extra.append(
                .leadCreated(
                    leadId: lead, at: t - rng.span(.hours(1), .days(2)), code: code, householdId: hh,
                    contactHash: contact, segment: seg))
        case .orderPlaced(let lead, _, let t) where rng.chance(0.1):
            extra.append(.orderPlaced(leadId: lead, accountId: "f-other-\(lead)", at: t - .minutes(30)))
        case .serviceActivated(let account, let t, let hh, let contact, let seg)
        where account.hasPrefix("f") && rng.chance(0.12):
            extra.append(
                .serviceActivated(
                    accountId: account, at: t - rng.span(.days(1), .days(20)), householdId: hh,
                    contactHash: contact, segment: seg))
        case .serviceActivated(let account, let t, _, _, _) where account.hasPrefix("f") && rng.chance(0.06):
            extra.append(.customerErased(accountId: account, at: t + rng.span(.days(1), .days(30))))
        default:
            break
        }
    }
    // An operator's rejection now and then, at any point of a referral's life, drawn from a
    // generator of its own so that the streams above stay those of earlier releases.
    var operatorRng = SeededGenerator(state: seed ^ 0x0BE7A70)
    for case .leadCreated(let lead, let t, _, _, _, _) in facts where operatorRng.chance(0.05) {
        extra.append(.operatorRejected(leadId: lead, at: t + operatorRng.span(.hours(1), .days(60))))
    }
    facts += extra
    scenario.facts = facts
    return scenario
}

private func shifted(_ f: Fact, by d: Span) -> Fact {
    switch f {
    case .leadCreated(let l, let t, let c, let h, let ct, let s):
        return .leadCreated(leadId: l, at: t + d, code: c, householdId: h, contactHash: ct, segment: s)
    case .orderPlaced(let l, let a, let t): return .orderPlaced(leadId: l, accountId: a, at: t + d)
    case .installCompleted(let a, let t): return .installCompleted(accountId: a, at: t + d)
    case .serviceActivated(let a, let t, let h, let c, let s):
        return .serviceActivated(accountId: a, at: t + d, householdId: h, contactHash: c, segment: s)
    case .serviceCancelled(let a, let t): return .serviceCancelled(accountId: a, at: t + d)
    case .invoiceOverdue(let a, let i, let t): return .invoiceOverdue(accountId: a, invoiceId: i, at: t + d)
    case .invoicePaid(let a, let i, let s, let t):
        return .invoicePaid(accountId: a, invoiceId: i, sequence: s, at: t + d)
    case .creditApplied(let r, let a, let m, let c, let t):
        return .creditApplied(rewardId: r, accountId: a, amountMinor: m, currency: c, at: t + d)
    case .creditRejected(let r, let why, let t): return .creditRejected(rewardId: r, reason: why, at: t + d)
    case .customerErased(let a, let t): return .customerErased(accountId: a, at: t + d)
    case .planChosen(let a, let p, let t): return .planChosen(accountId: a, planId: p, at: t + d)
    case .operatorRejected(let l, let t): return .operatorRejected(leadId: l, at: t + d)
    case .operatorReversed(let r, let t): return .operatorReversed(rewardId: r, at: t + d)
    }
}

/// The same deliveries, batch cuts, clock jumps and program change through both engines.
func runBoth(_ scenario: Scenario, deliveries: [Fact], rng: inout SeededGenerator)
    -> (oracle: ReferralEngine, incremental: ReferralEngine)
{
    let start = at("2027-02-01T00:00:00Z")
    var oracle = ReferralEngine(programs: scenario.programs, start: start, mode: .oracle, codeFor: testCode)
    var incremental = ReferralEngine(programs: scenario.programs, start: start, mode: .incremental, codeFor: testCode)
    // A second version of each program with other limits, from a random point on.
    let changeAt = rng.chance(0.5) ? Int.random(in: 0...deliveries.count, using: &rng) : nil
    let changed = scenario.programs.map { p -> Program in
        var p = p
        p.limits = .init(
            maxRewardsPerReferrerPerYear: p.limits.maxRewardsPerReferrerPerYear + 1,
            maxLeadsPerCodePerDay: max(1, p.limits.maxLeadsPerCodePerDay - 1))
        return p
    }
    var clock = start
    var i = 0
    while i < deliveries.count {
        if i == changeAt {
            oracle.install(changed)
            incremental.install(changed)
        }
        let cut = min(deliveries.count, i + (rng.chance(0.5) ? 1 : Int.random(in: 1...6, using: &rng)))
        let batch = Array(deliveries[i..<cut])
        if rng.chance(0.3) { clock = clock + rng.span(.hours(0), .days(20)) }
        clock = max(clock, batch.map(\.at).max()!)
        oracle.receive(batch: batch, at: clock)
        incremental.receive(batch: batch, at: clock)
        i = cut
    }
    oracle.advance(to: at("2031-01-01T00:00:00Z"))
    incremental.advance(to: at("2031-01-01T00:00:00Z"))
    return (oracle, incremental)
}

@Suite struct LifecycleDifferentialTests {
    static let scenarios = 300
    static let permutations = 3

    /// The worker's incremental path (standings, boundary re-decides, per-referral timers) and
    /// the full derivation publish exactly the same effects for the same deliveries, in random
    /// orders, with duplicates and random batch cuts. Arrival order itself can still matter in
    /// the documented residual cases; those are counted (oracle against oracle in order), never
    /// a difference between the two paths.
    @Test func incrementalPathPublishesWhatTheOracleDoes() {
        var compared = 0
        var orderDependent = 0
        var kinds: [String: Int] = [:]
        for n in 0..<Self.scenarios {
            let seed = UInt64(n) &* 2_246_822_519 &+ 3
            let scenario = makeWideScenario(seed: seed)
            var rng = SeededGenerator(state: seed ^ 0xC0FFEE)
            var reference: Outcome?
            for p in 0...Self.permutations {
                var deliveries = p == 0 ? scenario.facts.sorted { $0.at < $1.at } : scenario.facts.shuffled(using: &rng)
                for f in scenario.facts where p > 0 && rng.chance(0.15) {
                    deliveries.insert(f, at: Int.random(in: 0...deliveries.count, using: &rng))
                }
                let (oracle, incremental) = runBoth(scenario, deliveries: deliveries, rng: &rng)
                let want = oracle.recordedEffects
                let got = incremental.recordedEffects
                #expect(
                    Set(got) == Set(want) && got.count == want.count,
                    "seed \(seed) permutation \(p): the incremental path differs\n oracle only: \(Set(want).subtracting(got))\n incremental only: \(Set(got).subtracting(want))"
                )
                checkLedger(incremental, seed: seed)
                #expect(
                    incremental.budgetCounters.filter { $0.value != 0 }
                        == oracle.budgetCounters.filter { $0.value != 0 },
                    "seed \(seed) permutation \(p): the budget counters differ between the paths")
                for e in got { kinds[e.kindName, default: 0] += 1 }
                let o = outcome(oracle)
                if p == 0 { reference = o } else if o != reference { orderDependent += 1 }
                compared += 1
            }
        }
        for kind in ["reward_issued", "reward_reversed", "status_changed", "friend_offer_granted"] {
            #expect((kinds[kind] ?? 0) > 0, "the generator never produced \(kind)")
        }
        print(
            "lifecycle differential: \(Self.scenarios) widened scenarios × \(Self.permutations + 1) orders = \(compared) runs, incremental == oracle in all; order-dependent outcomes (oracle, any residual case) in \(orderDependent) runs; effects \(kinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))"
        )
    }
}

extension Effect {
    fileprivate var kindName: String {
        switch self {
        case .codeIssued: "code_issued"
        case .friendOfferGranted: "friend_offer_granted"
        case .statusChanged: "status_changed"
        case .rewardIssued: "reward_issued"
        case .rewardRetried: "reward_retried"
        case .rewardReversed: "reward_reversed"
        case .rewardApplied: "reward_applied"
        case .rewardMismatch: "reward_mismatch"
        case .rewardFailed: "reward_failed"
        }
    }
}
