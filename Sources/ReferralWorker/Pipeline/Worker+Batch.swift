import AMQP
import Logging
import ReferralCore
import ReferralStore

/// The batch: applying deliveries in one transaction with its retries, the timers and the
/// backlog sample.
extension Worker {
    func handle(_ items: [Intake.Item]) async throws {
        let started = ContinuousClock.now
        var good: [(Delivery, InboundEvent)] = []
        var bad: [(Delivery, BadInput)] = []
        for item in items {
            switch item.classified {
            case .success(let event): good.append((item.delivery, event))
            case .failure(let reason): bad.append((item.delivery, reason))
            }
        }
        generation = items.first?.generation ?? generation
        var outbox: [OutboxRow] = []
        // Each original is acked once the broker confirmed its dead letter, so a message is
        // never in neither queue.
        if !bad.isEmpty { try await deadLetter(bad) }
        let applyStarted = ContinuousClock.now
        if !good.isEmpty { outbox = try await applyWithRetry(good) }
        // Committed: ack through the intake (what was dead-lettered or requeued on its own has
        // left the batch there), and publish the outbox rows while the next batch is applied.
        await intake.finish(lane: pipeline)
        let applyTime = ContinuousClock.now - applyStarted
        let settleStarted = ContinuousClock.now
        try await settlePublication()
        let settleTime = ContinuousClock.now - settleStarted
        if !outbox.isEmpty { publication = Task { try await self.publish(outbox) } }
        let acked = clock.now()
        for (_, event) in good { metrics.endToEnd(from: event.time, to: acked) }
        let duration = ContinuousClock.now - started
        metrics.batch(size: items.count, duration: duration)
        // Where a slow pipeline's time goes: in the transaction and ack (apply.ms), or waiting
        // for the broker to confirm the previous batch's events (publish_wait.ms).
        logger.debug(
            "batch handled",
            metadata: [
                "batch.size": "\(items.count)", "batch.dead_lettered": "\(bad.count)", "outbox": "\(outbox.count)",
                "batch.ms": "\(duration.nanoseconds / 1_000_000)", "apply.ms": "\(applyTime.nanoseconds / 1_000_000)",
                "publish_wait.ms": "\(settleTime.nanoseconds / 1_000_000)",
            ])
    }

    /// Transient database errors (server restart, lost connection, serialisation failure)
    /// retry the same deliveries on a fresh connection while the consumer keeps them unacked:
    /// they are neither acked nor dead-lettered while the database is away.
    /// Returns the committed outbox rows to publish.
    func applyWithRetry(_ events: [(Delivery, InboundEvent)]) async throws -> [OutboxRow] {
        var backoff = Backoff()
        while true {
            do {
                return try await applyRetryingConflicts(events)
            } catch let error as DatabaseError where error.isTransient {
                logger.warning(
                    "database unavailable; batch held for retry",
                    metadata: ["db.sqlstate": "\(error.sqlState ?? "-")", "batch.size": "\(events.count)"])
                status.databaseLost(error, pipeline: pipeline)
                await db?.close()
                db = nil
                try await Task.sleep(for: backoff.next(using: &rng))
                try await connect()
            } catch {
                return try await isolate(events, firstError: error)
            }
        }
    }

    /// A batch failed for a reason that is not transient. Find the event that fails by halving:
    /// each half is applied in a transaction of its own, and only a half that fails is split
    /// again, so one poison event in a batch of n costs about 2·log₂ n transactions. Applying
    /// the events one by one instead re-ran up to 511 good events at the batch-1 rate on every
    /// delivery of the poison. The event that fails alone is dead-lettered once it has failed on
    /// REFERRALD_DELIVERY_LIMIT deliveries, and requeued before that. Halves keep the batch's
    /// order, so the events of one account are still applied in the order they arrived.
    func isolate(_ events: [(Delivery, InboundEvent)], firstError: any Error) async throws -> [OutboxRow] {
        logger.warning(
            "batch failed; isolating the failing event by halves",
            metadata: ["error": "\(firstError)", "batch.size": "\(events.count)"])
        var outbox: [OutboxRow] = []
        try await bisect(events, failedWith: firstError, outbox: &outbox)
        return outbox
    }

