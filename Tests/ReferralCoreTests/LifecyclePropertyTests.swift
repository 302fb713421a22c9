import ReferralTestKit
import Testing

@testable import ReferralCore

extension RandomNumberGenerator {
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
    mutating func span(_ lo: Span, _ hi: Span) -> Span {
        Span(microseconds: Int64.random(in: lo.microseconds...hi.microseconds, using: &self) / 1_000_000 * 1_000_000)
    }
}

/// A generated scenario: programs and the facts of several referrers and friends.
struct Scenario {
    var programs: [Program]
    var facts: [Fact]
}

func makeScenario(seed: UInt64) -> Scenario {
    var rng = SeededGenerator(state: seed)
    let modes = ClawbackMode.allCases
    // Two programs that differ in every timing rule; clawback modes vary by scenario so that
    // referrer, both and none are all exercised.
    let consumer = consumerProgram(
        hold: .days(30), window: .days(90), clawbackWindow: .days(60),
        clawback: modes[Int(seed % 3)], maxRewards: 3, maxLeads: 2)
    let business = consumerProgram(
        id: "business", segment: .business, milestone: .firstInvoicePaid, hold: .days(10),
        window: .days(60), clawbackWindow: .days(45), clawback: modes[Int((seed / 3) % 3)],
        maxRewards: 2, maxLeads: 3, sameContact: false, referrerAmount: 20000, friendAmount: 10000)
    let base = at("2027-03-01T00:00:00Z")
    var facts: [Fact] = []

    let referrerCount = Int.random(in: 2...4, using: &rng)
    var referrers: [(id: String, household: String, contact: String)] = []
    for i in 0..<referrerCount {
        let id = "r\(i)"
        let seg: Segment = rng.chance(0.5) ? .consumer : .business
        let activated = base + rng.span(.days(0), .days(5))
        facts.append(
            .serviceActivated(
                accountId: id, at: activated, householdId: "hh-\(id)", contactHash: "c-\(id)", segment: seg))
        if rng.chance(0.1) {
            facts.append(.serviceCancelled(accountId: id, at: activated + rng.span(.days(5), .days(60))))
        }
        referrers.append((id, "hh-\(id)", "c-\(id)"))
    }

    let leadCount = Int.random(in: 2...7, using: &rng)
    var friendAccounts: [String] = []
    var friendHouseholds: [String] = []
    for j in 0..<leadCount {
        let referrer = referrers.randomElement(using: &rng)!
        let leadId = "lead-\(j)"
        // Leads of one code crowd into one day now and then, to reach max_leads_per_code_per_day.
        let leadAt =
            base + .days(6) + (rng.chance(0.3) ? rng.span(.hours(0), .hours(20)) : rng.span(.days(0), .days(40)))
        var account = "f\(j)"
        var household = "hh-f\(j)"
        var contact = "c-f\(j)"
        // competing referrers
        if !friendAccounts.isEmpty, rng.chance(0.15) { account = friendAccounts.randomElement(using: &rng)! }
        if !friendHouseholds.isEmpty, rng.chance(0.12) { household = friendHouseholds.randomElement(using: &rng)! }
        if rng.chance(0.05) { household = referrer.household }
        if rng.chance(0.05) { contact = referrer.contact }
        let code: String? = rng.chance(0.05) ? nil : testCode(referrer.id)
        facts.append(
            .leadCreated(
                leadId: leadId, at: leadAt, code: code, householdId: rng.chance(0.8) ? household : nil,
                contactHash: contact, segment: .consumer))
        guard rng.chance(0.9) else { continue }
        let orderAt = leadAt + rng.span(.hours(1), .days(3))
        facts.append(.orderPlaced(leadId: leadId, accountId: account, at: orderAt))
        let isNewAccount = !friendAccounts.contains(account)
        friendAccounts.append(account)
        friendHouseholds.append(household)
        guard isNewAccount else { continue }

        var end = orderAt
        if rng.chance(0.85) {
            let installAt = orderAt + rng.span(.days(2), .days(15))
            facts.append(.installCompleted(accountId: account, at: installAt))
            end = installAt
            if rng.chance(0.9) {
                // Now and then activation comes after the attribution window.
                let activatedAt = rng.chance(0.07) ? leadAt + .days(95) : installAt + rng.span(.minutes(5), .days(2))
                end = activatedAt
                facts.append(
                    .serviceActivated(
                        accountId: account, at: activatedAt, householdId: household, contactHash: contact,
                        segment: .consumer))
                if rng.chance(0.75) {
                    facts.append(
                        .invoicePaid(
                            accountId: account, invoiceId: "\(account)-inv-1", sequence: 1,
                            at: activatedAt + rng.span(.days(10), .days(40))))
                }
                if rng.chance(0.3) {
                    let overdueAt = activatedAt + rng.span(.days(0), .days(45))
                    facts.append(.invoiceOverdue(accountId: account, invoiceId: "\(account)-inv-od", at: overdueAt))
                    if rng.chance(0.6) {
                        facts.append(
                            .invoicePaid(
                                accountId: account, invoiceId: "\(account)-inv-od", sequence: 2,
                                at: overdueAt + rng.span(.days(1), .days(40))))
                    }
                }
            }
        }
        if rng.chance(0.35) {
            facts.append(.serviceCancelled(accountId: account, at: end + rng.span(.days(0), .days(110))))
        }
    }
    return Scenario(programs: [consumer, business], facts: facts)
}

