import Foundation
import Postgres
import ReferralCore

/// The bodies of the decision transactions (`DecisionStore`): each function runs inside the
/// caller's transaction, takes its locks in the order written at `decide`, and returns what it
/// enqueued or recorded. The SQL is `Store`'s; these functions only sequence it around the core's
/// decisions.
enum Decisions {
    /// `published` are outbox rows the worker published since its last commit: deleting them
    /// rides in this transaction instead of costing a commit of its own.
    static func batch(
        _ c: isolated PostgresConnection, events: [ReceivedEvent], published: [Int64] = [],
        context: DecisionContext
    ) throws -> BatchOutcome {
        try OutboxStore.removePublished(c, seqs: published)
        let freshIndexes = try InboxStore.recordInbox(c, events.map(inboxEntry))
        var outcome = BatchOutcome(
            fresh: freshIndexes.count, duplicates: events.count - freshIndexes.count,
            freshIndexes: freshIndexes)
        let fresh = freshIndexes.map { events[$0].event }
        let askFacts = fresh.compactMap(AskFact.from)
        try AskStore.insertAskFacts(c, askFacts)
        let facts = fresh.flatMap(\.lifecycleFacts)
        if !facts.isEmpty {
            outcome.published = try lifecycle(
                c, facts: facts, channels: InboundEvent.leadChannels(fresh), context: context,
                mismatches: &outcome.mismatches,
                rewards: &outcome.rewards, recorded: &outcome.recorded,
                boundLeads: &outcome.boundLeads, blockedLeads: &outcome.blockedLeads)
        }
        // Asks after the lifecycle: a first activation's code, issued just above, is what the
        // account's first ask shares.
        outcome.published += try decideAsks(
            c, accounts: askFacts.map(\.accountId), context: context, heldAsks: &outcome.heldAsks)
        // Right to erasure: what this batch stored about an erased customer (a late lead after
        // its order, a rejection's reason, a ticket's extra members) is scrubbed before it commits.
        try ErasureStore.scrubErased(
            c, accounts: facts.compactMap(\.accountId) + askFacts.map(\.accountId),
            leads: facts.compactMap(\.leadId), rewards: facts.compactMap(\.rewardId))
        outcome.outbox = try OutboxStore.enqueue(c, outcome.published, leaseSeconds: context.publishLeaseSeconds)
        return outcome
    }

    /// Stores the batch's lifecycle facts and decides the referrals they touch.
    static func lifecycle(
        _ c: isolated PostgresConnection, facts: [Fact], channels: [Fact: LeadChannel],
        context: DecisionContext,
        mismatches: inout [Effect], rewards: inout [RewardChange],
        recorded: inout [EffectCache.Recorded], boundLeads: inout Set<String>,
        blockedLeads: inout Set<String>
    ) throws -> [OutgoingEvent] {
        let leads = Array(Set(facts.compactMap(\.leadId)))
        let accounts = Array(Set(facts.compactMap(\.accountId)))
        let rewardIds = Array(Set(facts.compactMap(\.rewardId)))
        let codes = Array(
            Set(facts.compactMap { if case .leadCreated(_, _, let code?, _, _, _) = $0 { code } else { nil } }))
        try FactStore.lockFactKeys(
            c, leads: leads, accounts: accounts, referrerKeys: Lifecycle.referrerLockKeys(facts),
            codes: codes, rewards: rewardIds)
        try FactStore.insertFacts(c, facts, channels: channels)

        // Leads carrying a known code become referrals, bound to the program version in force at
        // the lead's time.
        // Which leads are bound is read whenever the batch has a lead (a version without a code
        // of a lead bound before is attributed: the unattributed-lead metric reads it).
        if facts.contains(where: { if case .leadCreated = $0 { true } else { false } }) {
            boundLeads = try BindingStore.boundLeads(c, leads)
        }
        if !codes.isEmpty {
            // A blocked code (`referrald code block`) binds no new lead: no referral, no offer.
            let blocked = try OperatorStore.blockedCodes(c, codes)
            let owners = try CodeStore.codeOwners(c, codes: codes).filter { !blocked.contains($0.key) }
            boundLeads.formUnion(
                try BindingStore.bindLeads(c, Lifecycle.leadsToBind(facts: facts, codes: owners, bound: boundLeads)))
            for case .leadCreated(let lead, _, let code?, _, _, _) in facts
            where blocked.contains(code) && !boundLeads.contains(lead) {
                blockedLeads.insert(lead)
            }
        }
        try BindingStore.refreshFriendAccounts(c, leads: leads)
        // An erasure strips household and contact from every lead the account ordered, also one
        // whose friend is another account (an earlier order): those leads' standings lose keys
        // that may have ranked them first for a friend. Scrubbed before deciding, and their
        // referrals decided with the batch, or their stale claim would reject a later lead of the
        // same household that the facts no longer rank behind them, a rejection that stands.
        let erased = facts.compactMap { if case .customerErased(let a, _) = $0 { a } else { nil } }
        var erasedLeads: [String] = []
        if !erased.isEmpty {
            try ErasureStore.scrubRows(c, erased: erased)
            erasedLeads = try ErasureStore.erasedKeys(c, erased).leads
        }
        let touched = try BindingStore.referralsTouched(
            c, leads: leads + erasedLeads,
            accounts: Array(Set(facts.compactMap(\.friendAccountTouched))),
            rewards: rewardIds)
        // Activated accounts are decided even without referrals: their first activation issues a code.
        let activated = facts.compactMap { if case .serviceActivated(let a, _, _, _, _) = $0 { a } else { nil } }
        return try decide(
            c, touched: touched, referrerFacts: facts, extraAccounts: activated, context: context,
            mismatches: &mismatches, rewards: &rewards, recorded: &recorded)
    }

