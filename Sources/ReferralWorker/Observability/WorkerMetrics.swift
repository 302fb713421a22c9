import CoreMetrics
import Foundation
import ReferralCore
import ReferralStore

/// Every metric the daemon exports, by the names alert rules and the dashboard use. The worker
/// calls one method per thing that happened; the names, labels and units live only here.
///
/// Labels come from closed sets (event types the classifier accepts, dead-letter codes,
/// program ids from the programs file, ISO currencies): a routing key or body value never
/// becomes a label, so a hostile producer cannot grow the series without bound.
public struct WorkerMetrics: Sendable {
    public enum Peer: String, Sendable, CaseIterable { case amqp, postgres }

    public enum Outcome: String, Sendable {
        case applied, duplicate
        case deadLettered = "dead_lettered"
        case failed
    }

    /// Why a lead became no referral (the contract: "Unknown or missing code: counted as
    /// unattributed"). A malformed code is told apart from a missing one: a share link that
    /// mangles the code shows as a rise of `malformed_code`, leads that never had one do not.
    enum Unattributed: String, Sendable, CaseIterable {
        case missingCode = "missing_code"
        case malformedCode = "malformed_code"
        case unknownCode = "unknown_code"
        /// An operator blocked the code (`referrald code block`).
        case codeBlocked = "code_blocked"
    }

    /// The core's rejection reasons (LifecycleRules.md, "Rules, in order of precedence"), whose
    /// series start at 0. A reason added to the core without being added here is still counted,
    /// from its first rejection on.
    static let rejectionReasons = [
        "referrer_cancelled", "self_referral", "same_household", "same_contact",
        "too_many_leads", "already_referred",
    ]

    private let factory: any MetricsFactory
    private let batchSize: Recorder
    private let batchSeconds: CoreMetrics.Timer
    private let endToEndSeconds: CoreMetrics.Timer
    private let outboxBacklog: Gauge
    private let outboxOldestAge: Gauge
    private let timersDue: Gauge
    private let timerLag: Gauge
    private let parkedWaiting: Gauge
    private let rewardsUnapplied: Gauge
    private let rewardUnappliedOldestAge: Gauge

