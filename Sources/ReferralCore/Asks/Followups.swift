/// A referral sitting in an in-flight stage (`lead`, `ordered`, `installed`, `activated`) since
/// `enteredAt`: the time of the fact that moved it there.
public struct StageEntry: Hashable, Sendable {
    public var referralId: String
    public var leadId: String
    public var stage: Stage
    public var enteredAt: Instant
    /// `followup.stalled_after` of the program version the referral is bound to.
    public var stalledAfter: Span

    public init(referralId: String, leadId: String, stage: Stage, enteredAt: Instant, stalledAfter: Span) {
        self.referralId = referralId
        self.leadId = leadId
        self.stage = stage
        self.enteredAt = enteredAt
        self.stalledAfter = stalledAfter
    }
}

/// A follow-up to publish now; record `key` (unique) with the outbox row, as for asks.
public struct FollowupDue: Hashable, Sendable {
    public var key: String
    public var referralId: String
    public var leadId: String
    public var stage: Stage
    public var stalledSince: Instant
    /// `stalledSince` + `stalled_after`.
    public var dueAt: Instant
    /// The decision's `now`, the event's time.
    public var sentAt: Instant

    /// `referral.lead.followup_due`.
    public func event(id: String) -> OutgoingEvent {
        // Never nil: `Followups.decide` only emits in-flight stages, the ones the event may name.
        OutgoingEvent.leadFollowupDue(
            id: id, time: sentAt, referralId: referralId, leadId: leadId, stage: stage,
            stalledSince: stalledSince)!
    }
}

public struct FollowupDecision: Sendable {
    /// By referral id.
    public var due: [FollowupDue]
    /// The earliest instant another of the given referrals stalls, strictly after `now`.
    public var nextWakeup: Instant?
    /// The same, per referral.
    public var wakeups: [String: Instant] = [:]
}

/// Follow-ups on stalled referrals, as a pure function of each referral's current stage and the
/// time it entered it.
///
/// One follow-up per stall, and a stall is a (referral, stage): stages only move forward (an
/// `expired` referral revived by a late milestone re-enters the stage the facts give, never an
/// earlier one), so a referral is in a given in-flight stage at most once. The entry *time* is
/// deliberately not in the key: a late fact dated earlier (a second order or activation copy)
/// can move it back, and keying on it would follow the same stall up twice. A referral that
/// moves on and stalls again is in a new stage, hence a new key. End stages (`qualified` and on,
/// `expired`, `lost`...) never stall: the lifecycle already derives `expired` from the window.
public enum Followups {
    /// `followup:<referral>:<stage>`, the store's unique key (ids escaped as in ask keys).
    public static func key(referralId: String, stage: Stage) -> String {
        "followup:\(escapeKeyPart(referralId)):\(stage.rawValue)"
    }

    /// The stage entries of the lifecycle's referral views, dated from the same facts the
    /// lifecycle derived the stages from: lead time, order time, first install, first activation.
    public static func entries(views: [ReferralView], referrals: [ReferralBinding], facts: [Fact]) -> [StageEntry] {
        let idx = FactIndex(facts)
        let bindings = Dictionary(referrals.map { ($0.referralId, $0) }, uniquingKeysWith: { first, _ in first })
        var out: [StageEntry] = []
        for v in views where v.stage.isInFlight {
            guard let binding = bindings[v.referralId] else { continue }
            let friend = v.friendAccountId.flatMap { idx.accounts[$0] }
            let entered: Instant?
            switch v.stage {
            case .lead: entered = idx.leads[v.leadId]?.at
            case .ordered: entered = idx.orders[v.leadId]?.at
            case .installed: entered = friend?.installedAt
            default: entered = friend?.activatedAt
            }
            guard let entered else { continue }
            out.append(
                StageEntry(
                    referralId: v.referralId, leadId: v.leadId, stage: v.stage, enteredAt: entered,
                    stalledAfter: binding.program.followup.stalledAfter))
        }
        return out
    }

    /// - Parameters:
    ///   - entries: the current stage of each referral to look at (one entry per referral).
    ///   - sent: keys of the follow-ups already recorded for them.
    public static func decide(_ entries: [StageEntry], sent: Set<String>, now: Instant) -> FollowupDecision {
        var due: [FollowupDue] = []
        var wakeups: [String: Instant] = [:]
        var taken = sent
        for e in entries where e.stage.isInFlight {
            let key = key(referralId: e.referralId, stage: e.stage)
            // `taken` also guards against an entry listed twice in one call.
            guard !taken.contains(key) else { continue }
            let at = e.enteredAt + e.stalledAfter
            if at <= now {
                taken.insert(key)
                due.append(
                    FollowupDue(
                        key: key, referralId: e.referralId, leadId: e.leadId, stage: e.stage,
                        stalledSince: e.enteredAt, dueAt: at, sentAt: now))
            } else {
                wakeups[e.referralId] = min(wakeups[e.referralId] ?? at, at)
            }
        }
        due.sort { $0.referralId < $1.referralId }
        return FollowupDecision(due: due, nextWakeup: wakeups.values.min(), wakeups: wakeups)
    }
}
