/// Tuning of the ask rules that the programs file does not carry (the contract fixes the keys of
/// its `asks:` section).
public struct AskPolicy: Hashable, Sendable {
    /// How long after its due time a moment's ask may still go out. An ask held back (open
    /// ticket, arrears, opted out, `min_gap`, `max_per_year`, no code yet, worker down) goes out
    /// as soon as nothing holds it any more, but only within this span: "great speed test!"
    /// three weeks after the test reads as a glitch. Default 7 days.
    public var freshness: Span

    public init(freshness: Span = .days(7)) { self.freshness = freshness }
}

/// An ask that went out, as the store records it: the input of every later decision
/// (`min_gap` and `max_per_year` are judged on `sentAt`, periodic asks restart from it).
public struct SentAsk: Hashable, Sendable {
    /// `ReferralAsks.key`: the store's unique key for asks.
    public var key: String
    public var moment: AskMoment
    public var dueAt: Instant
    public var sentAt: Instant

    public init(key: String, moment: AskMoment, dueAt: Instant, sentAt: Instant) {
        self.key = key
        self.moment = moment
        self.dueAt = dueAt
        self.sentAt = sentAt
    }
}

/// Why an ask is held back or was skipped, for explanations and metrics (the raw values are the
/// labels they carry).
public enum AskHoldReason: String, Hashable, Sendable, CaseIterable {
    /// `crm.customer.erased` is known: no ask ever follows.
    case erased
    /// `provisioning.service.cancelled` is known: the account's pending asks are cancelled.
    case cancelled
    /// The latest `crm.preferences.changed` at that time said `referral_prompts: false`.
    case optedOut = "opted_out"
    /// A ticket of the account was open at that time.
    case openTicket = "open_ticket"
    /// An overdue invoice of the account was unpaid at that time.
    case inArrears = "in_arrears"
    /// The account has no referral code yet (codes come with the first activation).
    case noCode = "no_code"
    /// Another ask was sent less than `min_gap` before (or after) that time.
    case minGap = "min_gap"
    /// `max_per_year` asks were already sent in the rolling year.
    case maxPerYear = "max_per_year"
    /// The program's commitment for the UTC month reached `budget.pause_asks_at`: the ask waits
    /// for the account's release time in the next month (`AskBudgetHold`), if still fresh then.
    case budget
    /// Nothing held it back when it was due, yet it was not sent within the freshness span
    /// (the worker was down, or the fact arrived too late).
    case stale
}

/// What one decision says about one ask occurrence.
public struct AskConsideration: Hashable, Sendable {
    public var key: String
    public var moment: AskMoment
    public var dueAt: Instant
    /// `dueAt` + freshness: after this it is skipped.
    public var expiresAt: Instant
    public var status: Status

    public enum Status: Hashable, Sendable {
        /// The ask this decision sends.
        case sendingNow
        /// Not due yet.
        case scheduled
        /// Due, still fresh and allowed, but one ask per decision: it goes on the next one
        /// (only happens with `min_gap: 0s`, `nextWakeup` is then `now`).
        case ready
        /// Due and still fresh, held for the reason given. `until`: when time alone lifts (`min_gap`,
        /// `max_per_year`) or may lift (a stored fact dated ahead of `now`) the hold; nil when
        /// only a new fact can, such as a ticket resolved or an invoice paid.
        case waiting(AskHoldReason, until: Instant?)
        /// Will never be sent. For stale asks, the rule that held it when it was due (or
        /// `stale` when none did); for cancelled and erased accounts, that rule.
        case skipped(AskHoldReason)
    }
}

/// An ask to publish now: record `record` under `key` (unique) in the same transaction as the
/// outbox row of `event(id:)`; if the key is already there, another instance or an earlier
/// delivery sent it, and nothing is published.
public struct PlannedAsk: Hashable, Sendable {
    public var key: String
    public var accountId: String
    public var moment: AskMoment
    public var dueAt: Instant
    /// The decision's `now`.
    public var sentAt: Instant
    public var code: ReferralCode
    public var shareURL: String
    public var friendOfferText: String

    public var record: SentAsk { SentAsk(key: key, moment: moment, dueAt: dueAt, sentAt: sentAt) }

