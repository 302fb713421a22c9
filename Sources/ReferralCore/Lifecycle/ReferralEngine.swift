/// The lifecycle in memory: stores facts, binds referrals, records effects and fires timers,
/// calling `Lifecycle.decide` as the worker does with PostgreSQL behind it. Used by the property
/// tests and by `referrald simulate` (replaying recorded facts under candidate programs).
///
/// Two modes. `.oracle` re-decides every referral on every event from all facts: the reference.
/// `.incremental` does what the worker does: it keeps each referral's standing, re-decides only
/// the referrals an event touches and those at a boundary the event moved, with the competition
/// ranks read from the standings, and keeps a timer per referral. The differential property
/// test runs both over the same streams and requires the same published effects.
public struct ReferralEngine: Sendable {
    public enum Mode: Sendable { case oracle, incremental }

    public struct Published: Hashable, Sendable {
        public var at: Instant
        public var effect: Effect
    }

    public private(set) var now: Instant
    /// Stored facts (personal data already stripped for erased accounts), in arrival order.
    public private(set) var facts: [Fact] = []
    public private(set) var referrals: [ReferralBinding] = []
    /// Every effect recorded, with the engine time it was decided at.
    public private(set) var log: [Published] = []
    public private(set) var nextWakeup: Instant?
    public let policy: LifecyclePolicy
    /// The budget as the store keeps it (`ProgramBudget.changes`): commitments per referral, and
    /// the month counters they and the reversals add up to.
    public private(set) var commitments: [String: [Commitment]] = [:]
    public private(set) var budgetCounters: [BudgetDelta: Int64] = [:]
    /// Programs whose rewards are paused (`LifecycleInput.pausedPrograms`; `*`: all).
    public private(set) var pausedPrograms: Set<String> = []

    private var delivered: Set<Fact> = []
    private var erased: Set<String> = []
    private var recorded: [Effect] = []
    /// The program of each segment as last installed: code issuance's.
    private var current: [Segment: Program] = [:]
    /// Every version installed, by program id: binding's, as the store's `program_versions`.
    private var versions: [String: [(program: Program, stored: StoredProgramVersion)]] = [:]
    private var nextReferralNumber: Int
    private let codeFor: @Sendable (String) -> String
    public let mode: Mode
    /// Incremental mode: the standings and each referral's timer.
    private var table = StandingTable()
    private var wakeups: [String: Instant] = [:]

    /// - Parameters:
    ///   - codeFor: the code an account gets at first activation. Production codes are random; a
    ///     replay passes the codes that were actually issued, a test a deterministic function.
    ///   - firstReferralNumber: referral ids are `ref-<n>` in order of first sight, as the store's
    ///     sequence gives them.
    public init(
        programs: [Program], start: Instant, policy: LifecyclePolicy = .init(), firstReferralNumber: Int = 3001,
        mode: Mode = .oracle, codeFor: @escaping @Sendable (String) -> String
    ) {
        self.mode = mode
        self.now = start
        self.policy = policy
        self.nextReferralNumber = firstReferralNumber
        self.codeFor = codeFor
        install(programs)
    }

    /// Loads a new programs file, as a worker registers it: a program with a new canonical form
    /// gets the next version, in force from its `effectiveFrom` or else from the engine's time
    /// now; an unchanged one keeps its version and effective time. Referrals bound before keep
    /// theirs; a lead is bound to the version in force at its own time (`ProgramVersions.inForce`).
    public mutating func install(_ programs: [Program]) {
        for p in programs {
            current[p.segment] = p
            let known = versions[p.id] ?? []
            if known.contains(where: { $0.stored.canonical == p.canonicalForm }) { continue }
            let stored = StoredProgramVersion(
                version: known.count + 1, canonical: p.canonicalForm,
                effectiveFrom: p.effectiveFrom ?? now, registeredAt: now)
            versions[p.id, default: []].append((p, stored))
        }
    }

    public var recordedEffects: [Effect] { recorded }

    /// A code issued before a replay's first event (its owner activated before the exported
    /// period): recorded as already issued, so that leads carrying it bind as they did in
    /// production instead of staying unattributed for want of the owner's activation.
    public mutating func seedCode(accountId: String, code: String, programId: String) {
        recorded.append(.codeIssued(accountId: accountId, code: code, programId: programId))
    }

    /// A message arrives at `arrival`: timers due before it fire first, then the fact is stored
    /// (a duplicate changes nothing) and everything it touches is re-decided.
    @discardableResult
    public mutating func receive(_ fact: Fact, at arrival: Instant) -> [Effect] {
        receive(batch: [fact], at: arrival)
    }

