/// What a received event says to the lifecycle: the same reading for the batch transaction
/// (which stores it), the lanes' dispatch (which locks it) and `simulate` (which replays it), so
/// that the three cannot disagree on which keys an event touches.
extension InboundEvent {
    /// The lifecycle facts the event carries: its fact, and for an activation that names a
    /// plan, the plan (`Fact.planChosen`); none for types the lifecycle does not use.
    public var lifecycleFacts: [Fact] {
        guard let f = lifecycleFact else { return [] }
        if case .serviceActivated(let p) = payload, let plan = p.planId {
            return [f, .planChosen(accountId: p.accountId, planId: plan, at: p.activatedAt)]
        }
        return [f]
    }

    /// The sales channel of each lead among `events`, keyed by the lead's lifecycle fact: the
    /// store writes it on the fact's row (`facts.channel`) for the report. Beside the fact rather
    /// than in it: no rule reads it, so facts that differ only by channel stay equal and no
    /// decision can come to depend on it (nor the dozens of matches on `Fact.leadCreated` change).
    public static func leadChannels(_ events: [InboundEvent]) -> [Fact: LeadChannel] {
        var channels: [Fact: LeadChannel] = [:]
        for e in events {
            if case .leadCreated(let p) = e.payload, let channel = p.channel, let fact = e.lifecycleFact {
                channels[fact] = channel
            }
        }
        return channels
    }

    /// The lifecycle fact the event carries; nil for types the lifecycle does not use.
    public var lifecycleFact: Fact? {
        switch payload {
        case .leadCreated(let p):
            return .leadCreated(
                leadId: p.leadId, at: time, code: p.code?.canonical, householdId: p.householdId,
                contactHash: p.contactHash, segment: p.segment)
        case .orderPlaced(let p): return .orderPlaced(leadId: p.leadId, accountId: p.accountId, at: time)
        case .installCompleted(let p): return .installCompleted(accountId: p.accountId, at: p.completedAt)
        case .serviceActivated(let p):
            return .serviceActivated(
                accountId: p.accountId, at: p.activatedAt, householdId: p.householdId,
                contactHash: p.contactHash, segment: p.segment)
        case .serviceCancelled(let p): return .serviceCancelled(accountId: p.accountId, at: p.cancelledAt)
        case .invoiceOverdue(let p): return .invoiceOverdue(accountId: p.accountId, invoiceId: p.invoiceId, at: time)
        case .invoicePaid(let p):
            return .invoicePaid(accountId: p.accountId, invoiceId: p.invoiceId, sequence: p.sequence, at: time)
        case .creditApplied(let p):
            return .creditApplied(
                rewardId: p.rewardId, accountId: p.accountId, amountMinor: p.amountMinor,
                currency: p.currency, at: time)
        case .creditRejected(let p): return .creditRejected(rewardId: p.rewardId, reason: p.reason, at: time)
        case .customerErased(let p): return .customerErased(accountId: p.accountId, at: time)
        case .installScheduled, .speedtestCompleted, .ticketResolved, .preferencesChanged, .ticketOpened:
            return nil
        }
    }

    /// The account the event is about: its lifecycle fact's (`fact`, already derived by the
    /// caller), or for the types the lifecycle does not use, the account they name.
    public func accountId(fact: Fact?) -> String? {
        switch payload {
        case .installScheduled(let p): p.accountId
        case .speedtestCompleted(let p): p.accountId
        case .ticketResolved(let p): p.accountId
        case .preferencesChanged(let p): p.accountId
        case .ticketOpened(let p): p.accountId
        default: fact?.accountId
        }
    }
}
