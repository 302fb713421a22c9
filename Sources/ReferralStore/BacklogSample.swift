import ReferralCore

/// What a worker samples every few seconds for its gauges, read in one hop: a few cheap
/// aggregate queries, not worth a connection of their own. The held asks whose freshness ended
/// are settled in the same hop (sent or dropped stale).
public struct BacklogSample: Sendable {
    /// Rows waiting to be published and the age of the oldest.
    public var outbox: (count: Int64, oldestAgeSeconds: Double)
    /// Timers due and how late the oldest is.
    public var timers: (due: Int64, lagSeconds: Double)
    /// Rewards issued that billing has not applied yet, and the age of the oldest.
    public var unappliedRewards: (count: Int64, oldestAgeSeconds: Double)
    /// Committed this month, by budgeted program.
    public var committed: [String: Int64]
    /// Held asks settled by this sample: their program, and whether each was sent.
    public var settledAsks: [(programId: String, sent: Bool)]
    /// Every reward pause with its start.
    public var rewardPauses: [(programId: String, since: Instant)]
}

extension Database {
    /// Samples the backlogs at `now`; `budgeted` are the programs with a monthly budget.
    public func sampleBacklog(now: Instant, budgeted: [(id: String, currency: String)]) async throws -> BacklogSample {
        try await run { c in
            BacklogSample(
                outbox: try OutboxStore.backlog(c), timers: try TimerStore.backlog(c, now: now),
                unappliedRewards: try LedgerStore.unappliedRewards(c, now: now),
                committed: try BudgetStore.committed(c, programs: budgeted, month: ProgramBudget.month(of: now)),
                settledAsks: try BudgetStore.sweepHeldAsks(c, now: now), rewardPauses: try OperatorStore.rewardPauses(c)
            )
        }
    }
}
