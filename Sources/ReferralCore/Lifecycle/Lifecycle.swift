/// Retry rules for rewards billing rejected.
public struct LifecyclePolicy: Hashable, Sendable {
    /// Re-issues after billing rejects a credit; the rejection after the last one leaves the
    /// reward `failed` (reported). Default 3.
    public var maxRetries: Int
    /// Wait after the first rejection; doubled after each further one. Default 1h.
    public var retryBackoff: Span
    /// Ceiling of the doubling, so a long-failing reward is still retried within a day. Default 1d.
    public var maxRetryBackoff: Span

    public init(maxRetries: Int = 3, retryBackoff: Span = .hours(1), maxRetryBackoff: Span = .days(1)) {
        self.maxRetries = maxRetries
        self.retryBackoff = retryBackoff
        self.maxRetryBackoff = maxRetryBackoff
    }

    /// Wait before the retry that follows billing's `failure`-th rejection (1-based).
    public func backoff(afterFailure failure: Int) -> Span {
        var wait = retryBackoff
        for _ in 1..<max(failure, 1) where wait < maxRetryBackoff { wait = wait * 2 }
        return min(wait, maxRetryBackoff)
    }
}

/// Everything a decision needs about one neighbourhood: the referrals a batch touches and every
/// referral they compete with. For correct competition rules the worker must include, for each
/// referral it loads, the other referrals sharing its code (same UTC day), its friend (account or
/// household) and its referrer (same year), and all facts about the leads and accounts involved.
public struct LifecycleInput: Sendable {
    /// Every stored fact of the neighbourhood, in any order, duplicates allowed.
    public var facts: [Fact]
    public var referrals: [ReferralBinding]
    /// Every effect already recorded for the neighbourhood, in the order recorded.
    public var recorded: [Effect]
    public var now: Instant
    public var policy: LifecyclePolicy
    /// Build explanation texts and inputs (`ReferralView.explanation`, `.inputs`). Off on the hot
    /// path; the stage, reason and rule are always set.
    public var explain: Bool
    /// The competition ranks of `referrals`, read from the incremental state (the worker). When
    /// nil, the oracle: they are derived from the standings of `referrals` themselves, which
    /// must then be the whole neighbourhood of every referral judged.
    public var competition: Competition?
    /// Programs whose rewards an operator paused (`referrald rewards pause`); `*` pauses every
    /// program. A reward that falls due meanwhile is held, not issued: its referral waits at
    /// `qualified` and is issued, under the same reward id, when re-decided after the resume.
    public var pausedPrograms: Set<String>

    public init(
        facts: [Fact], referrals: [ReferralBinding], recorded: [Effect], now: Instant,
        policy: LifecyclePolicy = .init(), explain: Bool = true, competition: Competition? = nil,
        pausedPrograms: Set<String> = []
    ) {
        self.facts = facts
        self.referrals = referrals
        self.recorded = recorded
        self.now = now
        self.policy = policy
        self.explain = explain
        self.competition = competition
        self.pausedPrograms = pausedPrograms
    }

    func paused(_ programId: String) -> Bool { pausedPrograms.contains("*") || pausedPrograms.contains(programId) }
}

/// An activated account without a code: the worker draws a code, publishes
/// `referral.code.issued` with the program of `segment`, and records `Effect.codeIssued`.
public struct CodeRequest: Hashable, Sendable {
    public var accountId: String
    /// The activation's segment; `consumer` when provisioning sent none.
    public var segment: Segment
    public var activatedAt: Instant
}

public enum RewardStatus: String, Hashable, Sendable, Codable {
    case pending, issued, applied, failed, reversed
}

public struct RewardView: Hashable, Sendable {
    public var rewardId: String
    public var beneficiary: Beneficiary
    public var accountId: String
    public var amountMinor: Int64
    public var currency: String
    public var status: RewardStatus
    /// Why it is not (or no longer) paid, when that is the case.
    public var note: String?
}

/// A referral's derived state with the rule that decided it: the answer to "why didn't I get my
/// reward?". `inputs` are the facts and limits the rule looked at; personal data (household,
/// contact) is never included, so the view can be shown to support after an erasure.
public struct ReferralView: Hashable, Sendable {
    public var referralId: String
    public var leadId: String
    public var referrerAccountId: String
    public var friendAccountId: String?
    public var programId: String
    public var programVersion: Int
    public var stage: Stage
    public var reason: String?
    /// The program field or contract rule that decided the stage (`qualify.hold`, `fraud.reject_same_household`...).
    public var rule: String
    public var explanation: String
    public var inputs: [Input]
    public var qualifiedAt: Instant?
    public var rewards: [RewardView]
    /// What its rewards commit of the program's monthly budget (`ProgramBudget`).
    public var commitments: [Commitment]

    public struct Input: Hashable, Sendable {
        public var name: String
        public var value: String
    }
}

