/// The ask rules in memory: stores ask facts, issues codes at first activation, records sent asks
/// and fires per-account timers, calling `ReferralAsks.decide` exactly as the worker does with
/// PostgreSQL behind it. Used by the property tests and by `referrald simulate`.
///
/// Like `ReferralEngine`, it keeps no state the decision does not see: facts, the code and the
/// sent asks in, one decision out. So a replay here and the worker's run agree on the same inputs.
public struct AskEngine: Sendable {
    /// An ask the engine recorded.
    public struct Logged: Hashable, Sendable {
        public var accountId: String
        public var ask: SentAsk
        /// How many of the account's stored facts the decision saw: `facts(of:).prefix(factsSeen)`
        /// is what the rules knew when the ask went out.
        public var factsSeen: Int
    }

    public private(set) var now: Instant
    /// Every ask sent, in send order.
    public private(set) var log: [Logged] = []
    public let policy: AskPolicy

    private let programs: [Segment: Program]
    private let codeFor: @Sendable (String) -> ReferralCode
    private var delivered: Set<AskFact> = []
    private var facts: [String: [AskFact]] = [:]
    private var sent: [String: [SentAsk]] = [:]
    private var codes: [String: ReferralCode] = [:]
    private var wakeups: [String: Instant] = [:]

    /// - Parameter codeFor: the code an account gets at its first activation (production codes
    ///   are random; a replay passes the codes actually issued, a test a deterministic function).
    public init(
        programs: [Program], start: Instant, policy: AskPolicy = .init(),
        codeFor: @escaping @Sendable (String) -> ReferralCode
    ) {
        self.programs = Dictionary(programs.map { ($0.segment, $0) }, uniquingKeysWith: { first, _ in first })
        self.now = start
        self.policy = policy
        self.codeFor = codeFor
    }

    public func facts(of account: String) -> [AskFact] { facts[account] ?? [] }
    public func sent(to account: String) -> [SentAsk] { sent[account] ?? [] }

    /// A message arrives at `arrival`: timers due up to then fire first, then the fact is stored
    /// (a duplicate changes nothing) and its account is re-decided.
    @discardableResult
    public mutating func receive(_ fact: AskFact, at arrival: Instant) -> [PlannedAsk] {
        receive([fact], at: arrival)
    }

    /// A batch arrives at `arrival`, as the worker takes them off the queue: every fact is stored
    /// before any account is decided, so moments delivered together compete for one ask.
    @discardableResult
    public mutating func receive(_ batch: [AskFact], at arrival: Instant) -> [PlannedAsk] {
        var out = advance(to: arrival)
        var touched: Set<String> = []
        for fact in batch where delivered.insert(fact).inserted {
            facts[fact.accountId, default: []].append(fact)
            if case .serviceActivated = fact.kind, codes[fact.accountId] == nil {
                codes[fact.accountId] = codeFor(fact.accountId)
            }
            touched.insert(fact.accountId)
        }
        for account in touched.sorted() { out += settle(account) }
        return out
    }

    /// Moves the clock forward, firing every account's timer at its own instant, earliest first
    /// (ties by account id, so runs are reproducible).
    @discardableResult
    public mutating func advance(to t: Instant) -> [PlannedAsk] {
        var out: [PlannedAsk] = []
        while let (account, w) = wakeups.min(by: { $0.value != $1.value ? $0.value < $1.value : $0.key < $1.key }),
            w <= t
        {
            wakeups[account] = nil
            now = max(now, w)
            out += settle(account)
        }
        now = max(now, t)
        return out
    }

    /// The decision for an account now, recording nothing: the explain view.
    public func decision(for account: String) -> AskDecision {
        ReferralAsks.decide(input(account))
    }

    private func input(_ account: String) -> AskInput {
        let f = facts(of: account)
        return AskInput(
            accountId: account, facts: f, program: programs[ReferralAsks.segment(of: f)], code: codes[account],
            sent: sent(to: account), now: now, policy: policy)
    }

    /// Decides until no ask goes at this instant: more than one only with `min_gap: 0s`, when the
    /// decision asks to be called again right away. Each round sends a new key, so it ends.
    private mutating func settle(_ account: String) -> [PlannedAsk] {
        var out: [PlannedAsk] = []
        while true {
            let d = ReferralAsks.decide(input(account))
            wakeups[account] = d.nextWakeup
            guard let ask = d.send else { break }
            sent[account, default: []].append(ask.record)
            log.append(Logged(accountId: account, ask: ask.record, factsSeen: facts(of: account).count))
            out.append(ask)
            if d.nextWakeup != now { break }
        }
        return out
    }
}
