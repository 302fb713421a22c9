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
        var run = DecisionRun(input)
        return run.run()
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
