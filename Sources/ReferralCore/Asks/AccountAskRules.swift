/// An ask occurrence the facts and the program define.
struct AskCandidate {
    var key: String
    var moment: AskMoment
    var due: Instant
}

/// What the ask rules say about every candidate at `now`, given the asks sent.
struct AskEvaluation {
    var considered: [AskConsideration] = []
    var eligible: [AskCandidate] = []
    var wake: Instant?

    mutating func wake(at t: Instant) { wake = min(wake ?? t, t) }
}

/// The ask rules bound to one account: its history, its program and the decision's clock.
struct AccountAskRules {
    let input: AskInput
    let program: Program
    let history: AskHistory

    var now: Instant { input.now }
    var freshness: Span { input.policy.freshness }

    func stronger(_ a: AskCandidate, _ b: AskCandidate) -> Bool {
        let ra = ReferralAsks.rank(a.moment)
        let rb = ReferralAsks.rank(b.moment)
        if ra != rb { return ra < rb }
        if a.due != b.due { return a.due > b.due }
        return a.key < b.key
    }

    func ordered(_ list: [AskConsideration]) -> [AskConsideration] {
        list.sorted { $0.dueAt != $1.dueAt ? $0.dueAt < $1.dueAt : $0.key < $1.key }
    }

    /// Every ask occurrence the facts and the program define, minus those already sent.
    func candidates(sent: [SentAsk]) -> [AskCandidate] {
        let rules = program.asks
        let h = history
        var out: [AskCandidate] = []
        // Linear scans: an account has a handful of moments and sent asks, and building sets
        // for them on every decision costs more than it saves.
        func add(_ moment: AskMoment, _ occurrence: String?, _ due: Instant) {
            guard rules.moments.contains(moment) else { return }
            let key = ReferralAsks.key(accountId: input.accountId, moment: moment, occurrence: occurrence)
            if !sent.contains(where: { $0.key == key }) { out.append(AskCandidate(key: key, moment: moment, due: due)) }
        }
        if let i = h.installedAt { add(.postInstall, nil, i + rules.delayAfterInstall) }
        if let a = h.activatedAt, !(rules.moments.contains(.postInstall) && h.installedAt != nil) {
            add(.postActivation, nil, a)
        }
        for t in h.goodSpeedTests { add(.speedTest, t.rfc3339, t) }
        for (ticket, t) in h.supportWins { add(.supportWin, escapeKeyPart(ticket), t) }
        for (invoice, t) in h.savings { add(.billSavings, escapeKeyPart(invoice), t) }
        if let a = h.activatedAt {
            let every = rules.periodicEvery
            let start: Instant
            if let last = sent.map(\.sentAt).max() {
                start = max(last, a) + every
            } else {
                start = h.firstAskAt ?? (a + every)
            }
            if now < start {
                add(.periodic, start.rfc3339, start)
            } else {
                // The latest grid point at or before now (a candidate while fresh) and the next.
                let k = (now - start).microseconds / every.microseconds
                let latest = start + every * k
                add(.periodic, latest.rfc3339, latest)
                add(.periodic, (latest + every).rfc3339, latest + every)
            }
        }
        return out
    }

    /// What holds every ask of the account at `t`, and until when time alone would keep it held.
    func hold(at t: Instant, sent: [SentAsk]) -> (reason: AskHoldReason, until: Instant?)? {
        if let h = history.hold(at: t) {
            // Only a new fact lifts a hold, or a stored one dated after t (a producer clock
            // ahead of ours): wake up then to look again.
            return (h, history.holdChanges.first { $0 > t })
        }
        if input.code == nil { return (.noCode, nil) }
        // Before min_gap and max_per_year: those are judged again when the hold lifts.
        if let b = input.budgetHold, t >= now { return (.budget, b.release) }
        let gap = program.asks.minGap.microseconds
        let near = sent.filter { abs($0.sentAt.microseconds - t.microseconds) < gap }
        if let lift = near.map({ $0.sentAt + program.asks.minGap }).max() { return (.minGap, lift) }
        let limit = program.asks.maxPerYear
        let inYear = sent.map(\.sentAt).filter { $0 > t - ReferralAsks.yearWindow }.sorted()
        if inYear.count >= limit {
            // The window frees a place when the (n - limit + 1)-th send of it leaves it.
            return (.maxPerYear, limit == 0 ? nil : inYear[inYear.count - limit] + ReferralAsks.yearWindow)
        }
        return nil
    }

    func evaluate(sent: [SentAsk]) -> AskEvaluation {
        var e = AskEvaluation()
        let all = candidates(sent: sent)
        let heldNow = hold(at: now, sent: sent)
        for c in all {
            let expires = c.due + freshness
            let status: AskConsideration.Status
            if let final = history.final {
                status = .skipped(final)
            } else if c.due > now {
                status = .scheduled
                e.wake(at: c.due)
            } else if now > expires {
                status = .skipped(hold(at: c.due, sent: sent)?.reason ?? .stale)
            } else if let held = heldNow, held.reason == .budget, let b = input.budgetHold {
                // Looked at again at the account's release, or earlier when it would be stale by
                // then; one that goes stale before the month turns cannot be saved.
                let u = b.release(expiring: expires)
                status = .waiting(.budget, until: u)
                if u <= expires { e.wake(at: u) }
            } else if let held = heldNow {
                status = .waiting(held.reason, until: held.until)
                if let u = held.until, u <= expires { e.wake(at: u) }
            } else {
                status = .ready
                e.eligible.append(c)
                e.wake(at: now)
            }
            e.considered.append(
                AskConsideration(key: c.key, moment: c.moment, dueAt: c.due, expiresAt: expires, status: status))
        }
        return e
    }
}
