/// A program's monthly budget (`budget: { monthly_minor, pause_asks_at }`): it throttles
/// promotion, never payment. What a referral commits of it is derived from its decision
/// (`ReferralView.commitments`); the store keeps those per reward and sums them into counters
/// per program and UTC month; asks of a program whose month has reached `pause_asks_at` are held
/// (`AskHoldReason.budget`) and re-planned over the first days of the next month.
public enum ProgramBudget {
    /// The span over which held asks are released after the month's turn. Releasing every held
    /// ask at 00:00 UTC would flood messaging (and the customers' phones) at midnight.
    public static let releaseSpread: Span = .days(3)
    /// A held ask about to go stale is released this long before its freshness ends, if that
    /// falls after the month's turn: spreading it later would drop it unseen.
    public static let staleMargin: Span = .hours(1)

    /// The first instant of `t`'s UTC month: the month a commitment or a reversal counts in.
    public static func month(of t: Instant) -> Instant { t.utcMonthStart }

    /// Whether a program's commitment for the month holds its asks.
    public static func holdsAsks(committedMinor: Int64, budget: Program.Budget) -> Bool {
        Double(committedMinor) >= budget.pauseAsksAt * Double(budget.monthlyMinor)
    }

    /// The hold of one account's asks at `now`: from the next month's turn, plus a stable offset
    /// per account within `releaseSpread` (FNV-1a of the account id, so every instance and every
    /// re-decision computes the same instant).
    public static func hold(accountId: String, now: Instant) -> AskBudgetHold {
        let turn = now.nextUTCMonthStart
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in accountId.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let offset = Int64(h % UInt64(releaseSpread.microseconds / 1_000_000))
        return AskBudgetHold(turn: turn, release: turn + .seconds(offset))
    }
}

/// An account's asks held by its program's budget at the decision's `now`.
public struct AskBudgetHold: Hashable, Sendable {
    /// The next month's first instant: no held ask goes out before it.
    public var turn: Instant
    /// The account's spread release time, at or after `turn`.
    public var release: Instant
    public init(turn: Instant, release: Instant) {
        self.turn = turn
        self.release = release
    }

    /// When an ask expiring at `expires` is looked at again: the account's release, or earlier
    /// (not before the turn) when the ask would be stale by then.
    public func release(expiring expires: Instant) -> Instant {
        max(turn, min(release, expires - ProgramBudget.staleMargin))
    }
}

/// What one reward of a referral commits of its program's budget, in the UTC month of the
/// referral's milestone: a reward issued, or one whose referral reached its milestone and is in
/// its hold (or waiting out arrears) and would be paid. A reversal is not a commitment: it lowers
/// the month it happens in (`Effect.rewardReversed`, counted by the store when recorded).
public struct Commitment: Hashable, Sendable {
    public var rewardId: String
    public var programId: String
    /// The first instant of the UTC month it counts in.
    public var month: Instant
    public var currency: String
    public var amountMinor: Int64
    /// Issued: its month and amount are fixed from then on (money promised does not move between
    /// months when a late fact moves the milestone), and it stays even if reversed later.
    public var issued: Bool

    public init(rewardId: String, programId: String, month: Instant, currency: String, amountMinor: Int64, issued: Bool)
    {
        self.rewardId = rewardId
        self.programId = programId
        self.month = month
        self.currency = currency
        self.amountMinor = amountMinor
        self.issued = issued
    }
}

/// A change of one month's commitment of a program.
public struct BudgetDelta: Hashable, Sendable {
    public var programId: String
    public var month: Instant
    public var currency: String
    public var amountMinor: Int64
    public init(programId: String, month: Instant, currency: String, amountMinor: Int64) {
        self.programId = programId
        self.month = month
        self.currency = currency
        self.amountMinor = amountMinor
    }
}