    /// `referral.ask.due`, dated by the send time: messaging acts on it now, and an envelope
    /// dated at an old due time would look like a replay to its own staleness checks.
    public func event(id: String) -> OutgoingEvent {
        .askDue(
            id: id, time: sentAt, accountId: accountId, moment: moment, code: code, shareURL: shareURL,
            friendOfferText: friendOfferText)
    }
}

public struct AskInput: Sendable {
    public var accountId: String
    /// Every stored ask fact of the account, any order, duplicates allowed. Facts of other
    /// accounts are ignored, so a broad store query cannot leak another account's ticket in.
    public var facts: [AskFact]
    /// The program of the account's segment (`ReferralAsks.segment(of:)`); nil when there is
    /// none, and then nothing is asked.
    public var program: Program?
    /// The account's canonical code, nil until one is issued.
    public var code: ReferralCode?
    /// Every ask already sent to the account.
    public var sent: [SentAsk]
    public var now: Instant
    public var policy: AskPolicy
    /// Set when the program's budget holds its asks at `now` (`ProgramBudget.hold`). It is known
    /// only at `now`: an ask that went stale earlier is reported by the rule that held it then.
    public var budgetHold: AskBudgetHold?

    public init(
        accountId: String, facts: [AskFact], program: Program?, code: ReferralCode?, sent: [SentAsk],
        now: Instant, policy: AskPolicy = .init(), budgetHold: AskBudgetHold? = nil
    ) {
        self.accountId = accountId
        self.facts = facts
        self.program = program
        self.code = code
        self.sent = sent
        self.now = now
        self.policy = policy
        self.budgetHold = budgetHold
    }
}

public struct AskDecision: Sendable {
    /// At most one ask per decision.
    public var send: PlannedAsk?
    /// Every ask occurrence known for the account and not sent before this decision, by due
    /// time then key. Skipped ones are listed at every decision: to count each skip once, keep
    /// their keys (insert, ignore conflicts, count what was inserted).
    public var considered: [AskConsideration]
    /// The durable timer, computed as if `send` was recorded: when a moment falls due or a hold
    /// lifts by time alone (`min_gap`, `max_per_year`). At or after `now`; equal to `now` only
    /// when another ask may go at once (`min_gap: 0s`). Nil: only a new fact can change anything.
    public var nextWakeup: Instant?
}

/// The ask rules as one pure function of an account's facts, its sent asks and the clock.
///
/// **When each moment is due** (only moments listed in the program's `asks.moments` exist):
/// * `post_install`: first install (by fact time) + `delay_after_install`. Once per account.
/// * `post_activation`: at the first activation. Once per account, and only for accounts
///   without a completed install when `post_install` is enabled: activation follows the
///   technician's visit by minutes, and asking then would defeat `delay_after_install`, whose
///   point is to let the customer try the service first. (If the activation ask went out before
///   a late install fact arrived, the install ask is just one more candidate under `min_gap`.)
/// * `speed_test`: at the test's time, for a test at or above 90 % of plan speed; one per test.
/// * `support_win`: at the ticket's resolution with CSAT 4-5; one per ticket.
/// * `bill_savings`: at the payment of an invoice with `credits_minor` > 0; one per invoice.
/// * `periodic`: every `periodic_every` after the *last ask sent* — or, before any, after the
///   first activation (an enrolled account: at its `firstAskAt`, then every period). Counting
///   from the last ask makes periodic the fallback it is meant to be: a customer asked after a
///   speed test is not asked again "periodically" a few weeks later. Only the latest grid point
///   at or before `now` is a candidate, so a long suppression never leaves a backlog of them.
///
/// **Holds are checked when the ask would go out** (at `now`, not when it was scheduled), and
/// an ask that is held *waits* rather than being skipped outright, but only within
/// `AskPolicy.freshness` of its due time; after that it is skipped and never counted. The holds:
/// opted out, an open ticket, arrears (each judged on fact times at that instant: the latest
/// preference, each ticket's latest open/resolve event, `[overdue, paid)` per invoice as the
/// lifecycle reads arrears), no code yet, the program's monthly budget (`AskInput.budgetHold`,
/// known at `now` only), `min_gap`, `max_per_year`. Cancellation and erasure
/// are final once known, whatever their date: every pending ask is skipped.
///
/// **min_gap** is judged between *send* times, so a backlog (after an outage, or facts dated in
/// the past) goes out one ask now and the next no earlier than `min_gap` later, if still fresh.
/// **max_per_year** counts sends in a rolling window of 366 days (`yearWindow`): rolling, so
/// December and January cannot stack two years' allowance back to back; 366 days, one more
/// than a common year, so that every calendar year (leap or not) lies inside one window and the
/// limit holds per calendar year too.
///
/// **Several due together**: one ask, the strongest moment by `strength`, then the most recent
/// occurrence, then the key; the others wait as above.
public enum ReferralAsks {
    /// Strongest first. A resolved ticket rated 4-5 is the most recent *personal* proof that the
    /// provider treats the customer well, and fades fastest; a measured speed test is concrete
    /// proof of the product but impersonal; bill savings are real money but arrive on a routine
    /// invoice; activation and install are onboarding, before the customer has lived with the
    /// service (activation, the later of the two, first); periodic is the fallback with no
    /// moment behind it at all.
    public static let strength: [AskMoment] = AskMoment.allCases.sorted { rank($0) < rank($1) }

