/// Referral stages (contract README). The first six are the way forward; the last four are ends.
public enum Stage: String, Hashable, Sendable, Codable, CaseIterable {
    case lead, ordered, installed, activated, qualified, rewarded
    case rejected, expired, lost, reversed

    public var isEnd: Bool { self == .rejected || self == .expired || self == .lost || self == .reversed }
}

public enum Beneficiary: String, Hashable, Sendable, Codable, CaseIterable {
    case referrer, friend
}

/// A referral as the store created it: when a lead with a known code is first seen, it gets an
/// id and is bound to the version of the referrer's program in force at that moment. The binding
/// never changes afterwards, so a program edit never rewrites a running referral's rules.
public struct ReferralBinding: Hashable, Sendable, Codable {
    public var referralId: String
    public var leadId: String
    /// Canonical code the lead carried.
    public var code: String
    public var referrerAccountId: String
    public var program: Program
    /// The store's version number of `program`, for explanations only.
    public var programVersion: Int

    public init(
        referralId: String, leadId: String, code: String, referrerAccountId: String, program: Program,
        programVersion: Int
    ) {
        self.referralId = referralId
        self.leadId = leadId
        self.code = code
        self.referrerAccountId = referrerAccountId
        self.program = program
        self.programVersion = programVersion
    }
}

/// The idempotency key billing uses: one per (referral, beneficiary), derived from the ids alone
/// so that every replay, retry and arrival order names the same reward. `ref-3001` gives
/// `rwd-3001-referrer`, as in the contract's story.
public func rewardId(referralId: String, beneficiary: Beneficiary) -> String {
    let stem = referralId.hasPrefix("ref-") ? String(referralId.dropFirst(4)) : referralId
    return "rwd-\(stem)-\(beneficiary.rawValue)"
}

/// What `referral.reward.issued` carries.
public struct RewardGrant: Hashable, Sendable, Codable {
    public var rewardId: String
    public var referralId: String
    public var accountId: String
    public var beneficiary: Beneficiary
    public var kind: RewardKind
    public var amountMinor: Int64
    public var currency: String
    public var programId: String

    public init(
        rewardId: String, referralId: String, accountId: String, beneficiary: Beneficiary, kind: RewardKind,
        amountMinor: Int64, currency: String, programId: String
    ) {
        self.rewardId = rewardId
        self.referralId = referralId
        self.accountId = accountId
        self.beneficiary = beneficiary
        self.kind = kind
        self.amountMinor = amountMinor
        self.currency = currency
        self.programId = programId
    }
}

/// What `referral.status.changed` carries.
public struct StatusChange: Hashable, Sendable, Codable {
    public var referralId: String
    public var referrerAccountId: String
    public var leadId: String
    public var friendAccountId: String?
    /// nil when the referral is created.
    public var from: Stage?
    public var to: Stage
    /// Set for end stages.
    public var reason: String?
    /// 1 for the referral's first change, then 2, 3...: (referral, sequence) is the store's key, so
    /// a referral that legitimately passes the same pair of stages twice is not deduplicated away.
    public var sequence: Int

    public init(
        referralId: String, referrerAccountId: String, leadId: String, friendAccountId: String?,
        from: Stage?, to: Stage, reason: String?, sequence: Int
    ) {
        self.referralId = referralId
        self.referrerAccountId = referrerAccountId
        self.leadId = leadId
        self.friendAccountId = friendAccountId
        self.from = from
        self.to = to
        self.reason = reason
        self.sequence = sequence
    }
}

/// What `referral.reward.reversed` carries.
public struct Reversal: Hashable, Sendable, Codable {
    public var rewardId: String
    public var referralId: String
    public var accountId: String
    public var amountMinor: Int64
    public var currency: String
    public var reason: String

    public init(
        rewardId: String, referralId: String, accountId: String, amountMinor: Int64, currency: String, reason: String
    ) {
        self.rewardId = rewardId
        self.referralId = referralId
        self.accountId = accountId
        self.amountMinor = amountMinor
        self.currency = currency
        self.reason = reason
    }
}

/// An effect that has left (or is about to leave) the building. Decisions return new effects;
/// the worker publishes/records them in the batch's transaction and hands every recorded effect
/// back to the next decision. Recorded effects are never taken back: a later fact can only add a
/// compensating effect (a reversal). Each effect is emitted at most once per `key`.
public enum Effect: Hashable, Sendable, Codable {
    /// `referral.code.issued`; the worker draws the code for a `CodeRequest` and records this.
    case codeIssued(accountId: String, code: String, programId: String)
    /// `referral.friend_offer.granted`.
    case friendOfferGranted(
        referralId: String, leadId: String, code: String, priorityInstall: Bool,
        kind: RewardKind, amountMinor: Int64, currency: String)
    /// `referral.status.changed`.
    case statusChanged(StatusChange)
    /// `referral.reward.issued`, first time.
    case rewardIssued(RewardGrant)
    /// `referral.reward.issued` again with the same `reward_id`, after billing rejected attempt
    /// `attempt - 1`'s credit. Same payload, new CloudEvents id.
    case rewardRetried(RewardGrant, attempt: Int)
    /// `referral.reward.reversed`.
    case rewardReversed(Reversal)
    /// Reward state `applied`: billing applied exactly what was issued. Not published; stored.
    case rewardApplied(rewardId: String)
    /// Billing applied something other than what was issued. Stored and reported, not applied.
    case rewardMismatch(rewardId: String, accountId: String, amountMinor: Int64, currency: String)
    /// Billing's `failure`-th rejection of the reward; `final` when no retry follows.
    case rewardFailed(rewardId: String, failure: Int, reason: String, final: Bool)

    /// The key under which an effect is unique: re-deciding never emits a second effect with the
    /// same key, and it is what the store's unique constraint on recorded effects should cover.
    public var key: Key {
        switch self {
        case .codeIssued(let a, _, _): return .code(accountId: a)
        case .friendOfferGranted(let r, _, _, _, _, _, _): return .offer(referralId: r)
        case .statusChanged(let s): return .status(referralId: s.referralId, sequence: s.sequence)
        case .rewardIssued(let g): return .issue(rewardId: g.rewardId, attempt: 0)
        case .rewardRetried(let g, let n): return .issue(rewardId: g.rewardId, attempt: n)
        case .rewardReversed(let r): return .reverse(rewardId: r.rewardId)
        case .rewardApplied(let r): return .applied(rewardId: r)
        case .rewardMismatch(let r, let a, let m, let c):
            return .mismatch(rewardId: r, accountId: a, amountMinor: m, currency: c)
        case .rewardFailed(let r, let n, _, _): return .failed(rewardId: r, failure: n)
        }
    }

    public enum Key: Hashable, Sendable {
        case code(accountId: String)
        case offer(referralId: String)
        case status(referralId: String, sequence: Int)
        case issue(rewardId: String, attempt: Int)
        case reverse(rewardId: String)
        case applied(rewardId: String)
        case mismatch(rewardId: String, accountId: String, amountMinor: Int64, currency: String)
        case failed(rewardId: String, failure: Int)
    }
}