public struct Decision: Sendable {
    /// New effects, in a deterministic order (by referral id, then offer, status, rewards).
    public var effects: [Effect]
    public var codeRequests: [CodeRequest]
    /// Every referral of the input, by referral id.
    public var referrals: [ReferralView]
    /// The next instant at which time passing alone can change the outcome (hold end, window end,
    /// arrears deadline, retry); strictly after `now`. The worker keeps it as a durable timer.
    public var nextWakeup: Instant?
    /// The same, per referral: each referral's durable timer.
    public var wakeups: [String: Instant]
}

/// The lifecycle rules as one pure function. See `Lifecycle/Lifecycle.docc/LifecycleRules.md` for the rules and the
/// decisions taken on the traps; the short version:
///
/// * The outcome (stage, qualification time, which rewards should stand) is derived from the
///   facts and their own times only — never from arrival order or from what was decided before.
/// * Recorded effects are then reconciled against it: a reward that should stand and was not
///   issued is issued; an issued reward that must not stand is reversed (once), whatever made it
///   so (clawback, or a late fact showing the referral never qualified). Reversals are final.
public enum Lifecycle {
    public static func decide(_ input: LifecycleInput) -> Decision {
        var d = Decider(input)
        return d.run()
    }

    /// Codes known from recorded `codeIssued` effects: canonical code → (account, program id).
    public static func codes(in recorded: [Effect]) -> [String: (accountId: String, programId: String)] {
        var codes: [String: (accountId: String, programId: String)] = [:]
        for case .codeIssued(let account, let code, let program) in recorded { codes[code] = (account, program) }
        return codes
    }

    /// Leads whose code belongs to a known account and which have no referral yet: the store
    /// gives each an id and binds it to the version of `programId` in force at `at`
    /// (`ProgramVersions.inForce`), the earliest time the lead's facts here give, so that the
    /// choice does not depend on the order in which copies of the lead arrived. A lead is bound even
    /// when its referrer had cancelled before it: the rules then reject it (`referrer_cancelled`),
    /// so that whether the cancellation arrived before or after the lead makes no difference.
    public static func leadsToBind(
        facts: [Fact], codes: [String: (accountId: String, programId: String)],
        bound: Set<String>
    ) -> [LeadToBind] {
        var out: [String: LeadToBind] = [:]
        for case .leadCreated(let lead, let at, let code?, _, _, _) in facts where !bound.contains(lead) {
            guard let owner = codes[code] else { continue }
            if let first = out[lead] {
                out[lead]?.at = min(first.at, at)
            } else {
                out[lead] = LeadToBind(
                    leadId: lead, code: code, referrerAccountId: owner.accountId, programId: owner.programId, at: at)
            }
        }
        return out.values.sorted { $0.leadId < $1.leadId }
    }
}

/// A lead to become a referral (`Lifecycle.leadsToBind`).
public struct LeadToBind: Hashable, Sendable {
    public var leadId: String
    public var code: String
    public var referrerAccountId: String
    public var programId: String
    /// The lead's time: which version of the program binds it.
    public var at: Instant
}

// MARK: - Facts, indexed

/// A lead's facts. When provisioning sent conflicting versions of one lead, the earliest (then
/// smallest) wins, so the choice does not depend on which arrived first.
struct LeadInfo {
    var at: Instant
    var code: String?
    var household: String?
    var contact: String?

    func precedes(_ o: LeadInfo) -> Bool {
        (at, code ?? "", household ?? "", contact ?? "") < (o.at, o.code ?? "", o.household ?? "", o.contact ?? "")
    }
}

/// One account's facts, reduced to what the rules use. Firsts are minima by fact time, so a
/// duplicate or a late copy never moves them.
struct AccountInfo {
    var activatedAt: Instant?
    var segment: Segment?
    var households: Set<String> = []
    var contacts: Set<String> = []
    var installedAt: Instant?
    var cancelledAt: Instant?
    var firstPaidAt: Instant?
    var overdue: [String: Instant] = [:]
    var paid: [String: Instant] = [:]
    var erased = false
    /// The plans named at the earliest instant any activation named one.
    var plansAt: Instant?
    var plans: Set<String> = []

    /// The plans of the first activation (empty when it named none): what `by_plan` reads.
    var firstPlans: Set<String?> {
        guard let first = activatedAt else { return [] }
        return plansAt == first ? Set(plans.map { Optional($0) }) : [nil]
    }
}

struct Index {
    var leads: [String: LeadInfo] = [:]
    var orders: [String: (accountId: String, at: Instant)] = [:]
    var accounts: [String: AccountInfo] = [:]
    var applied: [String: Set<Application>] = [:]
    var rejections: [String: Set<Rejection>] = [:]
    /// Leads whose referral an operator rejected; rewards an operator reversed.
    var operatorRejected: Set<String> = []
    var operatorReversed: Set<String> = []

    struct Application: Hashable {
        var accountId: String
        var amountMinor: Int64
        var currency: String
    }
    struct Rejection: Hashable {
        var at: Instant
        var reason: String
    }