    /// `events` failed together in one transaction with `error`: apply each half, splitting a
    /// failing half until the failing event stands alone.
    func bisect(
        _ events: [(Delivery, InboundEvent)], failedWith error: any Error,
        outbox: inout [OutboxRow]
    ) async throws {
        guard events.count > 1 else {
            if let only = events.first { try await giveUp(only, error: error) }
            return
        }
        let middle = events.count / 2
        for half in [Array(events[..<middle]), Array(events[middle...])] {
            do {
                outbox += try await applyRetryingConflicts(half)
            } catch let error as DatabaseError where error.isTransient {
                throw error
            } catch {
                try await bisect(half, failedWith: error, outbox: &outbox)
            }
        }
    }

    /// Another instance's transaction won a deadlock or a serialisation conflict: the database
    /// is fine and so is the connection, and the events are not to blame. Retried at once on
    /// the same connection, up to five times; reconnecting and backing off as for an outage
    /// cost seconds per conflict, and bisecting would blame an event for it.
    func applyRetryingConflicts(_ events: [(Delivery, InboundEvent)]) async throws -> [OutboxRow] {
        var conflicts = 0
        while true {
            do {
                return try await apply(events.map { .init(event: $0.1, body: $0.0.body) })
            } catch let error as DatabaseError where error.isLockConflict && conflicts < 5 {
                conflicts += 1
                metrics.lockConflict()
                logger.notice(
                    "batch lost a lock conflict; retried",
                    metadata: [
                        "db.sqlstate": "\(error.sqlState ?? "-")", "batch.size": "\(events.count)",
                        "attempt": "\(conflicts)",
                    ])
            }
        }
    }

    /// The event failed alone: dead-letter it at the delivery limit, requeue it before. Either
    /// way it is settled on its own, and leaves the batch the intake acks.
    func giveUp(_ item: (Delivery, InboundEvent), error: any Error) async throws {
        let (delivery, event) = item
        let deliveries = (delivery.deliveryCount ?? 0) + 1
        if deliveries >= settings.deliveryLimit {
            try await deadLetter([
                (
                    delivery,
                    BadInput(
                        code: .processingFailed,
                        detail: "\(event.type.rawValue): failed on \(deliveries) deliveries: \(error)")
                )
            ])
        } else {
            logger.warning(
                "event failed; requeued",
                metadata: [
                    "event.id": "\(event.id)", "event.type": "\(event.type.rawValue)", "error": "\(error)",
                    "amqp.delivery_count": "\(deliveries)",
                ])
            try await intake.requeue(delivery, generation: generation)
            metrics.consumed(type: event.type.rawValue, .failed)
        }
    }

    func context() -> DecisionContext {
        DecisionContext(
            programs: programs, policy: settings.lifecyclePolicy, now: clock.now(),
            effects: effectCache, programVersions: programVersions)
    }

    /// Applies events in one transaction that also deletes the rows published since the last
    /// commit; returns the committed outbox rows to publish.
    func apply(_ events: [ReceivedEvent]) async throws -> [OutboxRow] {
        guard let db else { throw NotConnected() }
        let failpoint = self.failpoint
        let done = published
        let outcome = try await DecisionStore(db).applyBatch(events, published: done, context: context()) { events in
            try failpoint.poison(events.lazy.map(\.event.id))
        }
        let leads = outcome.freshIndexes.compactMap { i -> LeadCreated? in
            if case .leadCreated(let lead) = events[i].event.payload { lead } else { nil }
        }
        published.removeFirst(done.count)
        effectCache.appendCommitted(outcome.recorded)
        status.databaseRoundTripSucceeded(pipeline: pipeline)
        failpoint.hit(.afterCommit)
        metrics.consumed(events, freshIndexes: outcome.freshIndexes)
        metrics.rewards(outcome.rewards)
        metrics.asksHeld(programs: outcome.heldAsks)
        metrics.rejections(outcome.published)
        metrics.unattributed(leads, bound: outcome.boundLeads, blocked: outcome.blockedLeads)
        for e in outcome.published {
            logger.info(
                "decided",
                metadata: [
                    "event.type": "\(e.type.rawValue)", "event.id": "\(e.id)",
                    "referral.id": "\(e.subject ?? "-")",
                ])
        }
        for m in outcome.mismatches {
            guard case .rewardMismatch(let rewardId, let accountId, _, _) = m else { continue }
            logger.warning(
                "billing applied a credit that differs from the reward; not marked applied",
                metadata: ["effect": "\(m)", "reward.id": "\(rewardId)", "account.id": "\(accountId)"])
        }
        return outcome.outbox
    }

