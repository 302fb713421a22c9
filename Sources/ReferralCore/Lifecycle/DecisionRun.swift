/// What the rules conclude about one referral from the facts alone, before looking at what was
/// already published (`LifecycleRules.md`, "Rules, in order of precedence").
enum RuleOutcome {
    /// Still live; `wake` is when time alone would change it.
    case pending(stage: Stage, wake: Instant?)
    case rejected(reason: String)
    case lost(reason: String)
    case expired(reason: String)
    /// Qualified at `at`; whether the yearly cap withholds the referrer's reward, and whether the
    /// friend cancelled inside the clawback window.
    case qualified(at: Instant, referrerCapped: Bool, clawedBack: Bool)

    /// The reason of an end the rules reached (rejected, lost, expired); nil while the referral
    /// is live or qualified.
    var endReason: String? {
        switch self {
        case .rejected(let reason), .lost(let reason), .expired(let reason): reason
        case .pending, .qualified: nil
        }
    }
}

/// A referral's explanation under construction: the rule that decided it, the sentence for
/// support, and the inputs the rule read. Text is built only when asked for: the worker's hot
/// path decides every referral of every batch and must not format sentences nobody reads.
struct Explanation {
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

/// One run of `Lifecycle.decide`: the facts indexed, what the recorded effects say was already
/// published, and the effects and timers the run adds. The rules (`LifecycleRules.swift`),
/// reconciliation (`Reconcile.swift`), the status trail (`StatusTrail.swift`) and fulfilment
/// (`Fulfilment.swift`) are its extensions.
struct DecisionRun {
    let input: LifecycleInput
    let facts: FactIndex
    let now: Instant
    /// Ranks in the code's day, claims of friend keys, and slots in the referrer's year.
    let competition: Competition

    var effects: [Effect] = []
    /// The wake-up of the referral being decided.
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
        let facts = FactIndex(input.facts)
        self.facts = facts
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
        competition =
            input.competition
            ?? StandingTable(input.referrals.compactMap { facts.standing(of: $0) }).competition(for: input.referrals)
    }

    mutating func noteWake(_ t: Instant?) {
        guard let t, t > now else { return }
        wake = min(wake ?? t, t)
    }

    /// Adds an effect unless one with its key was recorded or emitted already.
    mutating func emit(_ e: Effect) {
        guard recordedKeys.insert(e.key).inserted else { return }
        effects.append(e)
    }

    mutating func run() -> Decision {
        var views: [ReferralView] = []
        for b in input.referrals.sorted(by: { $0.referralId < $1.referralId }) {
            wake = nil
            if let view = decideReferral(b) { views.append(view) }
            if let w = wake { wakeups[b.referralId] = w }
        }
        var requests: [CodeRequest] = []
        for (account, info) in facts.accounts.sorted(by: { $0.key < $1.key }) where !codedAccounts.contains(account) {
            guard let at = info.activatedAt else { continue }
            requests.append(CodeRequest(accountId: account, segment: info.segment ?? .consumer, activatedAt: at))
        }
        return Decision(
            effects: effects, codeRequests: requests, referrals: views, nextWakeup: wakeups.values.min(),
            wakeups: wakeups)
    }

    // MARK: One referral

    mutating func decideReferral(_ b: ReferralBinding) -> ReferralView? {
        guard let lead = facts.leads[b.leadId] else { return nil }
        let p = b.program
        let friend = facts.friendAccount(of: b.leadId)
        var explanation = Explanation(enabled: input.explain)
        explanation.add("lead_at", lead.at)
        explanation.add("program", "\(p.id) v\(b.programVersion)")
        if !p.referrerReward.byPlan.isEmpty || !p.friendReward.byPlan.isEmpty,
            let plans = friend.flatMap({ facts.accounts[$0] })?.firstPlans, !plans.isEmpty
        {
            explanation.add("friend_plan", plans.map { $0 ?? "none named" }.sorted().joined(separator: ", "))
        }
        let outcome = overridden(ruleOutcome(b, lead: lead, friend: friend, explanation: &explanation), b, &explanation)

        var rewards = RewardPlan(
            outcome: outcome, program: p,
            grants: Beneficiary.allCases.map { rewardGrant(b, to: $0, friend: friend) },
            operatorReversed: facts.operatorReversed)
        let reconciliation = reconcile(b, friend: friend, outcome: outcome, rewards: &rewards)
        let (stage, reason) = stage(
            of: outcome, program: p, rewards: rewards, reconciliation, explanation: &explanation)

        // Effects, in the order consumers expect: offer, status, rewards.
        if !offered.contains(b.referralId), stage != .rejected {
            let fr = p.friendReward
            emit(
                .friendOfferGranted(
                    referralId: b.referralId, leadId: b.leadId, code: b.code, priorityInstall: fr.priorityInstall,
                    kind: fr.kind, amountMinor: fr.amountMinor, currency: p.currency))
        }
        publishStatus(b, friend: friend, stage: stage, reason: reason, newlyIssued: !reconciliation.newlyIssued.isEmpty)
        for g in reconciliation.newlyIssued {
            emit(.rewardIssued(g))
            issued[g.rewardId] = g
        }
        for r in reconciliation.reversals {
            emit(.rewardReversed(r))
            reversed.insert(r.rewardId)
        }

        let commitments = self.commitments(
            b, lead: lead, friend: friend, outcome: outcome, grants: rewards.grants,
            heldByPause: reconciliation.heldByPause)
        var rewardViews: [RewardView] = []
        for g in rewards.grants {
            let status = fulfilmentStatus(g)
            rewardViews.append(
                RewardView(
                    rewardId: g.rewardId, beneficiary: g.beneficiary,
                    accountId: issued[g.rewardId]?.accountId ?? g.accountId,
                    amountMinor: issued[g.rewardId]?.amountMinor ?? g.amountMinor, currency: g.currency,
                    status: status,
                    note: rewards.notes[g.rewardId] ?? (status == .reversed ? outcome.endReason : nil)))
        }
        return ReferralView(
            referralId: b.referralId, leadId: b.leadId, referrerAccountId: b.referrerAccountId, friendAccountId: friend,
            programId: p.id, programVersion: b.programVersion, stage: stage, reason: reason, rule: explanation.rule,
            explanation: explanation.text, inputs: explanation.inputs, qualifiedAt: rewards.qualifiedAt,
            rewards: rewardViews, commitments: commitments)
    }