    init(_ facts: [Fact]) {
        for fact in facts {
            switch fact {
            case .leadCreated(let id, let at, let code, let hh, let contact, _):
                let info = LeadInfo(at: at, code: code, household: hh, contact: contact)
                if let old = leads[id], !info.precedes(old) { break }
                leads[id] = info
            case .orderPlaced(let lead, let account, let at):
                if let old = orders[lead], (old.at, old.accountId) <= (at, account) { break }
                orders[lead] = (account, at)
            case .installCompleted(let a, let at):
                accounts[a, default: .init()].installedAt = min(at, accounts[a]?.installedAt ?? at)
            case .serviceActivated(let a, let at, let hh, let contact, let segment):
                var info = accounts[a, default: .init()]
                if let first = info.activatedAt, first <= at {
                    if first == at, let s = segment, info.segment.map({ s.rawValue < $0.rawValue }) ?? true {
                        info.segment = s
                    }
                } else {
                    info.activatedAt = at
                    info.segment = segment
                }
                if let hh { info.households.insert(hh) }
                if let contact { info.contacts.insert(contact) }
                accounts[a] = info
            case .serviceCancelled(let a, let at):
                accounts[a, default: .init()].cancelledAt = min(at, accounts[a]?.cancelledAt ?? at)
            case .invoiceOverdue(let a, let invoice, let at):
                accounts[a, default: .init()].overdue[invoice] = min(at, accounts[a]?.overdue[invoice] ?? at)
            case .invoicePaid(let a, let invoice, let sequence, let at):
                accounts[a, default: .init()].paid[invoice] = min(at, accounts[a]?.paid[invoice] ?? at)
                if sequence == 1 { accounts[a, default: .init()].firstPaidAt = min(at, accounts[a]?.firstPaidAt ?? at) }
            case .creditApplied(let reward, let a, let amount, let currency, _):
                applied[reward, default: []].insert(.init(accountId: a, amountMinor: amount, currency: currency))
            case .creditRejected(let reward, let reason, let at):
                rejections[reward, default: []].insert(.init(at: at, reason: reason))
            case .customerErased(let a, _):
                accounts[a, default: .init()].erased = true
            case .planChosen(let a, let plan, let at):
                var info = accounts[a, default: .init()]
                if info.plansAt.map({ at < $0 }) ?? true {
                    info.plansAt = at
                    info.plans = []
                }
                if info.plansAt == at { info.plans.insert(plan) }
                accounts[a] = info
            case .operatorRejected(let lead, _):
                operatorRejected.insert(lead)
            case .operatorReversed(let reward, _):
                operatorReversed.insert(reward)
            }
        }
    }

    /// Personal data the rules may use. An erased account's household and contact are no longer
    /// used, even before the store has finished erasing them from its rows.
    func households(of account: String) -> Set<String> {
        guard let a = accounts[account], !a.erased else { return [] }
        return a.households
    }

    func contacts(of account: String) -> Set<String> {
        guard let a = accounts[account], !a.erased else { return [] }
        return a.contacts
    }

    func friendAccount(of lead: String) -> String? { orders[lead]?.accountId }

    /// The lead's own household/contact, unless the friend it turned into was erased.
    func leadPersonal(_ leadId: String) -> (household: String?, contact: String?) {
        guard let lead = leads[leadId] else { return (nil, nil) }
        if let a = friendAccount(of: leadId), accounts[a]?.erased == true { return (nil, nil) }
        return (lead.household, lead.contact)
    }

    func milestone(_ m: Milestone, of account: String?) -> Instant? {
        guard let account, let a = accounts[account] else { return nil }
        switch m {
        case .serviceActivated: return a.activatedAt
        case .firstInvoicePaid: return a.firstPaidAt
        }
    }
}

// MARK: - The decision

/// What the facts say about one referral, before looking at what was already published.
private enum Verdict {
    /// Still live; `wake` is when time alone would change it.
    case pending(stage: Stage, wake: Instant?)
    case rejected(reason: String)
    case lost(reason: String)
    case expired(reason: String)
    /// Qualified at `at`; the rewards that should stand and those that must not.
    case qualified(at: Instant, referrerCapped: Bool, clawedBack: Bool)
}

/// The explanation under construction. Text is only built when asked for: the worker's hot path
/// decides thousands of referrals a second and formats no sentences nobody reads.
private struct Why {
    let enabled: Bool
    var rule = ""
    var text = ""
    var inputs: [ReferralView.Input] = []

    mutating func add(_ name: String, _ value: @autoclosure () -> CustomStringConvertible?) {
        if enabled, let value = value() { inputs.append(.init(name: name, value: value.description)) }
    }
    mutating func say(_ rule: String, _ text: @autoclosure () -> String) {
        self.rule = rule
        if enabled { self.text = text() }
    }
    mutating func append(_ more: @autoclosure () -> String) {
        if enabled { text += more() }
    }
}

private struct Decider {
    let input: LifecycleInput
    let idx: Index
    let now: Instant
    /// Ranks in the code's day, claims of friend keys, and slots in the referrer's year.
    let competition: Competition