    /// Decides the asks of these accounts, one account at a time, under per-account locks.
    /// Returns the events to publish; the caller enqueues them.
    /// `heldAsks`: the program of each ask a budget held for the first time.
    static func decideAsks(
        _ c: isolated PostgresConnection, accounts: [String], context: DecisionContext,
        heldAsks: inout [String]
    ) throws -> [OutgoingEvent] {
        let accounts = Array(Set(accounts)).sorted()
        if accounts.isEmpty { return [] }
        try AskStore.lockAccounts(c, accounts)
        let policy = AskPolicy()
        let facts = try AskStore.loadRelevantAskFacts(
            c, accounts: accounts, now: context.now, freshness: policy.freshness)
        let sent = try AskStore.sentAsks(c, accounts: accounts)
        let codes = try CodeStore.codes(c, accounts: accounts)
        let programOf = Dictionary(
            accounts.map { account in
                (account, context.programs.program(forSegment: ReferralAsks.segment(of: facts[account] ?? []).rawValue))
            }, uniquingKeysWith: { a, _ in a })
        // The month's commitment, read only for programs with a budget, once per decision.
        let budgeted = Dictionary(
            programOf.values.compactMap { $0 }.filter { $0.budget != nil }.map { ($0.id, $0) },
            uniquingKeysWith: { a, _ in a })
        let committed = try BudgetStore.committed(
            c, programs: budgeted.values.map { ($0.id, $0.currency) },
            month: ProgramBudget.month(of: context.now))
        let holding = Set(
            budgeted.values.filter { p in
                p.budget.map { ProgramBudget.holdsAsks(committedMinor: committed[p.id] ?? 0, budget: $0) } ?? false
            }.map(\.id))
        var due: [(ask: PlannedAsk, programId: String)] = []
        var held:
            [(key: String, accountId: String, programId: String, moment: String, dueAt: Instant, expiresAt: Instant)] =
                []
        var timers: [(account: String, due: Instant?)] = []
        for account in accounts {
            let program = programOf[account] ?? nil
            let hold = program.flatMap {
                holding.contains($0.id) ? ProgramBudget.hold(accountId: account, now: context.now) : nil
            }
            let decision = ReferralAsks.decide(
                AskInput(
                    accountId: account, facts: facts[account] ?? [], program: program,
                    code: codes[account].flatMap(ReferralCode.parse),
                    sent: sent[account] ?? [], now: context.now, policy: policy, budgetHold: hold))
            if let ask = decision.send, let program { due.append((ask, program.id)) }
            if let program {
                for a in decision.considered {
                    guard case .waiting(.budget, _) = a.status else { continue }
                    held.append((a.key, account, program.id, a.moment.rawValue, a.dueAt, a.expiresAt))
                }
            }
            timers.append((account, decision.nextWakeup))
        }
        // The key is unique: if another instance recorded an ask first, it is not published.
        let recorded = try AskStore.recordAsks(c, due.map { ($0.ask.record, $0.ask.accountId, $0.programId) })
        heldAsks += try BudgetStore.recordHeldAsks(c, held, now: context.now)
        try AskStore.setAccountTimers(c, timers)
        return due.filter { recorded.contains($0.ask.key) }.map { $0.ask.event(id: newEventId()) }
    }