/// What a decision changes in the kept commitments (rows per reward) and the month counters.
public struct CommitmentChanges: Sendable, Equatable {
    public var upserts: [(referralId: String, commitment: Commitment)] = []
    public var deletes: [(referralId: String, rewardId: String)] = []
    /// Summed per (program, month, currency), zero sums left out, in key order: the order in
    /// which the store locks counter rows.
    public var deltas: [BudgetDelta] = []

    public static func == (a: CommitmentChanges, b: CommitmentChanges) -> Bool {
        a.upserts.map(\.referralId) == b.upserts.map(\.referralId)
            && a.upserts.map(\.commitment) == b.upserts.map(\.commitment)
            && a.deletes.map(\.referralId) == b.deletes.map(\.referralId)
            && a.deletes.map(\.rewardId) == b.deletes.map(\.rewardId) && a.deltas == b.deltas
    }
}

extension ProgramBudget {
    /// Whether a decision's commitments must be compared with the kept ones. Not when nothing
    /// can have changed: a referral short of activation never committed anything (every
    /// milestone is activation or later), and a rewarded one whose commitments are all issued,
    /// none in this decision (`newlyIssued`), was written as issued when they were and issued
    /// rows never change. Those two are most of the decisions of a busy program (leads,
    /// orders, billing's confirmations), and each skipped is a lookup fewer per batch.
    public static func needsKeptCommitments(_ view: ReferralView, newlyIssued: Set<String>) -> Bool {
        if view.commitments.isEmpty && [.lead, .ordered, .installed].contains(view.stage) { return false }
        if view.stage == .rewarded, view.commitments.allSatisfy({ $0.issued && !newlyIssued.contains($0.rewardId) }) {
            return false
        }
        return true
    }

    /// The changes that bring the kept commitments of these referrals (`stored`, by referral id)
    /// in line with their decisions, plus the newly recorded reversals (each lowers the month of
    /// `now`). Issued rows never change: money promised stays in the month it was promised in,
    /// whatever a late fact later says of the milestone; its reversal is what lowers a month.
    public static func changes(
        views: [ReferralView], stored: [String: [Commitment]],
        reversals: [(programId: String, currency: String, amountMinor: Int64)],
        now: Instant
    ) -> CommitmentChanges {
        var out = CommitmentChanges()
        var raw: [BudgetDelta] = reversals.map {
            BudgetDelta(
                programId: $0.programId, month: month(of: now), currency: $0.currency, amountMinor: -$0.amountMinor)
        }
        func add(_ c: Commitment, _ sign: Int64) {
            raw.append(
                BudgetDelta(
                    programId: c.programId, month: c.month, currency: c.currency, amountMinor: sign * c.amountMinor))
        }
        for view in views {
            let kept = Dictionary(
                (stored[view.referralId] ?? []).map { ($0.rewardId, $0) }, uniquingKeysWith: { a, _ in a })
            let wanted = Set(view.commitments.map(\.rewardId))
            for old in kept.values.sorted(by: { $0.rewardId < $1.rewardId })
            where !old.issued && !wanted.contains(old.rewardId) {
                out.deletes.append((view.referralId, old.rewardId))
                add(old, -1)
            }
            for new in view.commitments {
                let old = kept[new.rewardId]
                if old?.issued == true || old == new { continue }
                out.upserts.append((view.referralId, new))
                if let old { add(old, -1) }
                add(new, 1)
            }
        }
        var sums: [BudgetDelta: Int64] = [:]
        for d in raw {
            sums[
                BudgetDelta(programId: d.programId, month: d.month, currency: d.currency, amountMinor: 0), default: 0] +=
                d.amountMinor
        }
        out.deltas = sums.filter { $0.value != 0 }
            .map {
                BudgetDelta(
                    programId: $0.key.programId, month: $0.key.month, currency: $0.key.currency, amountMinor: $0.value)
            }
            .sorted { ($0.programId, $0.month, $0.currency) < ($1.programId, $1.month, $1.currency) }
        return out
    }
}
