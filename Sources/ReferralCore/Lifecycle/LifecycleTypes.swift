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

/// A lead to become a referral (`Lifecycle.leadsToBind`).
public struct LeadToBind: Hashable, Sendable {
    public var leadId: String
    public var code: String
    public var referrerAccountId: String
    public var programId: String
    /// The lead's time: which version of the program binds it.
    public var at: Instant
}