    /// `referrald enroll`: existing customers become customers of the program — an activation
    /// fact (so the lifecycle issues their code), and an `enrolled` ask fact carrying their
    /// spread first-ask time. Rows of accounts enrolled before are skipped, so a re-run of the
    /// same file changes nothing. Returns the accounts enrolled now.
    static func enroll(
        _ c: isolated PostgresConnection, rows: [EnrolmentRow], start: Instant, span: Span,
        context: DecisionContext
    ) throws -> (enrolled: Int, published: [OutgoingEvent]) {
        try AskStore.lockAccounts(c, rows.map(\.accountId))
        let already = try AskStore.enrolledAccounts(c, rows.map(\.accountId))
        let fresh = rows.filter { !already.contains($0.accountId) }
        if fresh.isEmpty { return (0, []) }
        try FactStore.insertFacts(c, fresh.map(\.fact))
        try AskStore.insertAskFacts(c, fresh.flatMap { $0.askFacts(start: start, span: span) })
        var mismatches: [Effect] = []
        var rewards: [RewardChange] = []
        // `enroll` runs without the worker's effect cache: nothing to add after its commit.
        var recorded: [EffectCache.Recorded] = []
        let accounts = fresh.map(\.accountId)
        var published = try decide(
            c, touched: [], extraAccounts: accounts, context: context,
            mismatches: &mismatches, rewards: &rewards, recorded: &recorded)
        // `enroll` is a command, not the daemon: there are no metrics to count held asks in.
        var held: [String] = []
        published += try decideAsks(c, accounts: accounts, context: context, heldAsks: &held)
        // Not leased: `enroll` does not publish, the daemon's relay does.
        try OutboxStore.enqueue(c, published)
        return (fresh.count, published)
    }

    /// Due timers, leased in a short transaction of their own (see `TimerStore.claimDueTimers`).
    static func claimTimers(_ c: isolated PostgresConnection, context: DecisionContext, limit: Int) throws
        -> ClaimedTimers
    {
        ClaimedTimers(
            referrals: try TimerStore.claimDueTimers(c, .referrals, now: context.now, limit: limit),
            accounts: try TimerStore.claimDueTimers(c, .accounts, now: context.now, limit: limit))
    }

    /// Claimed timers: re-decide their referrals and accounts at `now`, which also sets each
    /// timer's next due time (or removes it). Time passing changes no standing, so a timer
    /// re-decides its own referral and nothing else.
    static func timers(_ c: isolated PostgresConnection, claimed: ClaimedTimers, context: DecisionContext) throws
        -> FiredTimers
    {
        var mismatches: [Effect] = []
        var rewards: [RewardChange] = []
        var recorded: [EffectCache.Recorded] = []
        var published: [OutgoingEvent] = []
        if !claimed.referrals.isEmpty {
            // Their leads first, as batches take them (see `FactStore.lockFactKeys`).
            try FactStore.lockFactKeys(c, leads: [], accounts: [], referrals: claimed.referrals)
            published = try decide(
                c, touched: [], due: claimed.referrals, extraAccounts: [], context: context,
                mismatches: &mismatches, rewards: &rewards, recorded: &recorded)
        }
        var held: [String] = []
        published += try decideAsks(c, accounts: claimed.accounts, context: context, heldAsks: &held)
        return FiredTimers(
            outbox: try OutboxStore.enqueue(c, published, leaseSeconds: context.publishLeaseSeconds),
            rewards: rewards, recorded: recorded, heldAsks: held)
    }

