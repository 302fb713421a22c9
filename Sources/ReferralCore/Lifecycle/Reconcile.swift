/// A referral's rewards as its rule outcome wants them: which should stand, and the note of each
/// that must not (or is not yet paid).
struct RewardPlan {
    /// The referrer's reward, then the friend's.
    var grants: [RewardGrant]
    /// By reward id: true when the reward should stand; absent or false when it must not.
    var stands: [String: Bool] = [:]
    /// By reward id: why it is not (or no longer) paid.
    var notes: [String: String] = [:]
    var qualifiedAt: Instant?

    init(outcome: RuleOutcome, program p: Program, grants: [RewardGrant], operatorReversed: Set<String>) {
        self.grants = grants
        if case .qualified(let q, let capped, let clawed) = outcome {
            qualifiedAt = q
            for g in grants {
                // clawback: per mode, the referrer's reward or both.
                let clawedThis =
                    clawed && (p.clawback == .both || (p.clawback == .referrer && g.beneficiary == .referrer))
                // yearly_cap: past the cap, the referrer's reward only.
                let cappedThis = capped && g.beneficiary == .referrer
                stands[g.rewardId] = !(clawedThis || cappedThis)
                if cappedThis { notes[g.rewardId] = "yearly_cap" } else if clawedThis { notes[g.rewardId] = "clawback" }
            }
        }
        // An operator's reversal of one reward (`referrald reward reverse`): it no longer stands.
        for g in grants where operatorReversed.contains(g.rewardId) {
            stands[g.rewardId] = false
            notes[g.rewardId] = "operator"
        }
    }
}

/// What reconciling a referral's reward plan with the published ledger does.
struct Reconciliation {
    /// Rewards that should stand and were never issued: issued now.
    var newlyIssued: [RewardGrant] = []
    /// Rewards due now but held by an operator's pause (`LifecycleInput.pausedPrograms`).
    var heldByPause: Set<String> = []
    /// Issued rewards that must not stand: reversed now, once.
    var reversals: [Reversal] = []
    /// Whether any reward is issued (before or now) and not reversed (before or now).
    var outstanding = false
}

extension DecisionRun {
    /// Issue what should stand and was not issued; reverse, once, what was issued and must not
    /// stand, whatever made it so. A reversed reward id is never issued again.
    func reconcile(
        _ b: ReferralBinding, friend: String?, outcome: RuleOutcome, rewards: inout RewardPlan
    ) -> Reconciliation {
        var out = Reconciliation()
        for g in rewards.grants {
            let wasIssued = issued[g.rewardId]
            if rewards.stands[g.rewardId] == true {
                if wasIssued == nil, !reversed.contains(g.rewardId), friend != nil {
                    if input.paused(b.program.id) {
                        out.heldByPause.insert(g.rewardId)
                        rewards.notes[g.rewardId] = "paused"
                    } else {
                        out.newlyIssued.append(g)
                    }
                }
            } else if let issuedGrant = wasIssued, !reversed.contains(g.rewardId),
                let reason = rewards.notes[g.rewardId] ?? outcome.endReason
            {
                out.reversals.append(
                    Reversal(
                        rewardId: g.rewardId, referralId: b.referralId, accountId: issuedGrant.accountId,
                        amountMinor: issuedGrant.amountMinor, currency: issuedGrant.currency, reason: reason))
            }
        }
        out.outstanding = rewards.grants.contains { g in
            (issued[g.rewardId] != nil || out.newlyIssued.contains(g)) && !reversed.contains(g.rewardId)
                && !out.reversals.contains { $0.rewardId == g.rewardId }
        }
        return out
    }

    /// The stage: the rule outcome's, adjusted only where published effects cannot be undone.
    mutating func stage(
        of outcome: RuleOutcome, program p: Program, rewards: RewardPlan, _ reconciliation: Reconciliation,
        explanation: inout Explanation
    ) -> (stage: Stage, reason: String?) {
        switch outcome {
        case .pending(let stage, let wake):
            noteWake(wake)
            guard reconciliation.outstanding else { return (stage, nil) }
            // A late fact (arrears) put a rewarded referral back to waiting; the reward stands
            // until the facts settle it (paid in time → stays; deadline/cancel → reversed).
            explanation.append(
                " The rewards were issued before this fact arrived; they stand unless the referral is lost or expires."
            )
            return (.rewarded, nil)
        case .rejected(let reason):
            return (.rejected, reason)
        case .lost(let reason):
            return (.lost, reason)
        case .expired(let reason):
            return (.expired, reason)
        case .qualified(_, let capped, let clawed):
            let clawedAny = clawed && (p.clawback == .both || (p.clawback == .referrer && !capped))
            let blocked = rewards.grants.contains {
                rewards.stands[$0.rewardId] == true && reversed.contains($0.rewardId)
            }
            if blocked {
                // reversed_before_late_fact, the documented exception: a reward reversed on the
                // facts known then cannot be re-issued under its id, so the referral ends reversed.
                explanation.append(
                    " A reward was reversed before a later fact showed it was due; reward ids are issued once, so it stays reversed."
                )
                return (.reversed, "reversed_before_late_fact")
            }
            if clawedAny { return (.reversed, "clawback") }
            if !reconciliation.heldByPause.isEmpty, reconciliation.newlyIssued.isEmpty,
                !rewards.grants.contains(where: { issued[$0.rewardId] != nil })
            {
                // Due but paused: it waits at qualified, and is rewarded on the resume.
                explanation.append(
                    " Rewards are paused by an operator (referrald rewards pause): they are issued, with these ids, on the resume."
                )
                return (.qualified, nil)
            }
            return (.rewarded, nil)
        }
    }
}