/// Delivers `deliveries` in the given order. The clock never runs backwards and a message never
/// arrives before its fact happened; between deliveries it jumps ahead at random, firing timers.
func run(_ scenario: Scenario, deliveries: [Fact], rng: inout SeededGenerator, jitter: Bool) -> ReferralEngine {
    var engine = ReferralEngine(programs: scenario.programs, start: at("2027-02-01T00:00:00Z"), codeFor: testCode)
    var clock = engine.now
    for fact in deliveries {
        if jitter {
            if rng.chance(0.3) { clock = clock + rng.span(.hours(0), .days(20)) }
            engine.advance(to: clock)
        }
        clock = max(clock, fact.at)
        engine.receive(fact, at: clock)
    }
    engine.advance(to: at("2030-01-01T00:00:00Z"))
    return engine
}

/// Ledger invariants that hold in every run, whatever the order.
func checkLedger(_ e: ReferralEngine, seed: UInt64) {
    var issuedIds: [String: Int] = [:]
    var reversedIds: [String: Int] = [:]
    for effect in e.recordedEffects {
        if case .rewardIssued(let g) = effect {
            issuedIds[g.rewardId, default: 0] += 1
            #expect(g.rewardId == rewardId(referralId: g.referralId, beneficiary: g.beneficiary))
        }
        if case .rewardReversed(let r) = effect {
            #expect(issuedIds[r.rewardId] == 1, "seed \(seed): reversal of \(r.rewardId) before or without its issue")
            reversedIds[r.rewardId, default: 0] += 1
        }
    }
    #expect(issuedIds.values.allSatisfy { $0 == 1 }, "seed \(seed): a reward id issued twice")
    #expect(reversedIds.values.allSatisfy { $0 == 1 }, "seed \(seed): a reward id reversed twice")
    let o = outcome(e)
    for (lead, stage) in o.stages where stage.hasPrefix("rejected/") {
        #expect(
            o.net["\(lead)/referrer"] == nil && o.net["\(lead)/friend"] == nil,
            "seed \(seed): rejected \(lead) kept a reward")
    }
    #expect(e.state().effects.isEmpty, "seed \(seed): re-deciding after settling emitted effects")
    #expect(e.nextWakeup == nil, "seed \(seed): a timer outlived every fact")
    checkBudget(e, seed: seed)
}

