/// The rules of `Lifecycle.docc/LifecycleRules.md` ("Rules, in order of precedence"), judged on
/// fact times only. Each rule names its id (the reason it gives) in a comment, as its test does.
extension DecisionRun {
    func ruleOutcome(
        _ b: ReferralBinding, lead: LeadInfo, friend: String?, explanation: inout Explanation
    ) -> RuleOutcome {
        if let rejected = rejection(b, lead: lead, friend: friend, explanation: &explanation) { return rejected }
        return qualification(b, lead: lead, friend: friend, explanation: &explanation)
    }

    /// The rejections. Every one of them only becomes true as facts are added, never false again
    /// (more facts = more households, earlier competitors, more leads that day), so a rejection
    /// never has to be revived; precedence makes the reason order-independent too.
    func rejection(
        _ b: ReferralBinding, lead: LeadInfo, friend: String?, explanation: inout Explanation
    ) -> RuleOutcome? {
        let p = b.program
        let referrer = b.referrerAccountId
        // referrer_cancelled
        if let cancelled = facts.accounts[referrer]?.cancelledAt, cancelled <= lead.at {
            explanation.say(
                "codes.cancelled_referrer",
                "The referrer's account was cancelled before the lead; its code no longer attributes leads.")
            explanation.add("referrer_cancelled_at", cancelled)
            return .rejected(reason: "referrer_cancelled")
        }
        // self_referral
        if friend == referrer {
            explanation.say("fraud.self_referral", "The lead became the referrer's own account.")
            return .rejected(reason: "self_referral")
        }
        let personal = facts.leadPersonal(b.leadId)
        // same_household
        if p.fraud.rejectSameHousehold {
            var friendHouseholds = friend.map { facts.households(of: $0) } ?? []
            if let hh = personal.household { friendHouseholds.insert(hh) }
            if !friendHouseholds.isDisjoint(with: facts.households(of: referrer)) {
                explanation.say("fraud.reject_same_household", "The friend's household is the referrer's household.")
                return .rejected(reason: "same_household")
            }
        }
        // same_contact
        if p.fraud.rejectSameContact {
            var friendContacts = friend.map { facts.contacts(of: $0) } ?? []
            if let c = personal.contact { friendContacts.insert(c) }
            if !friendContacts.isDisjoint(with: facts.contacts(of: referrer)) {
                explanation.say("fraud.reject_same_contact", "The friend's contact is the referrer's contact.")
                return .rejected(reason: "same_contact")
            }
        }
        // too_many_leads
        if let rank = competition.codeDayEarlier[b.leadId], rank >= p.limits.maxLeadsPerCodePerDay {
            explanation.say(
                "limits.max_leads_per_code_per_day",
                "This lead came after \(p.limits.maxLeadsPerCodePerDay) others with this code on its UTC day (by lead time); the limit is \(p.limits.maxLeadsPerCodePerDay)."
            )
            return .rejected(reason: "too_many_leads")
        }
        // already_referred
        for key in facts.friendKeys(b.leadId) {
            if let winner = competition.claimWinners[key], winner.leadId != b.leadId {
                explanation.say(
                    "one_referrer_per_friend",
                    "An earlier lead (\(winner.leadId)) reached the same friend (\(key.hasPrefix("a:") ? "account" : "household")); the earliest lead by time claims the friend, whatever becomes of it."
                )
                explanation.add("winning_lead", winner.leadId)
                explanation.add("winning_lead_at", winner.at)
                return .rejected(reason: "already_referred")
            }
        }
        return nil
    }

