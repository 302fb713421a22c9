/// Deciding which accounts get a referral code: one per customer account, at its first
/// activation, whatever order or how often the activations arrive.
public enum CodeIssuance {
    public struct Activation: Sendable, Equatable {
        public var accountId: String
        public var activatedAt: Instant
        public var segment: String?

        public init(accountId: String, activatedAt: Instant, segment: String?) {
            self.accountId = accountId
            self.activatedAt = activatedAt
            self.segment = segment
        }
    }

    /// The activations that give an account its code: the earliest (by fact time, then input
    /// order) of each account that has none yet. Reactivations and duplicates yield nothing.
    public static func firstActivations(_ activations: [Activation], accountsWithCodes: Set<String>) -> [Activation] {
        var earliest: [String: Activation] = [:]
        var order: [String] = []
        for a in activations where !accountsWithCodes.contains(a.accountId) {
            if let seen = earliest[a.accountId] {
                if a.activatedAt < seen.activatedAt { earliest[a.accountId] = a }
            } else {
                earliest[a.accountId] = a
                order.append(a.accountId)
            }
        }
        return order.compactMap { earliest[$0] }
    }

    /// Draws a code from `rng`, redrawing the 5 in 37 codes whose check symbol is not a
    /// letter or digit (`*~$=U`): customers read codes aloud and type them, and a `$` in a share
    /// URL needs escaping. Readers still accept all 37 check symbols.
    public static func draw<R: RandomNumberGenerator>(using rng: inout R) -> ReferralCode {
        while true {
            let code = ReferralCode(randomBits: rng.next())
            if code.isAlphanumeric { return code }
        }
    }
}

extension Program {
    /// The program's share URL with the code in place of `{code}` (the loader guarantees it is there).
    public func shareURL(for code: ReferralCode) -> String {
        shareURL.split(separator: "{code}", omittingEmptySubsequences: false).joined(separator: code.canonical)
    }
}
