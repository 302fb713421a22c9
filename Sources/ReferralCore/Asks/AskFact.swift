/// Something about one account that the ask rules look at, with its own fact time `at` (the
/// data's time field, else the envelope `time`). Kept apart from the lifecycle's `Fact`: speed
/// tests, tickets, preferences and invoice credits matter to asks only, and the lifecycle's
/// order-independence argument should not have to cover them.
///
/// Facts are only ever added; two deliveries of one event give equal values, so storing them as
/// a set (or with a unique key on every field) gives "twice has the effect of once".
/// Raw measurements are kept (every speed test, every paid invoice): thresholds are applied by
/// the rules, so a stored fact never encodes a rule that might change.
public struct AskFact: Hashable, Sendable {
    public var accountId: String
    public var at: Instant
    public var kind: Kind

    public init(accountId: String, at: Instant, kind: Kind) {
        self.accountId = accountId
        self.at = at
        self.kind = kind
    }

    public enum Kind: Hashable, Sendable {
        case installCompleted
        case serviceActivated(segment: Segment?)
        case serviceCancelled
        case speedTest(measuredDownMbps: Double, planDownMbps: Double)
        case ticketOpened(ticketId: String)
        /// `csat` 1-5, nil when the customer did not answer.
        case ticketResolved(ticketId: String, csat: Int?)
        case preferencesChanged(referralPrompts: Bool)
        case invoiceOverdue(invoiceId: String)
        case invoicePaid(invoiceId: String, creditsMinor: Int64?)
        case customerErased
        /// `referrald enroll` brought an existing customer into the programme: its periodic asks
        /// start at `firstAskAt` (spread by `Enrolment.firstAskInstant`) instead of one period
        /// after an activation that may be years old.
        case enrolled(firstAskAt: Instant)
    }

    /// The ask fact a consumed event carries, or nil for types the ask rules ignore (leads,
    /// orders, install bookings, credit answers). Fact time: `completed_at`, `activated_at`,
    /// `cancelled_at` where the data has them, else the envelope `time`.
    public static func from(_ event: InboundEvent) -> AskFact? {
        switch event.payload {
        case .installCompleted(let d):
            return AskFact(accountId: d.accountId, at: d.completedAt, kind: .installCompleted)
        case .serviceActivated(let d):
            return AskFact(accountId: d.accountId, at: d.activatedAt, kind: .serviceActivated(segment: d.segment))
        case .serviceCancelled(let d):
            return AskFact(accountId: d.accountId, at: d.cancelledAt, kind: .serviceCancelled)
        case .speedtestCompleted(let d):
            return AskFact(
                accountId: d.accountId, at: event.time,
                kind: .speedTest(measuredDownMbps: d.measuredDownMbps, planDownMbps: d.planDownMbps))
        case .ticketOpened(let d):
            return AskFact(accountId: d.accountId, at: event.time, kind: .ticketOpened(ticketId: d.ticketId))
        case .ticketResolved(let d):
            return AskFact(
                accountId: d.accountId, at: event.time, kind: .ticketResolved(ticketId: d.ticketId, csat: d.csat))
        case .preferencesChanged(let d):
            return AskFact(
                accountId: d.accountId, at: event.time, kind: .preferencesChanged(referralPrompts: d.referralPrompts))
        case .invoiceOverdue(let d):
            return AskFact(accountId: d.accountId, at: event.time, kind: .invoiceOverdue(invoiceId: d.invoiceId))
        case .invoicePaid(let d):
            return AskFact(
                accountId: d.accountId, at: event.time,
                kind: .invoicePaid(invoiceId: d.invoiceId, creditsMinor: d.creditsMinor))
        case .customerErased(let d):
            return AskFact(accountId: d.accountId, at: event.time, kind: .customerErased)
        case .leadCreated, .orderPlaced, .installScheduled, .creditApplied, .creditRejected:
            return nil
        }
    }
}