    /// Facts that arrive together, as one batch of the worker: stored, then decided once.
    @discardableResult
    public mutating func receive(batch: [Fact], at arrival: Instant) -> [Effect] {
        var out = advance(to: arrival)
        var fresh: [Fact] = []
        for fact in batch where delivered.insert(fact).inserted {
            store(fact)
            fresh.append(fact)
        }
        if fresh.isEmpty { return out }
        out += settle(fresh)
        return out
    }

    private mutating func store(_ fact: Fact) {
        if case .customerErased(let account, _) = fact {
            // Right to erasure: household and contact go; ids, times and amounts are the ledger.
            erased.insert(account)
            let linkedLeads = Set(
                facts.compactMap { f -> String? in
                    if case .orderPlaced(let lead, account, _) = f { return lead } else { return nil }
                })
            facts = facts.map { f in
                switch f {
                case .serviceActivated(account, _, _, _, _): return f.withoutPersonalData
                case .leadCreated(let lead, _, _, _, _, _) where linkedLeads.contains(lead):
                    return f.withoutPersonalData
                default: return f
                }
            }
        }
        facts.append(erased.contains(fact.accountId ?? "") ? fact.withoutPersonalData : fact)
    }

    /// `referrald rewards pause`: rewards falling due from now on are held.
    public mutating func pause(_ program: String) { pausedPrograms.insert(program) }

    /// `referrald rewards resume`: lifts the pause and re-decides the referrals it held at
    /// `qualified` (a paused referral has no timer left: nothing but the resume changes it).
    @discardableResult
    public mutating func resume(_ program: String) -> [Effect] {
        let held = Set(state().referrals.filter { $0.stage == .qualified }.map(\.referralId))
        pausedPrograms.remove(program)
        // The oracle decides every referral (its ranks come from all of them); the incremental
        // path only the held ones, with ranks from the standings, as the command does.
        let deciding = mode == .oracle ? referrals : referrals.filter { held.contains($0.referralId) }
        let d = Lifecycle.decide(
            LifecycleInput(
                facts: facts, referrals: deciding, recorded: recorded, now: now, policy: policy,
                explain: false, competition: mode == .incremental ? table.competition(for: deciding) : nil,
                pausedPrograms: pausedPrograms))
        if mode == .oracle {
            nextWakeup = d.nextWakeup
        } else {
            for id in held { wakeups[id] = d.wakeups[id] }
            nextWakeup = wakeups.values.min()
        }
        var out: [Effect] = []
        record(d.effects, into: &out)
        keepCommitments(d)
        return out
    }

    /// Moves the clock forward, firing every timer due on the way at its own instant.
    @discardableResult
    public mutating func advance(to t: Instant) -> [Effect] {
        var out: [Effect] = []
        while let w = nextWakeup, w <= t {
            now = max(now, w)
            out += settle([])
        }
        now = max(now, t)
        return out
    }

    /// The derived state of every referral now, without recording anything.
    public func state() -> Decision {
        Lifecycle.decide(
            LifecycleInput(
                facts: facts, referrals: referrals, recorded: recorded, now: now, policy: policy,
                pausedPrograms: pausedPrograms))
    }

    public func explain(referralId: String) -> ReferralView? {
        state().referrals.first { $0.referralId == referralId }
    }

    /// Decide and record until nothing new follows: issuing a code can bind a lead that arrived
    /// before its referrer's activation, which then needs its own decision.
    private mutating func settle(_ fresh: [Fact]) -> [Effect] {
        var out: [Effect] = []
        var fresh = fresh
        for _ in 0..<8 {
            let bound = bindNewReferrals()
            let d: Decision
            switch mode {
            case .oracle:
                d = Lifecycle.decide(
                    LifecycleInput(
                        facts: facts, referrals: referrals, recorded: recorded, now: now,
                        policy: policy, explain: false, pausedPrograms: pausedPrograms))
                nextWakeup = d.nextWakeup
            case .incremental:
                d = decideIncrementally(fresh: fresh, bound: bound)
                fresh = []
            }
            record(d.effects, into: &out)
            keepCommitments(d)
            var issuedCode = false
            for request in d.codeRequests {
                guard let program = current[request.segment] else { continue }
                record(
                    [
                        .codeIssued(
                            accountId: request.accountId, code: codeFor(request.accountId), programId: program.id)
                    ], into: &out)
                issuedCode = true
            }
            if !issuedCode { break }
        }
        return out
    }