    /// The rules' outcome, overridden where a decision outside the rules stands.
    func overridden(_ outcome: RuleOutcome, _ b: ReferralBinding, _ explanation: inout Explanation) -> RuleOutcome {
        var outcome = outcome
        // operator: an operator's rejection (`referrald referral reject`) rejects, reason
        // `operator`, whatever the rules say; rewards not issued never will be, issued ones are
        // reversed. A rule's own rejection keeps its reason. The command records no fact for a
        // referral that had already ended; one stored anyway applies, so the outcome never
        // depends on whether the referral looked ended when the fact arrived (an expired one can
        // be revived).
        if facts.operatorRejected.contains(b.leadId) {
            if case .rejected = outcome {
            } else {
                outcome = .rejected(reason: "operator")
                explanation.say(
                    "operator",
                    "An operator rejected the referral (referrald referral reject); explain lists who, when and why.")
            }
        }
        // A published rejection is never revived: only erasure can remove the data behind it, and
        // the right to erasure must not turn a fraud rejection into a reward.
        if let last = lastStatus[b.referralId], last.stage == .rejected {
            if case .rejected = outcome {
            } else {
                outcome = .rejected(reason: last.reason ?? "unspecified")
                explanation.inputs = []
                explanation.say(
                    "published_rejection",
                    "The referral was rejected (\(last.reason ?? "")) and a published rejection stands.")
            }
        }
        return outcome
    }

    /// The reward a beneficiary should get: its amount follows the plan of the friend's first
    /// activation when the program pays `by_plan`. Once issued, a reward keeps the amount it
    /// was issued at (a reward id is issued once), whatever activation arrives later.
    func rewardGrant(_ b: ReferralBinding, to beneficiary: Beneficiary, friend: String?) -> RewardGrant {
        let p = b.program
        let rule = beneficiary == .referrer ? p.referrerReward : p.friendReward.asReward
        let plans = friend.flatMap { facts.accounts[$0] }?.firstPlans ?? []
        return RewardGrant(
            rewardId: rewardId(referralId: b.referralId, beneficiary: beneficiary), referralId: b.referralId,
            accountId: beneficiary == .referrer ? b.referrerAccountId : (friend ?? ""), beneficiary: beneficiary,
            kind: rule.kind, amountMinor: rule.amount(plans: plans), currency: p.currency, programId: p.id)
    }

    /// The budget: an issued reward commits its amount in its milestone's month; one in its hold
    /// (or waiting out arrears) commits what it would be paid, unless the referrer's cap already
    /// withholds it. A referral without a milestone inside its window commits nothing.
    func commitments(
        _ b: ReferralBinding, lead: LeadInfo, friend: String?, outcome: RuleOutcome, grants: [RewardGrant],
        heldByPause: Set<String>
    ) -> [Commitment] {
        let p = b.program
        guard
            let milestone = facts.milestone(p.qualify.milestone, of: friend),
            milestone <= lead.at + p.attributionWindow
        else { return [] }
        let month = ProgramBudget.month(of: milestone)
        let inHold = if case .pending = outcome { true } else { false }
        let capped = (competition.capEarlier[b.leadId] ?? 0) >= p.limits.maxRewardsPerReferrerPerYear
        var commitments: [Commitment] = []
        for g in grants {
            if let sent = issued[g.rewardId] {
                commitments.append(
                    Commitment(
                        rewardId: g.rewardId, programId: p.id, month: month, currency: sent.currency,
                        amountMinor: sent.amountMinor, issued: true))
            } else if heldByPause.contains(g.rewardId) || (inHold && !(capped && g.beneficiary == .referrer)) {
                commitments.append(
                    Commitment(
                        rewardId: g.rewardId, programId: p.id, month: month, currency: g.currency,
                        amountMinor: g.amountMinor, issued: false))
            }
        }
        return commitments
    }
}