    var effects: [Effect] = []
    /// The wake-up of the referral being decided, then of each.
    var wake: Instant?
    var wakeups: [String: Instant] = [:]

    // What was recorded, by referral and by reward.
    var lastStatus: [String: (stage: Stage, reason: String?, count: Int)] = [:]
    var offered: Set<String> = []
    var issued: [String: RewardGrant] = [:]
    var retries: [String: Int] = [:]
    var reversed: Set<String> = []
    var recordedKeys: Set<Effect.Key> = []
    var codedAccounts: Set<String> = []

    init(_ input: LifecycleInput) {
        self.input = input
        self.idx = Index(input.facts)
        self.now = input.now
        for e in input.recorded {
            recordedKeys.insert(e.key)
            switch e {
            case .statusChanged(let s):
                lastStatus[s.referralId] = (s.to, s.reason, (lastStatus[s.referralId]?.count ?? 0) + 1)
            case .friendOfferGranted(let r, _, _, _, _, _, _): offered.insert(r)
            case .rewardIssued(let g): issued[g.rewardId] = g
            case .rewardRetried(let g, let n): retries[g.rewardId] = max(retries[g.rewardId] ?? 0, n)
            case .rewardReversed(let r): reversed.insert(r.rewardId)
            case .codeIssued(let a, _, _): codedAccounts.insert(a)
            case .rewardApplied, .rewardMismatch, .rewardFailed: break
            }
        }
        let idx = self.idx
        competition =
            input.competition
            ?? StandingTable(input.referrals.compactMap { idx.standing(of: $0) }).competition(for: input.referrals)
    }

    mutating func noteWake(_ t: Instant?) {
        guard let t, t > now else { return }
        wake = min(wake ?? t, t)
    }

    mutating func emit(_ e: Effect) {
        guard recordedKeys.insert(e.key).inserted else { return }
        effects.append(e)
    }

    mutating func run() -> Decision {
        var views: [ReferralView] = []
        for b in input.referrals.sorted(by: { $0.referralId < $1.referralId }) {
            wake = nil
            if let view = referral(b) { views.append(view) }
            if let w = wake { wakeups[b.referralId] = w }
        }
        var requests: [CodeRequest] = []
        for (account, info) in idx.accounts.sorted(by: { $0.key < $1.key }) where !codedAccounts.contains(account) {
            guard let at = info.activatedAt else { continue }
            requests.append(CodeRequest(accountId: account, segment: info.segment ?? .consumer, activatedAt: at))
        }
        return Decision(
            effects: effects, codeRequests: requests, referrals: views, nextWakeup: wakeups.values.min(),
            wakeups: wakeups)
    }

    // MARK: One referral

