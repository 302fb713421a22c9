/// Drawing referral codes. Which accounts get one is the lifecycle's decision
/// (`Decision.codeRequests`: one per customer account, at its first activation).
public enum CodeIssuance {
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
