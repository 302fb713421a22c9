import Postgres
import ReferralCore

/// The one seam between the worker and referral state: each method is one transaction that
/// stores facts, decides what they change (the core's `Lifecycle` and `ReferralAsks`) and
/// records the effects, the ledger, the timers and the outbox. The worker hands in events and
/// a context and gets back what to publish; it never holds a connection inside a decision, so
/// the lock order (`Decisions.decide`) is kept in one place.
public struct DecisionStore: Sendable {
    public let database: Database

    public init(_ database: Database) { self.database = database }

    /// Applies one batch of valid events: records them in the inbox (deduplication), stores
    /// their facts, updates the standings of the referrals they touch, decides those and the
    /// referrals at a boundary they moved, and enqueues what to publish. `published` are outbox
    /// rows the worker published since its last commit: deleting them rides in this transaction
    /// instead of costing a commit of its own. `beforeCommit` runs last inside the transaction
    /// (the fault suite's failpoints throw there).
    public func applyBatch(
        _ events: [ReceivedEvent], published: [Int64], context: DecisionContext,
        beforeCommit: @escaping @Sendable ([ReceivedEvent]) throws -> Void = { _ in }
    )
        async throws -> BatchOutcome
    {
        try await database.transaction { c in
            let outcome = try Decisions.batch(c, events: events, published: published, context: context)
            try beforeCommit(events)
            return outcome
        }
    }

    /// Leases due timers in a short transaction of their own (see `TimerStore.claimDueTimers`).
    public func claimTimers(context: DecisionContext, limit: Int) async throws -> ClaimedTimers {
        try await database.transaction { c in try Decisions.claimTimers(c, context: context, limit: limit) }
    }

    /// Re-decides claimed timers' referrals and accounts at the context's time.
    public func fireTimers(_ claimed: ClaimedTimers, context: DecisionContext) async throws -> FiredTimers {
        try await database.transaction { c in try Decisions.timers(c, claimed: claimed, context: context) }
    }

    /// `referrald enroll`: one chunk of existing customers enrolled (see `Decisions.enroll`).
    public func enroll(_ rows: [EnrolmentRow], start: Instant, span: Span, context: DecisionContext)
        async throws -> (enrolled: Int, published: [OutgoingEvent])
    {
        try await database.transaction { c in
            try Decisions.enroll(c, rows: rows, start: start, span: span, context: context)
        }
    }

    /// An operator action in one transaction: `check` reads what it acts on and says what to
    /// do (facts to store, referrals to re-decide, state to change) or that it is a no-op; the
    /// facts are stored and the referrals decided as a batch would, and the action is recorded
    /// with its result. A dry run does all of it and rolls back: the result and the events are
    /// what a real run would give, and nothing is written.
    public func operatorAction(
        _ action: OperatorAction, context: DecisionContext, dryRun: Bool,
        check: OperatorCheck
    )
        async throws -> (result: String, published: [OutgoingEvent])
    {
        do {
            return try await database.transaction { c in
                let plan = try check.plan(c, now: context.now)
                var recorded = action
                recorded.result = plan.result
                let published = try Decisions.operatorAction(c, recorded, plan: plan, context: context)
                if dryRun { throw DryRun(result: plan.result, published: published) }
                return (plan.result, published)
            }
        } catch let dry as DryRun {
            return (dry.result, dry.published)
        }
    }

    /// Rolls a dry run back, carrying what it would have done out of the transaction.
    private struct DryRun: Error {
        var result: String
        var published: [OutgoingEvent]
    }

    /// `referrald reconcile`: one chunk of referrals re-derived from their facts.
    public func reconcile(_ referrals: [String], context: DecisionContext)
        async throws -> (standingsFixed: [String], published: [OutgoingEvent])
    {
        try await database.transaction { c in try Decisions.reconcile(c, referrals: referrals, context: context) }
    }
}

/// What an operator action does, decided by its check inside the action's transaction.
public struct OperatorPlan: Sendable {
    /// `applied`, or `no-op: <why>`.
    public var result: String
    /// Facts to store (an operator's rejection or reversal).
    public var facts: [Fact] = []
    /// Referrals to decide with them.
    public var referrals: [String] = []
    public init(result: String, facts: [Fact] = [], referrals: [String] = []) {
        self.result = result
        self.facts = facts
        self.referrals = referrals
    }
}

/// A valid event with the exact bytes it arrived as, which the inbox keeps.
public struct ReceivedEvent: Sendable {
    public var event: InboundEvent
    public var body: [UInt8]

    public init(event: InboundEvent, body: [UInt8]) {
        self.event = event
        self.body = body
    }
}

/// What every decision of one transaction shares.
public struct DecisionContext: Sendable {
    /// This instance's file: asks and code issuance. Leads are bound to the versions the
    /// database knows, by their time (`BindingStore.bindLeads`), not to these.
    public var programs: ProgramBook
    public var policy: LifecyclePolicy
    public var now: Instant
    /// How long rows enqueued for the committing worker stay out of other relays' reach.
    /// Publishing them takes milliseconds; after a crash they wait this long for a relay.
    public var publishLeaseSeconds = 10
    /// Recorded effects already read, shared by the process's pipelines; nil reads them all.
    public var effects: EffectCache?
    /// Program versions already read (`BindingStore.loadBindings`).
    public var programVersions: ProgramVersionCache

    public init(
        programs: ProgramBook, policy: LifecyclePolicy, now: Instant,
        effects: EffectCache? = nil, programVersions: ProgramVersionCache = ProgramVersionCache()
    ) {
        self.programs = programs
        self.policy = policy
        self.now = now
        self.effects = effects
        self.programVersions = programVersions
    }
}

/// What a batch changed, for logs and metrics.
public struct BatchOutcome: Sendable {
    public var fresh = 0
    public var duplicates = 0
    /// Indexes (into the batch) of the events seen for the first time; the rest were duplicates.
    public var freshIndexes: [Int] = []
    public var published: [OutgoingEvent] = []
    /// The outbox rows of `published`, committed and leased to this worker, for it to publish.
    public var outbox: [OutboxRow] = []
    public var mismatches: [Effect] = []
    public var rewards: [RewardChange] = []
    /// Effects recorded for referrals the effect cache holds: the worker adds them to the
    /// cache once the transaction committed (`EffectCache.appendCommitted`).
    public var recorded: [EffectCache.Recorded] = []
    /// The batch's leads that have a referral once it committed (for the unattributed-lead metric).
    public var boundLeads: Set<String> = []
    /// The batch's new leads whose code is blocked: unattributed, reason `code_blocked`.
    public var blockedLeads: Set<String> = []
    /// The program of each ask a budget held for the first time.
    public var heldAsks: [String] = []
}

/// A reward effect recorded in a transaction, with the program it belongs to, for metrics.
/// (Reversals and failures do not carry the program; their referral's binding does.)
public enum RewardChange: Sendable, Equatable {
    case issued(program: String, amountMinor: Int64, currency: String)
    case reversed(program: String, amountMinor: Int64, currency: String)
    case failed(program: String)
}

/// Timers leased to this worker: referrals and accounts whose decision is due.
public struct ClaimedTimers: Sendable {
    public var referrals: [String]
    public var accounts: [String]
    public var count: Int { max(referrals.count, accounts.count) }
}

/// What firing timers committed: outbox rows leased to this worker, reward changes for
/// metrics, and effects for the worker's cache.
public struct FiredTimers: Sendable {
    public var outbox: [OutboxRow]
    public var rewards: [RewardChange]
    public var recorded: [EffectCache.Recorded]
    /// The program of each ask a budget held for the first time.
    public var heldAsks: [String] = []
}