    /// A moment's place in `strength`: a switch, so a new moment cannot be left unranked.
    static func rank(_ moment: AskMoment) -> Int {
        switch moment {
        case .supportWin: 0
        case .speedTest: 1
        case .billSavings: 2
        case .postActivation: 3
        case .postInstall: 4
        case .periodic: 5
        }
    }

    /// The rolling window of `max_per_year`.
    public static let yearWindow: Span = .days(366)

    /// The store's unique key for an ask: `ask:<account>:<moment>[:<occurrence>]`. The occurrence
    /// names *what happened*, not a computed due time, so a redelivery, a replay, a late
    /// duplicate with a different time, or two instances deciding at once all name the same ask:
    /// none for the once-per-account moments, the test time for `speed_test`, the ticket id for
    /// `support_win`, the invoice id for `bill_savings`, the due time for `periodic` (its grid is
    /// fixed by the last ask sent). Ids are escaped (`%` and `:`), so no account or ticket id can
    /// forge another's key.
    public static func key(accountId: String, moment: AskMoment, occurrence: String?) -> String {
        var k = "ask:\(escapeKeyPart(accountId)):\(moment.rawValue)"
        if let occurrence { k += ":" + occurrence }
        return k
    }

    /// The segment whose program governs the account: the first activation's (earliest by fact
    /// time, ties to the smaller name, as the lifecycle reads it), `consumer` when none is known.
    public static func segment(of facts: [AskFact]) -> Segment {
        var first: (at: Instant, segment: Segment?)?
        for f in facts {
            guard case .serviceActivated(let s) = f.kind else { continue }
            if first.map({ f.at < $0.at }) ?? true {
                first = (f.at, s)
            } else if f.at == first?.at, let s, first?.segment.map({ s.rawValue < $0.rawValue }) ?? true {
                first = (f.at, s)
            }
        }
        return first?.segment ?? .consumer
    }

    public static func decide(_ input: AskInput) -> AskDecision {
        guard let program = input.program else { return AskDecision(send: nil, considered: [], nextWakeup: nil) }
        let history = AskHistory(input.facts, accountId: input.accountId)
        let rules = AccountAskRules(input: input, program: program, history: history)
        let first = rules.evaluate(sent: input.sent)
        guard let best = first.eligible.min(by: rules.stronger), let code = input.code else {
            return AskDecision(send: nil, considered: rules.ordered(first.considered), nextWakeup: first.wake)
        }
        let planned = PlannedAsk(
            key: best.key, accountId: input.accountId, moment: best.moment, dueAt: best.due,
            sentAt: input.now, code: code, shareURL: program.shareURL(code: code.canonical),
            friendOfferText: program.friendOfferText)
        // Re-evaluate as if the ask was recorded, so that the report and the timer describe the
        // state the worker stores along with it.
        let after = rules.evaluate(sent: input.sent + [planned.record])
        let mine = AskConsideration(
            key: best.key, moment: best.moment, dueAt: best.due,
            expiresAt: best.due + input.policy.freshness, status: .sendingNow)
        return AskDecision(send: planned, considered: rules.ordered(after.considered + [mine]), nextWakeup: after.wake)
    }
}

func escapeKeyPart(_ s: String) -> String {
    var out = ""
    for ch in s.unicodeScalars {
        switch ch {
        case "%": out += "%25"
        case ":": out += "%3A"
        default: out.unicodeScalars.append(ch)
        }
    }
    return out
}