    mutating func referral(_ b: ReferralBinding) -> ReferralView? {
        guard let lead = idx.leads[b.leadId] else { return nil }
        let p = b.program
        let friend = idx.friendAccount(of: b.leadId)
        var why = Why(enabled: input.explain)
        why.add("lead_at", lead.at)
        why.add("program", "\(p.id) v\(b.programVersion)")
        if !p.referrerReward.byPlan.isEmpty || !p.friendReward.byPlan.isEmpty,
            let plans = friend.flatMap({ idx.accounts[$0] })?.firstPlans, !plans.isEmpty
        {
            why.add("friend_plan", plans.map { $0 ?? "none named" }.sorted().joined(separator: ", "))
        }
        var verdict = judge(b, lead: lead, friend: friend, why: &why)
        // An operator's rejection (`referrald referral reject`): rejected, reason `operator`,
        // whatever the rules say; rewards not issued never will be, issued ones are reversed. A
        // rule's own rejection keeps its reason. The command records no fact for a referral that
        // had already ended; one stored anyway applies, so the outcome never depends on whether
        // the referral looked ended when the fact arrived (an expired one can be revived).
        if idx.operatorRejected.contains(b.leadId) {
            if case .rejected = verdict {
            } else {
                verdict = .rejected(reason: "operator")
                why.say(
                    "operator",
                    "An operator rejected the referral (referrald referral reject); explain lists who, when and why.")
            }
        }
        // A published rejection is never revived: only erasure can remove the data behind it, and
        // the right to erasure must not turn a fraud rejection into a reward.
        if let last = lastStatus[b.referralId], last.stage == .rejected {
            if case .rejected = verdict {
            } else {
                verdict = .rejected(reason: last.reason ?? "unspecified")
                why.inputs = []
                why.say(
                    "published_rejection",
                    "The referral was rejected (\(last.reason ?? "")) and a published rejection stands.")
            }
        }

        // Rewards the verdict wants to stand, and those it wants gone (with the reason).
        let grants = Beneficiary.allCases.map { grant(b, $0, friend: friend) }
        var stand: [String: Bool] = [:]
        var notes: [String: String] = [:]
        var qualifiedAt: Instant?
        var finalNegative: String?
        switch verdict {
        case .qualified(let q, let capped, let clawed):
            qualifiedAt = q
            for g in grants {
                let clawedThis =
                    clawed && (p.clawback == .both || (p.clawback == .referrer && g.beneficiary == .referrer))
                let cappedThis = capped && g.beneficiary == .referrer
                stand[g.rewardId] = !(clawedThis || cappedThis)
                if cappedThis { notes[g.rewardId] = "yearly_cap" } else if clawedThis { notes[g.rewardId] = "clawback" }
            }
        case .rejected(let r): finalNegative = r
        case .lost(let r): finalNegative = r
        case .expired(let r): finalNegative = r
        case .pending: break
        }
        // An operator's reversal of one reward (`referrald reward reverse`): it no longer stands.
        for g in grants where idx.operatorReversed.contains(g.rewardId) {
            stand[g.rewardId] = false
            notes[g.rewardId] = "operator"
        }

        // Reconcile with what was published: issue what should stand, reverse what must not.
        var newlyIssued: [RewardGrant] = []
        var heldByPause: Set<String> = []
        var reversals: [Reversal] = []
        for g in grants {
            let wasIssued = issued[g.rewardId]
            if stand[g.rewardId] == true {
                if wasIssued == nil, !reversed.contains(g.rewardId), friend != nil {
                    if input.paused(p.id) {
                        heldByPause.insert(g.rewardId)
                        notes[g.rewardId] = "paused"
                    } else {
                        newlyIssued.append(g)
                    }
                }
            } else if let issuedGrant = wasIssued, !reversed.contains(g.rewardId),
                let reason = notes[g.rewardId] ?? finalNegative
            {
                reversals.append(
                    Reversal(
                        rewardId: g.rewardId, referralId: b.referralId, accountId: issuedGrant.accountId,
                        amountMinor: issuedGrant.amountMinor, currency: issuedGrant.currency, reason: reason))
            }
        }
        let outstanding = grants.contains { g in
            (issued[g.rewardId] != nil || newlyIssued.contains(g)) && !reversed.contains(g.rewardId)
                && !reversals.contains { $0.rewardId == g.rewardId }
        }

        // The stage: the verdict's, adjusted only where published effects cannot be undone.
        var stage: Stage
        var reason: String?
        switch verdict {
        case .pending(let s, let w):
            noteWake(w)
            stage = s
            if outstanding {
                // A late fact (arrears) put a rewarded referral back to waiting; the reward stands
                // until the facts settle it (paid in time → stays; deadline/cancel → reversed).
                stage = .rewarded
                why.append(
                    " The rewards were issued before this fact arrived; they stand unless the referral is lost or expires."
                )
            }
        case .rejected(let r):
            stage = .rejected
            reason = r
        case .lost(let r):
            stage = .lost
            reason = r
        case .expired(let r):
            stage = .expired
            reason = r
        case .qualified(_, let capped, let clawed):
            let clawedAny = clawed && (p.clawback == .both || (p.clawback == .referrer && !capped))
            let blocked = grants.contains { stand[$0.rewardId] == true && reversed.contains($0.rewardId) }
            if blocked {
                // The documented exception: a reward reversed on the facts known then cannot be
                // re-issued under its id, so the referral ends reversed.
                stage = .reversed
                reason = "reversed_before_late_fact"
                why.append(
                    " A reward was reversed before a later fact showed it was due; reward ids are issued once, so it stays reversed."
                )
            } else if clawedAny {
                stage = .reversed
                reason = "clawback"
            } else if !heldByPause.isEmpty, newlyIssued.isEmpty, !grants.contains(where: { issued[$0.rewardId] != nil })
            {
                // Due but paused: it waits at qualified, and is rewarded on the resume.
                stage = .qualified
                why.append(
                    " Rewards are paused by an operator (referrald rewards pause): they are issued, with these ids, on the resume."
                )
            } else {
                stage = .rewarded
            }
        }
        // Effects, in the order consumers expect: offer, status, rewards.
        if !offered.contains(b.referralId), stage != .rejected {
            let fr = p.friendReward
            emit(
                .friendOfferGranted(
                    referralId: b.referralId, leadId: b.leadId, code: b.code, priorityInstall: fr.priorityInstall,
                    kind: fr.kind, amountMinor: fr.amountMinor, currency: p.currency))
        }
        let last = lastStatus[b.referralId]
        if last?.stage != stage {
            var from = last?.stage
            var seq = (last?.count ?? 0) + 1
            // A forward jump (install and activation in one batch, or arriving out of order)
            // still tells consumers every stage the facts show it passed, in order: a stage
            // is only reported when its fact exists, so "installed" never appears without
            // an install.
            if let f = from, let a = Self.forward.firstIndex(of: f), let z = Self.forward.firstIndex(of: stage),
                z > a + 1
            {
                let info = friend.flatMap { idx.accounts[$0] }
                for s in Self.forward[(a + 1)..<z] where s != .qualified {
                    let passed =
                        switch s {
                        case .ordered: friend != nil
                        case .installed: info?.installedAt != nil
                        case .activated: info?.activatedAt != nil
                        default: false
                        }
                    if passed {
                        emitStatus(b, friend, from: from, to: s, reason: nil, seq: seq)
                        from = s
                        seq += 1
                    }
                }
            }
            if stage == .rewarded, from != .qualified, !newlyIssued.isEmpty {
                emitStatus(b, friend, from: from, to: .qualified, reason: nil, seq: seq)
                from = .qualified
                seq += 1
            }
            emitStatus(
                b, friend, from: from, to: stage, reason: stage.isEnd ? (reason ?? "unspecified") : nil, seq: seq)
        }
        for g in newlyIssued {
            emit(.rewardIssued(g))
            issued[g.rewardId] = g
        }
        for r in reversals {
            emit(.rewardReversed(r))
            reversed.insert(r.rewardId)
        }

        // The budget: an issued reward commits its amount in its milestone's month; one in its
        // hold (or waiting out arrears) commits what it would be paid, unless the referrer's cap
        // already withholds it. A referral without a milestone inside its window commits nothing.
        let milestone = idx.milestone(p.qualify.milestone, of: friend).flatMap {
            $0 <= lead.at + p.attributionWindow ? $0 : nil
        }
        var commitments: [Commitment] = []
        if let m = milestone {
            let inHold = if case .pending = verdict { true } else { false }
            let capped = (competition.capEarlier[b.leadId] ?? 0) >= p.limits.maxRewardsPerReferrerPerYear
            for g in grants {
                if let sent = issued[g.rewardId] {
                    commitments.append(
                        Commitment(
                            rewardId: g.rewardId, programId: p.id, month: ProgramBudget.month(of: m),
                            currency: sent.currency, amountMinor: sent.amountMinor, issued: true))
                } else if heldByPause.contains(g.rewardId) || (inHold && !(capped && g.beneficiary == .referrer)) {
                    commitments.append(
                        Commitment(
                            rewardId: g.rewardId, programId: p.id, month: ProgramBudget.month(of: m),
                            currency: g.currency, amountMinor: g.amountMinor, issued: false))
                }
            }
        }
        var rewardViews: [RewardView] = []
        for g in grants {
            let status = fulfil(g)
            rewardViews.append(
                RewardView(
                    rewardId: g.rewardId, beneficiary: g.beneficiary,
                    accountId: issued[g.rewardId]?.accountId ?? g.accountId,
                    amountMinor: issued[g.rewardId]?.amountMinor ?? g.amountMinor, currency: g.currency,
                    status: status, note: notes[g.rewardId] ?? (status == .reversed ? finalNegative : nil)))
        }
        return ReferralView(
            referralId: b.referralId, leadId: b.leadId, referrerAccountId: b.referrerAccountId, friendAccountId: friend,
            programId: p.id, programVersion: b.programVersion, stage: stage, reason: reason, rule: why.rule,
            explanation: why.text, inputs: why.inputs, qualifiedAt: qualifiedAt, rewards: rewardViews,
            commitments: commitments)
    }