/// The budget's month counters, kept by differences as the store keeps them, equal the sum the
/// ledger gives: every reward issued, once, at its issued amount in its kept month, less each
/// reversal in the month it was recorded in. Once every timer has fired no referral is in its
/// hold, so no commitment is left that was not issued: a hold that ended in a loss gave its
/// commitment back.
func checkBudget(_ e: ReferralEngine, seed: UInt64) {
    func key(_ program: String, _ month: Instant, _ currency: String) -> BudgetDelta {
        BudgetDelta(programId: program, month: month, currency: currency, amountMinor: 0)
    }
    let rows = e.commitments.values.flatMap { $0 }
    let issued = Dictionary(e.issuedRewards.map { ($0.rewardId, $0) }, uniquingKeysWith: { a, _ in a })
    let programOf = Dictionary(e.referrals.map { ($0.referralId, $0.program.id) }, uniquingKeysWith: { a, _ in a })
    var ledger: [BudgetDelta: Int64] = [:]
    for row in rows {
        #expect(
            row.issued,
            "seed \(seed): \(row.rewardId) still commits \(row.amountMinor) in a hold after every timer fired")
        #expect(
            issued[row.rewardId]?.amountMinor == row.amountMinor,
            "seed \(seed): \(row.rewardId) commits other than was issued")
        ledger[key(row.programId, row.month, row.currency), default: 0] += row.amountMinor
    }
    #expect(Set(rows.map(\.rewardId)) == Set(issued.keys), "seed \(seed): issued rewards and issued commitments differ")
    for p in e.log {
        guard case .rewardReversed(let r) = p.effect, let program = programOf[r.referralId] else { continue }
        ledger[key(program, ProgramBudget.month(of: p.at), r.currency), default: 0] -= r.amountMinor
    }
    #expect(
        e.budgetCounters.filter { $0.value != 0 } == ledger.filter { $0.value != 0 },
        "seed \(seed): the month counters are not the ledger's sums")
}

@Suite struct LifecyclePropertyTests {
    static let scenarios = 1000
    static let permutations = 6

    /// The central property: after all events arrived and every timer fired, net rewards per
    /// (lead, beneficiary) and end stages are the same for every arrival order and duplication.
    ///
    /// The one documented exception (Lifecycle/Lifecycle.docc/LifecycleRules.md, "residual order-dependence"): an overdue invoice and its
    /// payment both arriving after the reward was issued, with the referral's cancellation or the
    /// arrears deadline processed in between, ends `reversed_before_late_fact` — the reward was
    /// reversed on the facts known then and its id cannot be issued again. Such leads are
    /// counted, must be entitled in the in-order run, and are left out of the comparison.
    @Test func outcomesDoNotDependOnArrivalOrder() {
        var compared = 0
        var excepted = 0
        var rewarded = 0
        var ended: [String: Int] = [:]
        for n in 0..<Self.scenarios {
            let seed = UInt64(n) &* 2_654_435_761 &+ 17
            let scenario = makeScenario(seed: seed)
            var rng = SeededGenerator(state: seed ^ 0xDEAD_BEEF)
            let inOrder = scenario.facts.sorted { $0.at < $1.at }
            let reference = run(scenario, deliveries: inOrder, rng: &rng, jitter: false)
            checkLedger(reference, seed: seed)
            let expected = outcome(reference)
            rewarded += expected.net.count
            for stage in expected.stages.values { ended[String(stage.prefix { $0 != "/" }), default: 0] += 1 }
            for _ in 0..<Self.permutations {
                var deliveries = scenario.facts.shuffled(using: &rng)
                for f in scenario.facts where rng.chance(0.2) {
                    deliveries.insert(f, at: Int.random(in: 0...deliveries.count, using: &rng))
                }
                let engine = run(scenario, deliveries: deliveries, rng: &rng, jitter: true)
                checkLedger(engine, seed: seed)
                var got = outcome(engine)
                var want = expected
                for (lead, stage) in got.stages where stage == "reversed/reversed_before_late_fact" {
                    excepted += 1
                    #expect(
                        want.stages[lead]?.hasPrefix("rewarded/") == true
                            || want.stages[lead]?.hasPrefix("reversed/clawback") == true,
                        "seed \(seed): \(lead) hit the arrears exception but was not entitled in order")
                    got.stages[lead] = nil
                    want.stages[lead] = nil
                    for b in ["referrer", "friend"] {
                        got.net["\(lead)/\(b)"] = nil
                        want.net["\(lead)/\(b)"] = nil
                    }
                }
                #expect(
                    got == want, "seed \(seed): \(deliveries.count) deliveries\n in order: \(want)\n permuted: \(got)")
                compared += 1
            }
        }
        // The generator must actually reach every end: a property over scenarios that never
        // reward or never claw back proves nothing.
        for stage in ["rewarded", "reversed", "rejected", "expired", "lost"] {
            #expect((ended[stage] ?? 0) > 0, "no scenario ended \(stage)")
        }
        #expect(excepted * 100 < compared, "the documented arrears exception is no longer rare")
        print(
            "lifecycle property: \(Self.scenarios) scenarios × \(Self.permutations) permutations (+ in-order) = \(compared) compared, all equal except \(excepted) documented arrears exceptions; end stages \(ended.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")); \(rewarded) net rewards"
        )
    }
}
