/// The lifecycle in memory: stores facts, binds referrals, records effects and fires timers,
/// calling `Lifecycle.decide` exactly as the worker does with PostgreSQL behind it. Used by the
/// property tests and by `referrald simulate` (replaying recorded facts under candidate programs).
///
/// It keeps no state the decision function does not see: facts, bindings and recorded effects in,
/// decisions out. So a replay here and the worker's run agree on the same inputs.
public struct ReferralEngine: Sendable {
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

    private var delivered: Set<Fact> = []
    private var erased: Set<String> = []
    private var recorded: [Effect] = []
    private var current: [Segment: (program: Program, version: Int)] = [:]
    private var versions: [String: Int] = [:]
    private var nextReferralNumber: Int
    private let codeFor: @Sendable (String) -> String

    /// - Parameters:
    ///   - codeFor: the code an account gets at first activation. Production codes are random; a
    ///     replay passes the codes that were actually issued, a test a deterministic function.
    ///   - firstReferralNumber: referral ids are `ref-<n>` in order of first sight, as the store's
    ///     sequence gives them.
    public init(programs: [Program], start: Instant, policy: LifecyclePolicy = .init(), firstReferralNumber: Int = 3001,
                codeFor: @escaping @Sendable (String) -> String) {
        self.now = start
        self.policy = policy
        self.nextReferralNumber = firstReferralNumber
        self.codeFor = codeFor
        install(programs)
    }

    /// Loads a new programs file. Changed programs get a new version; referrals already bound keep
    /// theirs. Unchanged programs (same canonical form) keep their version.
    public mutating func install(_ programs: [Program]) {
        for p in programs {
            if let cur = current[p.segment], cur.program.canonicalForm == p.canonicalForm { continue }
            let version = (versions[p.id] ?? 0) + 1
            versions[p.id] = version
            current[p.segment] = (p, version)
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
        var out = advance(to: arrival)
        guard delivered.insert(fact).inserted else { return out }
        if case .customerErased(let account, _) = fact {
            // Right to erasure: household and contact go; ids, times and amounts are the ledger.
            erased.insert(account)
            let linkedLeads = Set(facts.compactMap { f -> String? in
                if case .orderPlaced(let lead, account, _) = f { return lead } else { return nil }
            })
            facts = facts.map { f in
                switch f {
                case .serviceActivated(account, _, _, _, _): return f.withoutPersonalData
                case .leadCreated(let lead, _, _, _, _, _) where linkedLeads.contains(lead): return f.withoutPersonalData
                default: return f
                }
            }
        }
        facts.append(erased.contains(fact.accountId ?? "") ? fact.withoutPersonalData : fact)
        out += settle()
        return out
    }

    /// Moves the clock forward, firing every timer due on the way at its own instant.
    @discardableResult
    public mutating func advance(to t: Instant) -> [Effect] {
        var out: [Effect] = []
        while let w = nextWakeup, w <= t {
            now = max(now, w)
            out += settle()
        }
        now = max(now, t)
        return out
    }

    /// The derived state of every referral now, without recording anything.
    public func state() -> Decision {
        Lifecycle.decide(LifecycleInput(facts: facts, referrals: referrals, recorded: recorded, now: now, policy: policy))
    }

    public func explain(referralId: String) -> ReferralView? {
        state().referrals.first { $0.referralId == referralId }
    }

    /// Decide and record until nothing new follows: issuing a code can bind a lead that arrived
    /// before its referrer's activation, which then needs its own decision.
    private mutating func settle() -> [Effect] {
        var out: [Effect] = []
        for _ in 0..<8 {
            bindNewReferrals()
            let d = Lifecycle.decide(LifecycleInput(facts: facts, referrals: referrals, recorded: recorded, now: now,
                                                    policy: policy, explain: false))
            record(d.effects, into: &out)
            nextWakeup = d.nextWakeup
            var issuedCode = false
            for request in d.codeRequests {
                guard let program = current[request.segment]?.program else { continue }
                record([.codeIssued(accountId: request.accountId, code: codeFor(request.accountId), programId: program.id)], into: &out)
                issuedCode = true
            }
            if !issuedCode { break }
        }
        return out
    }

    private mutating func record(_ effects: [Effect], into out: inout [Effect]) {
        for e in effects {
            recorded.append(e)
            log.append(Published(at: now, effect: e))
            out.append(e)
        }
    }

    private mutating func bindNewReferrals() {
        let bound = Set(referrals.map(\.leadId))
        for lead in Lifecycle.leadsToBind(facts: facts, codes: Lifecycle.codes(in: recorded), bound: bound) {
            guard let (program, version) = current.values.first(where: { $0.program.id == lead.programId }) else { continue }
            referrals.append(ReferralBinding(referralId: "ref-\(nextReferralNumber)", leadId: lead.leadId, code: lead.code,
                                             referrerAccountId: lead.referrerAccountId, program: program, programVersion: version))
            nextReferralNumber += 1
        }
    }
}