    /// The way forward, in order; the end stages are not on it.
    static let forward: [Stage] = [.lead, .ordered, .installed, .activated, .qualified, .rewarded]

    mutating func emitStatus(
        _ b: ReferralBinding, _ friend: String?, from: Stage?, to: Stage, reason: String?, seq: Int
    ) {
        emit(
            .statusChanged(
                StatusChange(
                    referralId: b.referralId, referrerAccountId: b.referrerAccountId, leadId: b.leadId,
                    friendAccountId: friend, from: from, to: to, reason: reason, sequence: seq)))
        lastStatus[b.referralId] = (to, reason, seq)
    }

    /// The reward a beneficiary should get: its amount follows the plan of the friend's first
    /// activation when the program pays `by_plan`. Once issued, a reward keeps the amount it
    /// was issued at (a reward id is issued once), whatever activation arrives later.
    func grant(_ b: ReferralBinding, _ who: Beneficiary, friend: String?) -> RewardGrant {
        let p = b.program
        let rule = who == .referrer ? p.referrerReward : p.friendReward.asReward
        let plans = friend.flatMap { idx.accounts[$0] }?.firstPlans ?? []
        let (kind, amount) = (rule.kind, rule.amount(plans: plans))
        return RewardGrant(
            rewardId: rewardId(referralId: b.referralId, beneficiary: who), referralId: b.referralId,
            accountId: who == .referrer ? b.referrerAccountId : (friend ?? ""), beneficiary: who,
            kind: kind, amountMinor: amount, currency: p.currency, programId: p.id)
    }

    // MARK: The rules, on fact times