    /// Decides referrals incrementally. `touched` get their standings recomputed from their
    /// facts; the boundaries those changes moved (and `referrerFacts` about referrers' own
    /// accounts) add the referrals to re-decide with them; `due` are re-decided as they stand.
    /// Every referral decided is locked, its effects recorded, and the events to publish
    /// returned; the caller enqueues them.
    ///
    /// Lock order, the same on every path so that instances queue instead of deadlocking: the
    /// fact keys (`lockFactKeys`, by the caller), then the friend keys and rankings that changed
    /// standings move (`lockCompetitionKeys`), then the rows of the referrals decided, by id.
    static func decide(
        _ c: isolated PostgresConnection, touched: [String], due: [String] = [], referrerFacts: [Fact] = [],
        extraAccounts: [String], context: DecisionContext,
        mismatches: inout [Effect], rewards: inout [RewardChange],
        recorded cacheAdditions: inout [EffectCache.Recorded]
    ) throws -> [OutgoingEvent] {
        var bound = Dictionary(
            try BindingStore.loadBindings(c, touched, cache: context.programVersions).map {
                ($0.binding.referralId, $0)
            },
            uniquingKeysWith: { a, _ in a })
        var facts = try FactStore.loadFacts(c, referrals: Array(bound.values), accounts: extraAccounts)
        var targets = Set(touched).union(due)
        var standings: [String: ReferralStanding] = [:]
        if !touched.isEmpty || !referrerFacts.isEmpty {
            let old = try StandingStore.loadStandings(c, touched)
            let fresh = Lifecycle.standings(facts: facts, referrals: bound.values.map(\.binding))
            for s in fresh { standings[s.referralId] = s }
            let changes = fresh.map { (old: old[$0.referralId], new: $0) }.filter { $0.old != $0.new }
            // The limits are read only when a ranking can have moved.
            let limits = changes.isEmpty ? (leads: [], caps: []) : try StandingStore.rankingLimits(c)
            let queries =
                Lifecycle.boundaries(changes: changes, leadLimits: limits.leads, capLimits: limits.caps)
                + Lifecycle.referrerBoundaries(referrerFacts)
            try StandingStore.lockCompetitionKeys(c, changes)
            try StandingStore.saveStandings(c, changes)
            if !queries.isEmpty { targets.formUnion(try StandingStore.resolveBoundaries(c, queries)) }
        }
        try BindingStore.lockReferrals(c, Array(targets))
        let more = targets.filter { bound[$0] == nil }
        if !more.isEmpty {
            let extra = try BindingStore.loadBindings(c, Array(more), cache: context.programVersions)
            for b in extra { bound[b.binding.referralId] = b }
            facts += try FactStore.loadFacts(c, referrals: extra, accounts: [])
        }
        let deciding = targets.sorted().compactMap { bound[$0] }
        standings.merge(
            try StandingStore.loadStandings(c, deciding.map(\.binding.referralId).filter { standings[$0] == nil }),
            uniquingKeysWith: { fresh, _ in fresh })
        let competition = try StandingStore.competition(
            c, deciding.compactMap { b in standings[b.binding.referralId].map { (b.binding, $0) } },
            now: context.now)
        let accounts = Array(Set(deciding.flatMap(\.accounts) + extraAccounts))
        let recorded = try EffectStore.loadEffects(
            c, referrals: deciding.map(\.binding.referralId), accounts: accounts,
            cache: context.effects)
        let decision = Lifecycle.decide(
            LifecycleInput(
                facts: facts, referrals: deciding.map(\.binding), recorded: recorded, now: context.now,
                policy: context.policy, explain: false, competition: competition,
                pausedPrograms: try OperatorStore.pausedPrograms(c)))

        var events: [OutgoingEvent] = []
        events += try issueCodes(c, decision.codeRequests, context: context)
        let (effects, newlyRecorded) = try EffectStore.recordEffects(
            c, decision.effects, at: context.now, cache: context.effects)
        cacheAdditions += newlyRecorded
        let programOfReward = Dictionary(
            deciding.flatMap { b in b.rewardIds.map { ($0, b.binding.program.id) } },
            uniquingKeysWith: { first, _ in first })
        let programs = Dictionary(
            deciding.map { ($0.binding.referralId, $0.binding.program) }, uniquingKeysWith: { a, _ in a })
        for effect in effects {
            if let event = outgoing(effect, context: context, programs: programs) { events.append(event) }
            if case .rewardMismatch = effect { mismatches.append(effect) }
            if let change = rewardChange(effect, programOfReward: programOfReward) { rewards.append(change) }
        }
        // Follow-ups on referrals stalled in a stage, one per stall.
        let ids = deciding.map(\.binding.referralId)
        let followups = Followups.decide(
            Followups.entries(views: decision.referrals, referrals: deciding.map(\.binding), facts: facts),
            sent: try AskStore.followupKeys(c, referrals: ids), now: context.now)
        for due in try AskStore.recordFollowups(c, followups.due) { events.append(due.event(id: newEventId())) }
        try BindingStore.saveViews(c, decision.referrals)
        try TimerStore.setTimers(
            c,
            ids.map { id in
                (id, [decision.wakeups[id], followups.wakeups[id]].compactMap { $0 }.min())
            })
        // Last of the decision's writes: the budget counters are the rows most shared between
        // sessions, so they are locked for the shortest time.
        let newlyIssued = Set(effects.compactMap { if case .rewardIssued(let g) = $0 { g.rewardId } else { nil } })
        try BudgetStore.recordCommitments(
            c, views: decision.referrals, newlyIssued: newlyIssued,
            reversals: effects.compactMap {
                guard case .rewardReversed(let r) = $0, let program = programOfReward[r.rewardId] else { return nil }
                return (program, r.currency, r.amountMinor)
            }, now: context.now)
        return events
    }