    /// Fires one round of due timers (hold ends, windows, retries, asks). When more are due,
    /// the loop alternates rounds with batches of deliveries: firing them all at once starved
    /// consumption while thousands fell due together (after a backlog dated in the past was
    /// drained), and every delivery waited behind them.
    func fireTimers() async throws {
        guard let db else { return }
        lastTimerScan = clock.now()
        timersBehind = false
        do {
            let context = self.context()
            let store = DecisionStore(db)
            let claimed = try await store.claimTimers(context: context, limit: 100)
            status.databaseRoundTripSucceeded(pipeline: pipeline)
            let count = claimed.count
            if count == 0 { return }
            let fired: FiredTimers
            do {
                fired = try await store.fireTimers(claimed, context: context)
            } catch let error as DatabaseError where error.isLockConflict {
                // Another instance's batch holds the same referrals. The transaction rolled back
                // and the timers fire again when their lease ends; rethrowing would drop both
                // broker connections and requeue the batch in hand, raising every message's
                // delivery count towards the broker's limit.
                logger.notice(
                    "timer scan lost a lock conflict; its timers fire again after their lease",
                    metadata: ["db.sqlstate": "\(error.sqlState ?? "-")"])
                return
            }
            effectCache.appendCommitted(fired.recorded)
            metrics.rewards(fired.rewards)
            metrics.asksHeld(programs: fired.heldAsks)
            logger.debug("timers fired", metadata: ["timers.fired": "\(count)", "events": "\(fired.outbox.count)"])
            try await settlePublication()
            try await publish(fired.outbox)
            timersBehind = count == 100
        }
    }

    /// Backlog gauges, sampled every few seconds on the worker's own connection: a few cheap
    /// aggregate queries, not worth a connection of their own. The budgets' month figures come
    /// with them, and the held asks whose freshness ended are settled (sent or dropped stale).
    func sampleBacklog() async throws {
        guard let db else { return }
        lastBacklogSample = clock.now()
        let now = clock.now()
        let budgeted = programs.programs.filter { $0.budget != nil }.map { ($0.id, $0.currency) }
        let sample = try await db.sampleBacklog(now: now, budgeted: budgeted)
        let (outbox, timers, unapplied) = (sample.outbox, sample.timers, sample.unappliedRewards)
        let (committed, settled, pauses) = (sample.committed, sample.settledAsks, sample.rewardPauses)
        metrics.rewardPauses(pauses, now: now, programs: programs.programs.map(\.id))
        metrics.outbox(count: outbox.count, oldestAgeSeconds: outbox.oldestAgeSeconds)
        metrics.timers(due: timers.due, lagSeconds: timers.lagSeconds)
        metrics.unappliedRewards(count: unapplied.count, oldestAgeSeconds: unapplied.oldestAgeSeconds)
        for p in programs.programs {
            guard let budget = p.budget else { continue }
            metrics.budget(
                program: p.id, currency: p.currency, committedMinor: committed[p.id] ?? 0,
                limitMinor: budget.monthlyMinor)
        }
        metrics.heldAsksSettled(settled)
        let dropped = settled.filter { !$0.sent }.count
        if dropped > 0 { logger.info("held asks dropped stale", metadata: ["asks.dropped": "\(dropped)"]) }
    }
}
