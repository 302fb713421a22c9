/// A lead's facts. When provisioning sent conflicting versions of one lead, the earliest (then
/// smallest) wins, so the choice does not depend on which arrived first.
struct LeadInfo {
    var at: Instant
    var code: String?
    var household: String?
    var contact: String?

    func precedes(_ o: LeadInfo) -> Bool {
        (at, code ?? "", household ?? "", contact ?? "") < (o.at, o.code ?? "", o.household ?? "", o.contact ?? "")
    }
}

/// One account's facts, reduced to what the rules use. Firsts are minima by fact time, so a
/// duplicate or a late copy never moves them.
struct AccountInfo {
    var activatedAt: Instant?
    var segment: Segment?
    var households: Set<String> = []
    var contacts: Set<String> = []
    var installedAt: Instant?
    var cancelledAt: Instant?
    var firstPaidAt: Instant?
    var overdue: [String: Instant] = [:]
    var paid: [String: Instant] = [:]
    var erased = false
    /// The plans named at the earliest instant any activation named one.
    var plansAt: Instant?
    var plans: Set<String> = []

    /// The first instant at or after `t` at which the account is not in arrears: in arrears on
    /// `[overdue, paid)` of each invoice, so the end of the run of such intervals that covers
    /// `t`, or `t` itself when none does. Nil when an invoice of that run is still unpaid.
    func outOfArrears(from t: Instant) -> Instant? {
        // An invoice paid at or before it fell overdue was never in arrears.
        let intervals = overdue.compactMap { invoice, start -> (start: Instant, end: Instant?)? in
            let end = paid[invoice]
            if let end, end <= start { return nil }
            return (start, end)
        }
        // By start time, one pass: an interval that starts after the instant reached cannot
        // cover it, and neither can any later one, which starts later still.
        var clear = t
        for interval in intervals.sorted(by: { $0.start < $1.start }) {
            guard interval.start <= clear else { break }
            guard let end = interval.end else { return nil }
            clear = max(clear, end)
        }
        return clear
    }

    /// The plans of the first activation (empty when it named none): what `by_plan` reads.
    var firstPlans: Set<String?> {
        guard let first = activatedAt else { return [] }
        return plansAt == first ? Set(plans.map { Optional($0) }) : [nil]
    }
}

/// Every fact of a decision's neighbourhood, reduced to what the rules read, whatever the
/// order and however many copies of each arrived.
struct FactIndex {
    var leads: [String: LeadInfo] = [:]
    var orders: [String: (accountId: String, at: Instant)] = [:]
    var accounts: [String: AccountInfo] = [:]
    var applied: [String: Set<Application>] = [:]
    var rejections: [String: Set<Rejection>] = [:]
    /// Leads whose referral an operator rejected; rewards an operator reversed.
    var operatorRejected: Set<String> = []
    var operatorReversed: Set<String> = []

    struct Application: Hashable {
        var accountId: String
        var amountMinor: Int64
        var currency: String
    }
    struct Rejection: Hashable {
        var at: Instant
        var reason: String
    }

    init(_ facts: [Fact]) {
        for fact in facts {
            switch fact {
            case .leadCreated(let id, let at, let code, let hh, let contact, _):
                let info = LeadInfo(at: at, code: code, household: hh, contact: contact)
                if let old = leads[id], !info.precedes(old) { break }
                leads[id] = info
            case .orderPlaced(let lead, let account, let at):
                if let old = orders[lead], (old.at, old.accountId) <= (at, account) { break }
                orders[lead] = (account, at)
            case .installCompleted(let a, let at):
                accounts[a, default: .init()].installedAt = min(at, accounts[a]?.installedAt ?? at)
            case .serviceActivated(let a, let at, let hh, let contact, let segment):
                var info = accounts[a, default: .init()]
                if let first = info.activatedAt, first <= at {
                    if first == at, let s = segment, info.segment.map({ s.rawValue < $0.rawValue }) ?? true {
                        info.segment = s
                    }
                } else {
                    info.activatedAt = at
                    info.segment = segment
                }
                if let hh { info.households.insert(hh) }
                if let contact { info.contacts.insert(contact) }
                accounts[a] = info
            case .serviceCancelled(let a, let at):
                accounts[a, default: .init()].cancelledAt = min(at, accounts[a]?.cancelledAt ?? at)
            case .invoiceOverdue(let a, let invoice, let at):
                accounts[a, default: .init()].overdue[invoice] = min(at, accounts[a]?.overdue[invoice] ?? at)
            case .invoicePaid(let a, let invoice, let sequence, let at):
                accounts[a, default: .init()].paid[invoice] = min(at, accounts[a]?.paid[invoice] ?? at)
                if sequence == 1 { accounts[a, default: .init()].firstPaidAt = min(at, accounts[a]?.firstPaidAt ?? at) }
            case .creditApplied(let reward, let a, let amount, let currency, _):
                applied[reward, default: []].insert(.init(accountId: a, amountMinor: amount, currency: currency))
            case .creditRejected(let reward, let reason, let at):
                rejections[reward, default: []].insert(.init(at: at, reason: reason))
            case .customerErased(let a, _):
                accounts[a, default: .init()].erased = true
            case .planChosen(let a, let plan, let at):
                var info = accounts[a, default: .init()]
                if info.plansAt.map({ at < $0 }) ?? true {
                    info.plansAt = at
                    info.plans = []
                }
                if info.plansAt == at { info.plans.insert(plan) }
                accounts[a] = info
            case .operatorRejected(let lead, _):
                operatorRejected.insert(lead)
            case .operatorReversed(let reward, _):
                operatorReversed.insert(reward)
            }
        }
    }

    /// Personal data the rules may use. An erased account's household and contact are no longer
    /// used, even before the store has finished erasing them from its rows.
    func households(of account: String) -> Set<String> {
        guard let a = accounts[account], !a.erased else { return [] }
        return a.households
    }

    func contacts(of account: String) -> Set<String> {
        guard let a = accounts[account], !a.erased else { return [] }
        return a.contacts
    }

    func friendAccount(of lead: String) -> String? { orders[lead]?.accountId }

    /// The lead's own household/contact, unless the friend it turned into was erased.
    func leadPersonal(_ leadId: String) -> (household: String?, contact: String?) {
        guard let lead = leads[leadId] else { return (nil, nil) }
        if let a = friendAccount(of: leadId), accounts[a]?.erased == true { return (nil, nil) }
        return (lead.household, lead.contact)
    }

    /// Who the friend is: their account once an order links it, and every household seen for them.
    func friendKeys(_ leadId: String) -> [String] {
        var keys: [String] = []
        if let a = friendAccount(of: leadId) {
            keys.append("a:\(a)")
            keys += households(of: a).sorted().map { "h:\($0)" }
        }
        if let hh = leadPersonal(leadId).household { keys.append("h:\(hh)") }
        return keys
    }

    func milestone(_ m: Milestone, of account: String?) -> Instant? {
        guard let account, let a = accounts[account] else { return nil }
        switch m {
        case .serviceActivated: return a.activatedAt
        case .firstInvoicePaid: return a.firstPaidAt
        }
    }
}