    /// Draws a code for each newly activated account and records its `codeIssued` effect, read
    /// back like any other effect by the account's next decisions. A drawn code can collide with
    /// another account's (about 1 in 10^12 per draw while the table is small): the unique
    /// constraint of `referral_codes` catches it and only those accounts draw again. The draw is
    /// the worker's, not the core's: the core asks (`CodeRequest`) because a random code is not
    /// a function of the facts.
    static func issueCodes(_ c: isolated PostgresConnection, _ requests: [CodeRequest], context: DecisionContext) throws
        -> [OutgoingEvent]
    {
        var pending = requests
        var rng = SystemRandomNumberGenerator()
        var events: [OutgoingEvent] = []
        for _ in 0..<8 where !pending.isEmpty {
            var rows: [(account: String, code: String, program: String, issuedAt: Instant)] = []
            var drawn: [String: (ReferralCode, Program)] = [:]
            for r in pending {
                guard let program = context.programs.program(forSegment: r.segment.rawValue) else { continue }
                let code = CodeIssuance.draw(using: &rng)
                drawn[r.accountId] = (code, program)
                rows.append((r.accountId, code.canonical, program.id, r.activatedAt))
            }
            let collided = try CodeStore.insertCodes(c, rows)
            var issued: [Effect] = []
            for r in pending where !collided.contains(r.accountId) {
                guard let (code, program) = drawn[r.accountId] else { continue }
                issued.append(.codeIssued(accountId: r.accountId, code: code.canonical, programId: program.id))
                events.append(
                    .codeIssued(
                        id: newEventId(), time: context.now, accountId: r.accountId, code: code,
                        shareURL: program.shareURL(code: code.canonical), programId: program.id))
            }
            _ = try EffectStore.recordEffects(c, issued, at: context.now)
            pending = pending.filter { collided.contains($0.accountId) }
        }
        return events
    }

    /// The metric a newly recorded effect counts for. A retry re-issues a reward already
    /// counted (same reward_id, same money), so it is not counted again.
    static func rewardChange(_ effect: Effect, programOfReward: [String: String]) -> RewardChange? {
        switch effect {
        case .rewardIssued(let g):
            return .issued(program: g.programId, amountMinor: g.amountMinor, currency: g.currency)
        case .rewardReversed(let r):
            return .reversed(
                program: programOfReward[r.rewardId] ?? "unknown", amountMinor: r.amountMinor, currency: r.currency)
        case .rewardFailed(let rewardId, _, _, _):
            return .failed(program: programOfReward[rewardId] ?? "unknown")
        default:
            return nil
        }
    }