    func judge(_ b: ReferralBinding, lead: LeadInfo, friend: String?, why: inout Why) -> Verdict {
        let p = b.program
        let referrer = b.referrerAccountId
        let friendInfo = friend.flatMap { idx.accounts[$0] }

        // Rejections. Every one of them only becomes true as facts are added, never false again
        // (more facts = more households, earlier competitors, more leads that day), so a
        // rejection never has to be revived; precedence makes the reason order-independent too.
        if let cancelled = idx.accounts[referrer]?.cancelledAt, cancelled <= lead.at {
            why.say(
                "codes.cancelled_referrer",
                "The referrer's account was cancelled before the lead; its code no longer attributes leads.")
            why.add("referrer_cancelled_at", cancelled)
            return .rejected(reason: "referrer_cancelled")
        }
        if friend == referrer {
            why.say("fraud.self_referral", "The lead became the referrer's own account.")
            return .rejected(reason: "self_referral")
        }
        let personal = idx.leadPersonal(b.leadId)
        if p.fraud.rejectSameHousehold {
            var friendHouseholds = friend.map { idx.households(of: $0) } ?? []
            if let hh = personal.household { friendHouseholds.insert(hh) }
            if !friendHouseholds.isDisjoint(with: idx.households(of: referrer)) {
                why.say("fraud.reject_same_household", "The friend's household is the referrer's household.")
                return .rejected(reason: "same_household")
            }
        }
        if p.fraud.rejectSameContact {
            var friendContacts = friend.map { idx.contacts(of: $0) } ?? []
            if let c = personal.contact { friendContacts.insert(c) }
            if !friendContacts.isDisjoint(with: idx.contacts(of: referrer)) {
                why.say("fraud.reject_same_contact", "The friend's contact is the referrer's contact.")
                return .rejected(reason: "same_contact")
            }
        }
        if let rank = competition.codeDayEarlier[b.leadId], rank >= p.limits.maxLeadsPerCodePerDay {
            why.say(
                "limits.max_leads_per_code_per_day",
                "This lead came after \(p.limits.maxLeadsPerCodePerDay) others with this code on its UTC day (by lead time); the limit is \(p.limits.maxLeadsPerCodePerDay)."
            )
            return .rejected(reason: "too_many_leads")
        }
        for key in idx.friendKeys(b.leadId) {
            if let winner = competition.claimWinners[key], winner.leadId != b.leadId {
                why.say(
                    "one_referrer_per_friend",
                    "An earlier lead (\(winner.leadId)) reached the same friend (\(key.hasPrefix("a:") ? "account" : "household")); the earliest lead by time claims the friend, whatever becomes of it."
                )
                why.add("winning_lead", winner.leadId)
                why.add("winning_lead_at", winner.at)
                return .rejected(reason: "already_referred")
            }
        }

        // Progress before the milestone.
        var stage: Stage = .lead
        if friend != nil { stage = .ordered }
        if friendInfo?.installedAt != nil { stage = .installed }
        if friendInfo?.activatedAt != nil { stage = .activated }
        let windowEnd = lead.at + p.attributionWindow
        let cancelled = friendInfo?.cancelledAt
        why.add("window_end", windowEnd)
        why.add("friend_cancelled_at", cancelled)

        let milestone = idx.milestone(p.qualify.milestone, of: friend)
        why.add("milestone", p.qualify.milestone.rawValue)
        why.add("milestone_at", milestone)
        guard let m = milestone, m <= windowEnd else {
            // No milestone inside the window (yet). Whichever came first by fact time decides:
            // the friend's cancellation (lost) or the end of the window (expired).
            if let c = cancelled, c <= windowEnd {
                why.say("lost", "The friend cancelled before reaching \(p.qualify.milestone.rawValue).")
                return .lost(reason: "cancelled_before_qualifying")
            }
            if now >= windowEnd || milestone != nil {
                why.say(
                    "attribution_window",
                    milestone == nil
                        ? "No \(p.qualify.milestone.rawValue) within \(p.attributionWindow) of the lead. A late fact dated inside the window would still revive it."
                        : "\(p.qualify.milestone.rawValue) came after the \(p.attributionWindow) attribution window.")
                return .expired(reason: milestone == nil ? "no_milestone_in_window" : "milestone_after_window")
            }
            why.say("attribution_window", "Waiting for \(p.qualify.milestone.rawValue) until the window ends.")
            return .pending(stage: stage, wake: windowEnd)
        }

        let holdEnd = m + p.qualify.hold
        why.add("hold_end", holdEnd)
        if let c = cancelled, c <= holdEnd {
            why.say(
                "qualify.hold",
                "The friend cancelled before the \(p.qualify.hold) hold after \(p.qualify.milestone.rawValue) ended.")
            return .lost(reason: "cancelled_before_qualifying")
        }

        // Arrears: not while an overdue invoice is unpaid; resumes at payment, until the deadline.
        let deadline = max(holdEnd, windowEnd)
        var q: Instant? = holdEnd
        var arrears: [(start: Instant, end: Instant?)] = []
        for (invoice, start) in friendInfo?.overdue ?? [:] {
            let end = friendInfo?.paid[invoice]
            if let end, end <= start { continue }
            arrears.append((start, end))
        }
        var guardCount = 0
        while let t = q, let hit = arrears.first(where: { $0.start <= t && ($0.end.map { t < $0 } ?? true) }),
            guardCount <= arrears.count
        {
            q = hit.end
            guardCount += 1
        }
        if q == nil || q! > deadline {
            why.add("arrears_deadline", deadline)
            if let c = cancelled, c <= deadline {
                why.say("arrears", "The friend was in arrears from the end of the hold and cancelled before paying.")
                return .lost(reason: "cancelled_in_arrears")
            }
            if now >= deadline || q != nil {
                why.say("arrears", "The friend was still in arrears when the window closed.")
                return .expired(reason: "in_arrears_past_window")
            }
            why.say(
                "arrears",
                "The hold is over but the friend is in arrears; qualification resumes once paid, until \(deadline).")
            return .pending(stage: stage, wake: deadline)
        }
        let qualifiesAt = q!
        why.add("qualifies_at", qualifiesAt)
        if let c = cancelled, c <= qualifiesAt {
            why.say("arrears", "The friend cancelled while in arrears, before qualifying.")
            return .lost(reason: "cancelled_in_arrears")
        }
        if qualifiesAt > now {
            why.say(
                qualifiesAt == holdEnd ? "qualify.hold" : "arrears",
                "Qualifies at \(qualifiesAt) if the friend is still a customer and not in arrears.")
            return .pending(stage: stage, wake: qualifiesAt)
        }

        // Qualified. The yearly cap counts, per referrer and UTC year of the milestone, the
        // referrals that reached their milestone inside their window (by milestone time, then
        // lead id) — whatever became of them afterwards. That set only grows as facts arrive, so
        // a late fact can take a slot away (compensated by a reversal) but never hand it back,
        // which would need a second reward id for the same (referral, beneficiary).
        let earlier = competition.capEarlier[b.leadId] ?? 0
        let capped = earlier >= p.limits.maxRewardsPerReferrerPerYear
        why.add(
            "referrer_slot_in_year",
            capped
                ? "past \(p.limits.maxRewardsPerReferrerPerYear)"
                : "\(earlier + 1) of \(p.limits.maxRewardsPerReferrerPerYear)")
        let clawed = cancelled.map { $0 > qualifiesAt && $0 <= qualifiesAt + p.clawbackWindow } ?? false
        if clawed {
            why.say(
                "clawback",
                "The friend cancelled within the \(p.clawbackWindow) clawback window after qualifying; clawback mode \(p.clawback.rawValue)."
            )
        } else if capped {
            why.say(
                "limits.max_rewards_per_referrer_per_year",
                "Qualified; the referrer already had \(p.limits.maxRewardsPerReferrerPerYear) referrals reach their milestone this year, so only the friend is rewarded."
            )
        } else {
            why.say(
                "qualify",
                "Qualified at \(qualifiesAt): \(p.qualify.milestone.rawValue) inside the window, \(p.qualify.hold) hold served, not in arrears."
            )
        }
        return .qualified(at: qualifiesAt, referrerCapped: capped, clawedBack: clawed)
    }