    private mutating func keepCommitments(_ d: Decision) {
        let programOf = Dictionary(referrals.map { ($0.referralId, $0.program.id) }, uniquingKeysWith: { a, _ in a })
        let newlyIssued = Set(d.effects.compactMap { if case .rewardIssued(let g) = $0 { g.rewardId } else { nil } })
        let views = d.referrals.filter { ProgramBudget.needsKeptCommitments($0, newlyIssued: newlyIssued) }
        let changes = ProgramBudget.changes(
            views: views, stored: commitments,
            reversals: d.effects.compactMap {
                guard case .rewardReversed(let r) = $0, let program = programOf[r.referralId] else { return nil }
                return (program, r.currency, r.amountMinor)
            }, now: now)
        for (referral, id) in changes.deletes { commitments[referral]?.removeAll { $0.rewardId == id } }
        for (referral, c) in changes.upserts {
            commitments[referral] = (commitments[referral] ?? []).filter { $0.rewardId != c.rewardId } + [c]
        }
        for delta in changes.deltas {
            budgetCounters[
                BudgetDelta(programId: delta.programId, month: delta.month, currency: delta.currency, amountMinor: 0),
                default: 0] += delta.amountMinor
        }
    }

    private mutating func record(_ effects: [Effect], into out: inout [Effect]) {
        for e in effects {
            recorded.append(e)
            log.append(Published(at: now, effect: e))
            out.append(e)
        }
    }

    @discardableResult
    private mutating func bindNewReferrals() -> [ReferralBinding] {
        let bound = Set(referrals.map(\.leadId))
        var fresh: [ReferralBinding] = []
        for lead in Lifecycle.leadsToBind(facts: facts, codes: Lifecycle.codes(in: recorded), bound: bound) {
            let known = versions[lead.programId] ?? []
            guard let chosen = ProgramVersions.inForce(known.map(\.stored), at: lead.at) else { continue }
            fresh.append(
                ReferralBinding(
                    referralId: "ref-\(nextReferralNumber)", leadId: lead.leadId, code: lead.code,
                    referrerAccountId: lead.referrerAccountId, program: known[chosen.version - 1].program,
                    programVersion: chosen.version))
            nextReferralNumber += 1
        }
        referrals += fresh
        return fresh
    }

    /// The worker's way: the referrals the fresh facts touch get new standings; the boundaries
    /// those moved, and the timers due now, add the referrals to re-decide; only those are
    /// decided, with ranks from the standings.
    private mutating func decideIncrementally(fresh: [Fact], bound: [ReferralBinding]) -> Decision {
        let byId = Dictionary(referrals.map { ($0.referralId, $0) }, uniquingKeysWith: { a, _ in a })
        var touched = Lifecycle.touched(by: fresh, in: referrals, standings: table).union(bound.map(\.referralId))
        // An erasure stripped every lead the account ordered (`store`), also one whose friend is
        // another account: those standings change too (the worker's batch does the same).
        let erased = Set(fresh.compactMap { if case .customerErased(let a, _) = $0 { a } else { nil } })
        if !erased.isEmpty {
            let leads = Set(
                facts.compactMap { if case .orderPlaced(let l, let a, _) = $0, erased.contains(a) { l } else { nil } })
            touched.formUnion(referrals.filter { leads.contains($0.leadId) }.map(\.referralId))
        }
        let standings = Lifecycle.standings(facts: facts, referrals: touched.sorted().compactMap { byId[$0] })
        let changes = standings.map { (old: table.upsert($0), new: $0) }
        let programs = referrals.map(\.program)
        var targets = touched
        let queries =
            Lifecycle.boundaries(
                changes: changes, leadLimits: Set(programs.map(\.limits.maxLeadsPerCodePerDay)),
                capLimits: Set(programs.map(\.limits.maxRewardsPerReferrerPerYear)))
            + Lifecycle.referrerBoundaries(fresh)
        for q in queries { targets.formUnion(table.resolve(q)) }
        for (id, w) in wakeups where w <= now { targets.insert(id) }
        let deciding = targets.sorted().compactMap { byId[$0] }
        let d = Lifecycle.decide(
            LifecycleInput(
                facts: facts, referrals: deciding, recorded: recorded, now: now, policy: policy,
                explain: false, competition: table.competition(for: deciding),
                pausedPrograms: pausedPrograms))
        for id in targets { wakeups[id] = d.wakeups[id] }
        nextWakeup = wakeups.values.min()
        return d
    }
}