    /// `factory` defaults to the one bootstrapped in `Daemon.run` (a no-op one in-process in tests).
    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        batchSize = Recorder(label: "referrald_batch_size", dimensions: [], aggregate: true, factory: factory)
        batchSeconds = CoreMetrics.Timer(label: "referrald_batch_seconds", dimensions: [], factory: factory)
        endToEndSeconds = CoreMetrics.Timer(label: "referrald_end_to_end_seconds", dimensions: [], factory: factory)
        outboxBacklog = Gauge(label: "referrald_outbox_backlog", dimensions: [], factory: factory)
        outboxOldestAge = Gauge(label: "referrald_outbox_oldest_age_seconds", dimensions: [], factory: factory)
        timersDue = Gauge(label: "referrald_timers_due", dimensions: [], factory: factory)
        timerLag = Gauge(label: "referrald_timer_lag_seconds", dimensions: [], factory: factory)
        parkedWaiting = Gauge(label: "referrald_parked_messages", dimensions: [], factory: factory)
        rewardsUnapplied = Gauge(label: "referrald_rewards_unapplied", dimensions: [], factory: factory)
        rewardUnappliedOldestAge = Gauge(
            label: "referrald_reward_unapplied_oldest_age_seconds", dimensions: [], factory: factory)
        // Every reason's series exists from the start, at 0: a series born at its first
        // increment hides that increment from increase() (there is no earlier sample), and the
        // spike alerts compare with the same hour yesterday, which a reason never seen before
        // would not have, so a leaked code's first burst of rejections would go unseen.
        for reason in Self.rejectionReasons { rejected(reason: reason, count: 0) }
        for reason in Unattributed.allCases { unattributed(reason, count: 0) }
    }

    // MARK: events

    func consumed(type: String, _ outcome: Outcome, count: Int = 1) {
        guard count > 0 else { return }
        Counter(
            label: "referrald_events_consumed_total", dimensions: [("type", type), ("outcome", outcome.rawValue)],
            factory: factory
        ).increment(by: count)
    }

    /// A batch's events after its transaction: the fresh ones applied, the others duplicates.
    func consumed(_ events: [ReceivedEvent], freshIndexes: [Int]) {
        let fresh = Set(freshIndexes)
        var counts: [String: (applied: Int, duplicate: Int)] = [:]
        for (i, received) in events.enumerated() {
            let type = received.event.type.rawValue
            if fresh.contains(i) {
                counts[type, default: (0, 0)].applied += 1
            } else {
                counts[type, default: (0, 0)].duplicate += 1
            }
        }
        for (type, n) in counts {
            consumed(type: type, .applied, count: n.applied)
            consumed(type: type, .duplicate, count: n.duplicate)
        }
    }

    /// A dead letter the broker confirmed. Its type label is the routing key only when that
    /// names a consumed type: the key of bad input is whatever the producer sent.
    func deadLettered(code: String, routingKey: String) {
        let type = ConsumedType(rawValue: routingKey)?.rawValue ?? "unknown"
        consumed(type: type, .deadLettered)
        Counter(label: "referrald_dead_letters_total", dimensions: [("code", code)], factory: factory).increment()
    }

    /// A dead letter the broker refused (no DLQ bound, DLQ full), parked instead: the original
    /// is acked once the parked copy is confirmed. Not counted as dead-lettered until a retry
    /// moves it to the DLQ.
    func parked(code: String) {
        Counter(label: "referrald_dead_letters_parked_total", dimensions: [("code", code)], factory: factory)
            .increment()
    }

    func parked(waiting: Int64) {
        parkedWaiting.record(waiting)
    }

    func loopIteration() {
        Counter(label: "referrald_loop_iterations_total", dimensions: [], factory: factory).increment()
    }

    /// A ping time passed without a ping: the consume loop made no progress in the interval.
    /// Counted so that a daemon systemd is about to kill (or that runs without a watchdog) says
    /// so on /metrics, not only by a missing datagram.
    func watchdogPingWithheld() {
        Counter(label: "referrald_watchdog_pings_withheld_total", dimensions: [], factory: factory).increment()
    }

    /// A batch rolled back by a deadlock or serialisation failure and retried: a few are the
    /// price of running several pipelines or instances; a steady rate means they fight over
    /// the same referrers.
    func lockConflict() {
        Counter(label: "referrald_lock_conflicts_total", dimensions: [], factory: factory).increment()
    }

    func batch(size: Int, duration: Duration) {
        batchSize.record(size)
        batchSeconds.recordNanoseconds(duration.nanoseconds)
    }

    /// From the envelope's `time` to the ack. A producer clock ahead of ours would give a
    /// negative latency, which a histogram cannot hold: it counts as 0.
    func endToEnd(from eventTime: Instant, to ack: Instant) {
        endToEndSeconds.recordMicroseconds(max(0, (ack - eventTime).microseconds))
    }

    // MARK: backlogs

    func outbox(count: Int64, oldestAgeSeconds: Double) {
        outboxBacklog.record(count)
        outboxOldestAge.record(oldestAgeSeconds)
    }

    func timers(due: Int64, lagSeconds: Double) {
        timersDue.record(due)
        timerLag.record(max(0, lagSeconds))
    }

    /// Every instance reads the same database, so every instance reports the same figures: the
    /// alert takes the max across instances, and keeps working while any one of them runs.
    func unappliedRewards(count: Int64, oldestAgeSeconds: Double) {
        rewardsUnapplied.record(count)
        rewardUnappliedOldestAge.record(max(0, oldestAgeSeconds))
    }

    // MARK: referrals and leads

    /// Rejections among a committed batch's published events: a rejection is published once,
    /// as the referral's status change to `rejected` (its effect key is unique), and a
    /// redelivered event is a duplicate that decides nothing, so none is counted twice. The
    /// reason label is one of the core's own reasons, never a value from input. Timers are
    /// not read: every rejection rule reads facts and standings, which only batches change,
    /// and a timer re-decides its referral as it stands.
    func rejections(_ published: [OutgoingEvent]) {
        var counts: [String: Int] = [:]
        for e in published where e.type == .statusChanged && e.data["to"] == .string(Stage.rejected.rawValue) {
            guard case .string(let reason) = e.data["reason"] else { continue }
            counts[reason, default: 0] += 1
        }
        for (reason, n) in counts { rejected(reason: reason, count: n) }
    }

    private func rejected(reason: String, count: Int) {
        Counter(label: "referrald_referrals_rejected_total", dimensions: [("reason", reason)], factory: factory)
            .increment(by: count)
    }

    /// A committed batch's fresh leads, of which `bound` became referrals: the others are
    /// unattributed. A duplicate delivery is not fresh, so a lead is counted once per event.
    func unattributed(_ leads: [LeadCreated], bound: Set<String>, blocked: Set<String> = []) {
        var counts: [Unattributed: Int] = [:]
        for lead in leads where !bound.contains(lead.leadId) {
            // A valid code that bound nothing is blocked, or one no account was issued: leads bind by any known code.
            let reason: Unattributed =
                blocked.contains(lead.leadId)
                ? .codeBlocked
                : lead.code != nil
                    ? .unknownCode
                    : (lead.referralCode ?? "").allSatisfy(\.isWhitespace) ? .missingCode : .malformedCode
            counts[reason, default: 0] += 1
        }
        for (reason, n) in counts { unattributed(reason, count: n) }
    }

    private func unattributed(_ reason: Unattributed, count: Int) {
        Counter(
            label: "referrald_leads_unattributed_total", dimensions: [("reason", reason.rawValue)], factory: factory
        )
        .increment(by: count)
    }

    // MARK: rewards

    func rewards(_ changes: [RewardChange]) {
        for change in changes {
            switch change {
            case .issued(let program, let amount, let currency):
                Counter(label: "referrald_rewards_issued_total", dimensions: [("program", program)], factory: factory)
                    .increment()
                Counter(
                    label: "referrald_rewards_issued_amount_minor_total",
                    dimensions: [("program", program), ("currency", currency)], factory: factory
                ).increment(by: max(0, amount))
            case .reversed(let program, let amount, let currency):
                Counter(label: "referrald_rewards_reversed_total", dimensions: [("program", program)], factory: factory)
                    .increment()
                Counter(
                    label: "referrald_rewards_reversed_amount_minor_total",
                    dimensions: [("program", program), ("currency", currency)], factory: factory
                ).increment(by: max(0, amount))
            case .failed(let program):
                Counter(label: "referrald_reward_failures_total", dimensions: [("program", program)], factory: factory)
                    .increment()
            }
        }
    }

    // MARK: budgets

    /// A month's commitment and limit per budgeted program, as sampled from the counters (the
    /// same on every instance: alert on the max across instances).
    func budget(program: String, currency: String, committedMinor: Int64, limitMinor: Int64) {
        let labels = [("program", program), ("currency", currency)]
        Gauge(label: "referrald_budget_committed_minor", dimensions: labels, factory: factory).record(committedMinor)
        Gauge(label: "referrald_budget_limit_minor", dimensions: labels, factory: factory).record(limitMinor)
    }

    /// Asks a budget held, each counted once when first held.
    func asksHeld(programs: [String]) {
        var counts: [String: Int] = [:]
        for p in programs { counts[p, default: 0] += 1 }
        for (program, n) in counts {
            Counter(label: "referrald_asks_held_total", dimensions: [("program", program)], factory: factory).increment(
                by: n)
        }
    }

    /// Held asks whose freshness ended: sent after the hold lifted, or dropped stale while held.
    func heldAsksSettled(_ settled: [(programId: String, sent: Bool)]) {
        var counts: [String: (sent: Int, dropped: Int)] = [:]
        for s in settled {
            if s.sent {
                counts[s.programId, default: (0, 0)].sent += 1
            } else {
                counts[s.programId, default: (0, 0)].dropped += 1
            }
        }
        for (program, n) in counts {
            Counter(
                label: "referrald_asks_held_settled_total", dimensions: [("program", program), ("outcome", "sent")],
                factory: factory
            ).increment(by: n.sent)
            Counter(
                label: "referrald_asks_held_settled_total",
                dimensions: [("program", program), ("outcome", "dropped_stale")],
                factory: factory
            ).increment(by: n.dropped)
        }
    }

    // MARK: operators

    /// How long each paused program's rewards have been paused (0 when none is): sampled from
    /// the database, the same on every instance.
    func rewardPauses(_ pauses: [(programId: String, since: Instant)], now: Instant, programs: [String]) {
        let since = Dictionary(pauses.map { ($0.programId, $0.since) }, uniquingKeysWith: { a, _ in a })
        for program in Set(programs + ["*"] + pauses.map(\.programId)) {
            let seconds = since[program].map { max(0, (now - $0).microseconds) / 1_000_000 } ?? 0
            Gauge(label: "referrald_rewards_paused_seconds", dimensions: [("program", program)], factory: factory)
                .record(seconds)
        }
    }

    // MARK: connections

    func connection(_ peer: Peer, up: Bool) {
        Gauge(label: "referrald_connection_up", dimensions: [("peer", peer.rawValue)], factory: factory).record(
            up ? 1 : 0)
    }

    func reconnected(_ peer: Peer) {
        Counter(label: "referrald_reconnects_total", dimensions: [("peer", peer.rawValue)], factory: factory)
            .increment()
    }

    func started(at time: Date) {
        Gauge(label: "referrald_start_time_seconds", dimensions: [], factory: factory).record(
            time.timeIntervalSince1970)
    }
}

extension Duration {
    var nanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }
}