    // MARK: Fulfilment

    /// Billing's answers for an issued reward: applied, mismatched, or rejected and retried with
    /// back-off measured from the rejection's own time.
    mutating func fulfil(_ g: RewardGrant) -> RewardStatus {
        guard let sent = issued[g.rewardId] else { return .pending }
        if reversed.contains(g.rewardId) { return .reversed }
        var status = RewardStatus.issued
        let applications = idx.applied[g.rewardId] ?? []
        for a in applications.sorted(by: {
            ($0.accountId, $0.amountMinor, $0.currency) < ($1.accountId, $1.amountMinor, $1.currency)
        }) {
            if a.accountId == sent.accountId && a.amountMinor == sent.amountMinor && a.currency == sent.currency {
                status = .applied
            } else {
                emit(
                    .rewardMismatch(
                        rewardId: g.rewardId, accountId: a.accountId, amountMinor: a.amountMinor, currency: a.currency))
            }
        }
        if status == .applied {
            emit(.rewardApplied(rewardId: g.rewardId))
            return .applied
        }
        let rejections = (idx.rejections[g.rewardId] ?? []).sorted { ($0.at, $0.reason) < ($1.at, $1.reason) }
        guard !rejections.isEmpty else { return .issued }
        let maxRetries = input.policy.maxRetries
        for (i, r) in rejections.enumerated() {
            emit(.rewardFailed(rewardId: g.rewardId, failure: i + 1, reason: r.reason, final: i + 1 > maxRetries))
        }
        var done = retries[g.rewardId] ?? 0
        while done < min(rejections.count, maxRetries) {
            let due = rejections[done].at + input.policy.backoff(afterFailure: done + 1)
            guard due <= now else {
                noteWake(due)
                break
            }
            done += 1
            emit(.rewardRetried(sent, attempt: done))
            retries[g.rewardId] = done
        }
        return rejections.count > done ? .failed : .issued
    }
}
