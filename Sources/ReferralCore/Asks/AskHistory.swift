/// One account's ask facts, reduced to what the rules use. Firsts are minima by fact time, so
/// duplicates and late copies never move them.
struct AskHistory {
    var installedAt: Instant?
    var activatedAt: Instant?
    var cancelledAt: Instant?
    var erasedAt: Instant?
    var firstAskAt: Instant?
    /// Times of speed tests at or above 90 % of plan speed.
    var goodSpeedTests: Set<Instant> = []
    var ticketsOpened: [String: Instant] = [:]
    var ticketsResolved: [String: Instant] = [:]
    /// Per ticket: its earliest resolution rated 4 or 5.
    var supportWins: [String: Instant] = [:]
    var preferences: [(at: Instant, on: Bool)] = []
    var overdue: [String: Instant] = [:]
    var paid: [String: Instant] = [:]
    /// Per invoice: its earliest payment with credits.
    var savings: [String: Instant] = [:]
    /// Times of the facts that can start or end a temporary hold (tickets, preferences,
    /// invoices), sorted: a fact dated ahead of our clock takes effect at its time.
    var holdChanges: [Instant] = []

    init(_ facts: [AskFact], accountId: String) {
        func first(_ old: Instant?, _ new: Instant) -> Instant { min(old ?? new, new) }
        for f in facts where f.accountId == accountId {
            switch f.kind {
            case .installCompleted: installedAt = first(installedAt, f.at)
            case .serviceActivated: activatedAt = first(activatedAt, f.at)
            case .serviceCancelled: cancelledAt = first(cancelledAt, f.at)
            case .customerErased: erasedAt = first(erasedAt, f.at)
            case .enrolled(let t): firstAskAt = first(firstAskAt, t)
            case .speedTest(let measured, let plan):
                // ≥ 90 % in exact terms: 450 of 500 qualifies, without a 0.9 * 500 rounding doubt.
                if measured * 10 >= plan * 9 { goodSpeedTests.insert(f.at) }
            case .ticketOpened(let t):
                ticketsOpened[t] = first(ticketsOpened[t], f.at)
                holdChanges.append(f.at)
            case .ticketResolved(let t, let csat):
                ticketsResolved[t] = first(ticketsResolved[t], f.at)
                holdChanges.append(f.at)
                if let csat, csat >= 4 { supportWins[t] = first(supportWins[t], f.at) }
            case .preferencesChanged(let on):
                preferences.append((f.at, on))
                holdChanges.append(f.at)
            case .invoiceOverdue(let i):
                overdue[i] = first(overdue[i], f.at)
                holdChanges.append(f.at)
            case .invoicePaid(let i, let credits):
                paid[i] = first(paid[i], f.at)
                holdChanges.append(f.at)
                if let credits, credits > 0 { savings[i] = first(savings[i], f.at) }
            }
        }
        holdChanges.sort()
    }

    /// Cancellation and erasure: final as soon as known, whatever their date. A cancelled
    /// customer is leaving (contract: "the account's pending asks are cancelled"), and an erased
    /// one asked for nothing to follow; a future-dated cancellation must not let asks through.
    var final: AskHoldReason? {
        if erasedAt != nil { return .erased }
        if cancelledAt != nil { return .cancelled }
        return nil
    }

    /// The temporary hold in force at `t`, judged on fact times.
    func hold(at t: Instant) -> AskHoldReason? {
        // The latest preference at or before t; at equal times "off" wins: when in doubt, don't ask.
        var latest: (at: Instant, on: Bool)?
        for p in preferences where p.at <= t {
            if let l = latest, p.at < l.at || (p.at == l.at && p.on) { continue }
            latest = p
        }
        if latest?.on == false { return .optedOut }
        // A ticket is open on [opened, resolved): "until crm.ticket.resolved for it". A
        // resolution dated before the opening (CRM clocks and offsets disagree; see the
        // `+05:30` resolution fixture) closes it too: reading the later opening as a reopen
        // would leave the account unaskable for good on a clock error.
        for (ticket, opened) in ticketsOpened where opened <= t {
            if let r = ticketsResolved[ticket], r <= t { continue }
            return .openTicket
        }
        // In arrears on [overdue, paid) per invoice, the intervals the lifecycle uses.
        for (invoice, from) in overdue where from <= t {
            if let p = paid[invoice], p <= t { continue }
            return .inArrears
        }
        return nil
    }
}