    /// The way to qualification of a referral no rejection applies to: the milestone inside the
    /// attribution window, the hold after it, then arrears; once qualified, the cap and clawback.
    func qualification(
        _ b: ReferralBinding, lead: LeadInfo, friend: String?, explanation: inout Explanation
    ) -> RuleOutcome {
        let p = b.program
        let friendInfo = friend.flatMap { facts.accounts[$0] }

        // Progress before the milestone.
        var stage: Stage = .lead
        if friend != nil { stage = .ordered }
        if friendInfo?.installedAt != nil { stage = .installed }
        if friendInfo?.activatedAt != nil { stage = .activated }
        let windowEnd = lead.at + p.attributionWindow
        let cancelled = friendInfo?.cancelledAt
        explanation.add("window_end", windowEnd)
        explanation.add("friend_cancelled_at", cancelled)

        let milestone = facts.milestone(p.qualify.milestone, of: friend)
        explanation.add("milestone", p.qualify.milestone.rawValue)
        explanation.add("milestone_at", milestone)
        guard let milestone, milestone <= windowEnd else {
            // No milestone inside the window (yet). Whichever came first by fact time decides:
            // the friend's cancellation (lost) or the end of the window (expired).
            // cancelled_before_qualifying
            if let c = cancelled, c <= windowEnd {
                explanation.say("lost", "The friend cancelled before reaching \(p.qualify.milestone.rawValue).")
                return .lost(reason: "cancelled_before_qualifying")
            }
            // no_milestone_in_window, milestone_after_window
            if now >= windowEnd || milestone != nil {
                explanation.say(
                    "attribution_window",
                    milestone == nil
                        ? "No \(p.qualify.milestone.rawValue) within \(p.attributionWindow) of the lead. A late fact dated inside the window would still revive it."
                        : "\(p.qualify.milestone.rawValue) came after the \(p.attributionWindow) attribution window.")
                return .expired(reason: milestone == nil ? "no_milestone_in_window" : "milestone_after_window")
            }
            explanation.say("attribution_window", "Waiting for \(p.qualify.milestone.rawValue) until the window ends.")
            return .pending(stage: stage, wake: windowEnd)
        }

        let holdEnd = milestone + p.qualify.hold
        explanation.add("hold_end", holdEnd)
        // cancelled_before_qualifying, inside the hold
        if let c = cancelled, c <= holdEnd {
            explanation.say(
                "qualify.hold",
                "The friend cancelled before the \(p.qualify.hold) hold after \(p.qualify.milestone.rawValue) ended.")
            return .lost(reason: "cancelled_before_qualifying")
        }

        // Arrears: not while an overdue invoice is unpaid; resumes at payment, until the deadline.
        let deadline = max(holdEnd, windowEnd)
        let outOfArrears: Instant? = if let friendInfo { friendInfo.outOfArrears(from: holdEnd) } else { holdEnd }
        guard let qualifiesAt = outOfArrears, qualifiesAt <= deadline else {
            return inArrearsAtDeadline(
                deadline, paidAfterIt: outOfArrears != nil, cancelled: cancelled, stage: stage,
                explanation: &explanation)
        }
        explanation.add("qualifies_at", qualifiesAt)
        // cancelled_in_arrears: cancelled after the hold, before the payment that ended arrears
        if let c = cancelled, c <= qualifiesAt {
            explanation.say("arrears", "The friend cancelled while in arrears, before qualifying.")
            return .lost(reason: "cancelled_in_arrears")
        }
        if qualifiesAt > now {
            explanation.say(
                qualifiesAt == holdEnd ? "qualify.hold" : "arrears",
                "Qualifies at \(qualifiesAt) if the friend is still a customer and not in arrears.")
            return .pending(stage: stage, wake: qualifiesAt)
        }
        return capAndClawback(b, qualifiesAt: qualifiesAt, cancelled: cancelled, explanation: &explanation)
    }

    /// Arrears that last to the deadline (`max(hold end, window end)`): never paid, or paid after it.
    func inArrearsAtDeadline(
        _ deadline: Instant, paidAfterIt: Bool, cancelled: Instant?, stage: Stage, explanation: inout Explanation
    ) -> RuleOutcome {
        explanation.add("arrears_deadline", deadline)
        // cancelled_in_arrears: cancelled, still unpaid, before the deadline
        if let c = cancelled, c <= deadline {
            explanation.say(
                "arrears", "The friend was in arrears from the end of the hold and cancelled before paying.")
            return .lost(reason: "cancelled_in_arrears")
        }
        // in_arrears_past_window
        if now >= deadline || paidAfterIt {
            explanation.say("arrears", "The friend was still in arrears when the window closed.")
            return .expired(reason: "in_arrears_past_window")
        }
        explanation.say(
            "arrears",
            "The hold is over but the friend is in arrears; qualification resumes once paid, until \(deadline).")
        return .pending(stage: stage, wake: deadline)
    }

    /// Qualified at `qualifiesAt`: the yearly cap and clawback decide which rewards stand.
    ///
    /// yearly_cap: the cap counts, per referrer and UTC year of the milestone, the referrals that
    /// reached their milestone inside their window (by milestone time, then lead id) — whatever
    /// became of them afterwards. That set only grows as facts arrive, so a late fact can take a
    /// slot away (compensated by a reversal) but never hand it back, which would need a second
    /// reward id for the same (referral, beneficiary).
    func capAndClawback(
        _ b: ReferralBinding, qualifiesAt: Instant, cancelled: Instant?, explanation: inout Explanation
    ) -> RuleOutcome {
        let p = b.program
        let earlier = competition.capEarlier[b.leadId] ?? 0
        let capped = earlier >= p.limits.maxRewardsPerReferrerPerYear
        explanation.add(
            "referrer_slot_in_year",
            capped
                ? "past \(p.limits.maxRewardsPerReferrerPerYear)"
                : "\(earlier + 1) of \(p.limits.maxRewardsPerReferrerPerYear)")
        // clawback: cancelled in (q, q + clawback_window]
        let clawed = cancelled.map { $0 > qualifiesAt && $0 <= qualifiesAt + p.clawbackWindow } ?? false
        if clawed {
            explanation.say(
                "clawback",
                "The friend cancelled within the \(p.clawbackWindow) clawback window after qualifying; clawback mode \(p.clawback.rawValue)."
            )
        } else if capped {
            explanation.say(
                "limits.max_rewards_per_referrer_per_year",
                "Qualified; the referrer already had \(p.limits.maxRewardsPerReferrerPerYear) referrals reach their milestone this year, so only the friend is rewarded."
            )
        } else {
            explanation.say(
                "qualify",
                "Qualified at \(qualifiesAt): \(p.qualify.milestone.rawValue) inside the window, \(p.qualify.hold) hold served, not in arrears."
            )
        }
        return .qualified(at: qualifiesAt, referrerCapped: capped, clawedBack: clawed)
    }
}
