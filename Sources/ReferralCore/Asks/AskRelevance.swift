extension ReferralAsks {
    /// The facts of one account that can still change what `decide` sends at `now` or when it
    /// next wakes, out of all of them; everything else only shows as a skipped ask in `explain`.
    ///
    /// Why: an account with an automated daily speed test has a thousand ask facts in year three,
    /// and the worker read and indexed all of them on every event of the account, so its asks
    /// cost more each year. What is kept, and why it is enough (the ask rules below):
    /// - every fact dated at or after `now - freshness`, or ahead of `now`: the only occurrences
    ///   that can still be sent (older ones are stale), and the hold changes ahead of `now`
    ///   that set the wake-up;
    /// - the once-per-account facts (install, activation, cancellation, erasure, enrolment):
    ///   firsts, final states, the segment and the periodic grid;
    /// - every fact of a ticket or invoice with a fact in that window (an occurrence is keyed by
    ///   its earliest resolution or payment, which may be older), and of a ticket still open or
    ///   an invoice still overdue (a hold at `now`): one resolved or paid before the window
    ///   holds nothing at `now`;
    /// - the latest preference before the window (the one in force at `now` if none came since;
    ///   all of those at that instant, since "off" wins a tie).
    ///
    /// `ReferralAsks.decide` gives the same ask to send and the same wake-up on these facts as on
    /// all of them (AskRelevanceTests). The store's windowed query selects the same rows.
    public static func relevantFacts(_ facts: [AskFact], now: Instant, freshness: Span) -> [AskFact] {
        let from = now - freshness
        var recentTickets: Set<String> = []
        var resolved: Set<String> = []
        var recentInvoices: Set<String> = []
        var paid: Set<String> = []
        var lastPreferenceBefore: Instant?
        for f in facts {
            switch f.kind {
            case .ticketOpened(let t):
                if f.at >= from { recentTickets.insert(t) }
            case .ticketResolved(let t, _):
                resolved.insert(t)
                if f.at >= from { recentTickets.insert(t) }
            case .invoiceOverdue(let i):
                if f.at >= from { recentInvoices.insert(i) }
            case .invoicePaid(let i, _):
                paid.insert(i)
                if f.at >= from { recentInvoices.insert(i) }
            case .preferencesChanged:
                if f.at < from { lastPreferenceBefore = max(lastPreferenceBefore ?? f.at, f.at) }
            default:
                break
            }
        }
        return facts.filter { f in
            if f.at >= from { return true }
            switch f.kind {
            case .installCompleted, .serviceActivated, .serviceCancelled, .customerErased, .enrolled: return true
            case .speedTest: return false
            case .ticketOpened(let t): return recentTickets.contains(t) || !resolved.contains(t)
            case .ticketResolved(let t, _): return recentTickets.contains(t)
            case .invoiceOverdue(let i): return recentInvoices.contains(i) || !paid.contains(i)
            case .invoicePaid(let i, _): return recentInvoices.contains(i)
            case .preferencesChanged: return f.at == lastPreferenceBefore
            }
        }
    }
}
