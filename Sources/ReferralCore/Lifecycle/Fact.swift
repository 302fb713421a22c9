/// Something provisioning or billing reports as having happened, in domain terms (the worker maps
/// wire events to facts). Every fact carries its own time `at` — the data's time field, else the
/// envelope `time` — and every window, hold and ranking is measured on these times, never on
/// arrival: that is what makes outcomes independent of delivery order.
///
/// Facts are only ever added. Two deliveries of the same event give equal facts, so storing them
/// as a set gives "twice has the effect of once" for free.
public enum Fact: Sendable, Hashable {
    /// `code` is the canonical referral code, or nil when it was missing, malformed or failed its
    /// check symbol (the lead is then unattributed).
    case leadCreated(
        leadId: String, at: Instant, code: String?, householdId: String?, contactHash: String?, segment: Segment?)
    case orderPlaced(leadId: String, accountId: String, at: Instant)
    case installCompleted(accountId: String, at: Instant)
    case serviceActivated(accountId: String, at: Instant, householdId: String?, contactHash: String?, segment: Segment?)
    case serviceCancelled(accountId: String, at: Instant)
    case invoiceOverdue(accountId: String, invoiceId: String, at: Instant)
    case invoicePaid(accountId: String, invoiceId: String, sequence: Int, at: Instant)
    case creditApplied(rewardId: String, accountId: String, amountMinor: Int64, currency: String, at: Instant)
    case creditRejected(rewardId: String, reason: String, at: Instant)
    case customerErased(accountId: String, at: Instant)
    /// The `plan_id` an activation named, dated as the activation: the friend's plan is that of
    /// their first activation, and rewards paid `by_plan` follow it. A fact of its own, beside the
    /// activation, so that activations stored before plans were (and their effects) stay equal.
    case planChosen(accountId: String, planId: String, at: Instant)
    /// An operator rejected the referral of this lead (`referrald referral reject`), dated when
    /// they did: it ends `rejected` with reason `operator`, and its issued rewards are reversed.
    /// A fact like any other, so every instance, `reconcile` and the oracle decide the same.
    case operatorRejected(leadId: String, at: Instant)
    /// An operator reversed this issued reward (`referrald reward reverse`).
    case operatorReversed(rewardId: String, at: Instant)

    public var at: Instant {
        switch self {
        case .leadCreated(_, let at, _, _, _, _), .orderPlaced(_, _, let at), .installCompleted(_, let at),
            .serviceActivated(_, let at, _, _, _), .serviceCancelled(_, let at), .invoiceOverdue(_, _, let at),
            .invoicePaid(_, _, _, let at), .creditApplied(_, _, _, _, let at), .creditRejected(_, _, let at),
            .customerErased(_, let at), .planChosen(_, _, let at), .operatorRejected(_, let at),
            .operatorReversed(_, let at):
            return at
        }
    }

    /// The account a fact is about, if any (leads have none until an order links them).
    public var accountId: String? {
        switch self {
        case .orderPlaced(_, let a, _), .installCompleted(let a, _), .serviceActivated(let a, _, _, _, _),
            .serviceCancelled(let a, _), .invoiceOverdue(let a, _, _), .invoicePaid(let a, _, _, _),
            .creditApplied(_, let a, _, _, _), .customerErased(let a, _), .planChosen(let a, _, _):
            return a
        case .leadCreated, .creditRejected, .operatorRejected, .operatorReversed:
            return nil
        }
    }

    /// The same fact without personal data (household, contact): what the store keeps after
    /// `crm.customer.erased`. Ids, times and amounts stay, because they are the ledger.
    public var withoutPersonalData: Fact {
        switch self {
        case .leadCreated(let l, let at, let code, _, _, let seg):
            return .leadCreated(leadId: l, at: at, code: code, householdId: nil, contactHash: nil, segment: seg)
        case .serviceActivated(let a, let at, _, _, let seg):
            return .serviceActivated(accountId: a, at: at, householdId: nil, contactHash: nil, segment: seg)
        default:
            return self
        }
    }
}
