extension Effect {
    /// The referral an effect belongs to; nil for a code, which belongs to an account.
    public var referralId: String? {
        switch self {
        case .codeIssued: return nil
        case .friendOfferGranted(let r, _, _, _, _, _, _): return r
        case .statusChanged(let s): return s.referralId
        case .rewardIssued(let g), .rewardRetried(let g, _): return g.referralId
        case .rewardReversed(let r): return r.referralId
        case .rewardApplied(let id), .rewardMismatch(let id, _, _, _), .rewardFailed(let id, _, _, _):
            return ReferralCore.referralId(ofReward: id)
        }
    }
}

/// `rwd-3001-referrer` → `ref-3001`: the inverse of `rewardId(referralId:beneficiary:)`.
public func referralId(ofReward id: String) -> String? {
    guard id.hasPrefix("rwd-") else { return nil }
    for b in Beneficiary.allCases where id.hasSuffix("-" + b.rawValue) {
        return "ref-" + id.dropFirst(4).dropLast(b.rawValue.count + 1)
    }
    return nil
}