    /// The published event of an effect; nil for effects that only change the ledger.
    /// `programs`: the program each decided referral is bound to (the offer names its `by_plan`).
    static func outgoing(_ effect: Effect, context: DecisionContext, programs: [String: Program] = [:])
        -> OutgoingEvent?
    {
        switch effect {
        case .friendOfferGranted(let referral, let lead, let code, let priority, let kind, let amount, let currency):
            guard let parsed = ReferralCode.parse(code) else { return nil }
            return .friendOfferGranted(
                id: newEventId(), time: context.now, referralId: referral, leadId: lead,
                referralCode: parsed, priorityInstall: priority, friendRewardKind: kind,
                friendRewardAmountMinor: amount, currency: currency,
                friendRewardByPlan: programs[referral]?.friendReward.byPlan ?? [:])
        case .statusChanged(let s):
            return .statusChanged(
                id: newEventId(), time: context.now, referralId: s.referralId,
                referrerAccountId: s.referrerAccountId, leadId: s.leadId,
                friendAccountId: s.friendAccountId, from: s.from, to: s.to, reason: s.reason)
        case .rewardIssued(let g), .rewardRetried(let g, _):
            // A retry re-issues the same reward_id: billing's idempotency key makes it safe.
            return .rewardIssued(
                id: newEventId(), time: context.now, rewardId: g.rewardId, referralId: g.referralId,
                accountId: g.accountId, beneficiary: g.beneficiary, kind: g.kind,
                amountMinor: g.amountMinor, currency: g.currency, programId: g.programId)
        case .rewardReversed(let r):
            return .rewardReversed(
                id: newEventId(), time: context.now, rewardId: r.rewardId, referralId: r.referralId,
                accountId: r.accountId, amountMinor: r.amountMinor, currency: r.currency, reason: r.reason)
        case .codeIssued, .rewardApplied, .rewardMismatch, .rewardFailed:
            return nil
        }
    }

    static func newEventId() -> String { UUID().uuidString.lowercased() }

    /// The keys the fact queries look an event up by, and the time the fact happened.
    static func inboxEntry(_ received: ReceivedEvent) -> InboxEntry {
        let e = received.event
        let f = e.lifecycleFact
        return InboxEntry(
            source: e.source, eventId: e.id, type: e.type.rawValue, accountId: e.accountId(fact: f),
            leadId: f?.leadId, rewardId: f?.rewardId, factTime: f?.at ?? e.time, body: received.body)
    }

    /// An operator action's facts stored and its referrals decided, in the worker's lock order;
    /// the action recorded with its result. The events go to the outbox for the daemons' relay.
    static func operatorAction(
        _ c: isolated PostgresConnection, _ action: OperatorAction, plan: OperatorPlan,
        context: DecisionContext
    ) throws -> [OutgoingEvent] {
        var published: [OutgoingEvent] = []
        if !plan.referrals.isEmpty {
            try FactStore.lockFactKeys(c, leads: [], accounts: [], referrals: plan.referrals)
            try FactStore.insertFacts(c, plan.facts)
            var mismatches: [Effect] = []
            var rewards: [RewardChange] = []
            var recorded: [EffectCache.Recorded] = []
            published = try decide(
                c, touched: plan.referrals, extraAccounts: [], context: context,
                mismatches: &mismatches, rewards: &rewards, recorded: &recorded)
            try OutboxStore.enqueue(c, published)
        }
        try OperatorStore.recordOperatorAction(c, action)
        return published
    }

    /// One chunk of `reconcile`: standings compared with the facts, then the worker's decision
    /// (which saves the corrected standings, re-decides the boundaries they move and records
    /// whatever is missing). The events go to the outbox for the daemons' relay.
    static func reconcile(
        _ c: isolated PostgresConnection, referrals ids: [String],
        context: DecisionContext
    ) throws -> (standingsFixed: [String], published: [OutgoingEvent]) {
        try FactStore.lockFactKeys(c, leads: [], accounts: [], referrals: ids)
        let bound = try BindingStore.loadBindings(c, ids)
        let stored = try StandingStore.loadStandings(c, ids)
        let derived = Lifecycle.standings(
            facts: try FactStore.loadFacts(c, referrals: bound, accounts: []),
            referrals: bound.map(\.binding))
        let fixed = derived.filter { stored[$0.referralId] != $0 }.map(\.referralId).sorted()
        var mismatches: [Effect] = []
        var rewards: [RewardChange] = []
        // `reconcile` runs without the worker's effect cache: nothing to add after its commit.
        var recorded: [EffectCache.Recorded] = []
        let published = try decide(
            c, touched: ids, extraAccounts: [], context: context,
            mismatches: &mismatches, rewards: &rewards, recorded: &recorded)
        try OutboxStore.enqueue(c, published)
        return (fixed, published)
    }
}
