import AMQP
import Foundation
import ReferralStore

/// What the worker reports about itself, read by `/readyz`, the systemd notifier and the
/// connection gauges. The worker writes it from its actor; the HTTP thread and the notifier
/// read it: every access goes through one lock, and each call is a few assignments.
public final class ServiceStatus: Sendable {
    public enum Phase: String, Sendable {
        case starting
        case connecting
        case consuming
        case databaseUnavailable = "database unavailable"
        case brokerUnavailable = "broker unavailable"
        case reconnecting
        case draining
    }

    /// What one pipeline (one consume loop with its own connections) last reported. Kept per
    /// pipeline because a shared flag let a wedged pipeline hide behind a healthy one: the
    /// healthy loop kept the watchdog fed and `/healthz` green while the other held its batch
    /// unacked forever.
    struct Pipeline {
        var brokerUp = false
        var databaseUp = false
        /// Outcome of the latest database round trip: a loop that keeps polling the broker while
        /// its database calls fail must not look healthy.
        var lastDatabaseRoundTripSucceeded = false
        /// When the consume loop last finished an iteration (poll, batch, due timers, relay).
        var lastLoopProgress: ContinuousClock.Instant?
        /// The last such iteration with both connections up and the database answering.
        var lastHealthyProgress: ContinuousClock.Instant?
        var isHealthy: Bool { lastDatabaseRoundTripSucceeded && databaseUp && brokerUp }
    }

    struct State {
        var phase = Phase.starting
        var detail: String?
        var pipelines: [Pipeline]
        /// Set once the connected database's schema was found current; the worker refuses an
        /// older schema, so this only stays false until the first database connect.
        var schemaCurrent = false
        var everConnected: Set<WorkerMetrics.Peer> = []
        var brokerUp: Bool { pipelines.allSatisfy(\.brokerUp) }
        var databaseUp: Bool { pipelines.allSatisfy(\.databaseUp) }
    }

    private let state: Locked<State>
    private let metrics: WorkerMetrics
    private let started: ContinuousClock.Instant

    /// `pipelines`: the consume loops that report (REFERRALD_WORKERS), numbered from 0.
    public init(metrics: WorkerMetrics = WorkerMetrics(), pipelines: Int = 1, started: ContinuousClock.Instant = .now) {
        self.metrics = metrics
        self.started = started
        state = Locked(State(pipelines: Array(repeating: Pipeline(), count: max(1, pipelines))))
        for peer in WorkerMetrics.Peer.allCases { metrics.connection(peer, up: false) }
    }

    // MARK: written by the worker

    /// Only the first connect shows as `connecting`: a reconnect keeps the reason it is
    /// reconnecting for, so that STATUS= does not flap on every retry of a long outage.
    func connecting() {
        state.withLock { if $0.phase == .starting { $0.phase = .connecting } }
    }

    /// Counts a reconnect when a peer comes back after having been up before.
    func databaseConnected(pipeline: Int = 0) {
        let reconnected = state.withLock { s in
            defer { s.pipelines[pipeline].databaseUp = true }
            s.schemaCurrent = true
            s.pipelines[pipeline].lastDatabaseRoundTripSucceeded = true
            return !s.everConnected.insert(.postgres).inserted && !s.pipelines[pipeline].databaseUp
        }
        metrics.connection(.postgres, up: true)
        if reconnected { metrics.reconnected(.postgres) }
    }

    func brokerConnected(pipeline: Int = 0) {
        let reconnected = state.withLock { s in
            defer { s.pipelines[pipeline].brokerUp = true }
            if s.phase != .draining, s.pipelines[pipeline].databaseUp {
                s.phase = .consuming
                s.detail = nil
            }
            return !s.everConnected.insert(.amqp).inserted && !s.pipelines[pipeline].brokerUp
        }
        metrics.connection(.amqp, up: true)
        if reconnected { metrics.reconnected(.amqp) }
    }

    func databaseRoundTripSucceeded(pipeline: Int = 0) {
        state.withLock { $0.pipelines[pipeline].lastDatabaseRoundTripSucceeded = true }
    }

    func loopProgressed(pipeline: Int = 0, now: ContinuousClock.Instant = .now) {
        state.withLock { s in
            s.pipelines[pipeline].lastLoopProgress = now
            if s.pipelines[pipeline].isHealthy { s.pipelines[pipeline].lastHealthyProgress = now }
        }
        metrics.loopIteration()
    }

    /// The database failed while the broker connection stays (a batch held for retry).
    func databaseLost(_ error: any Error, pipeline: Int = 0) {
        state.withLock { s in
            s.pipelines[pipeline].databaseUp = false
            s.pipelines[pipeline].lastDatabaseRoundTripSucceeded = false
            if s.phase != .draining {
                s.phase = .databaseUnavailable
                s.detail = Self.reason(error)
            }
        }
        metrics.connection(.postgres, up: false)
    }

    /// The loop failed and the worker drops every connection before it reconnects.
    func failed(_ error: any Error, pipeline: Int = 0) {
        state.withLock { s in
            s.pipelines[pipeline].brokerUp = false
            s.pipelines[pipeline].databaseUp = false
            if error is DatabaseError || error is NotConnected {
                s.pipelines[pipeline].lastDatabaseRoundTripSucceeded = false
            }
            guard s.phase != .draining else { return }
            switch error {
            case is DatabaseError, is NotConnected: s.phase = .databaseUnavailable
            case is AMQPError: s.phase = .brokerUnavailable
            default: s.phase = .reconnecting
            }
            s.detail = Self.reason(error)
        }
        metrics.connection(.postgres, up: false)
        metrics.connection(.amqp, up: false)
    }

    func draining() {
        state.withLock {
            $0.phase = .draining
            $0.detail = nil
        }
    }

    // MARK: read by /readyz and the notifier

    /// nil when ready to take work: broker and database connected, schema current, not draining.
    /// Otherwise a fixed reason: `/readyz` answers anyone who reaches the port, and the error's
    /// own text (libpq's names the host, its address and the user) stays in the log and in
    /// systemd's STATUS=, which only the machine's administrators read.
    public func notReadyReason() -> String? {
        state.withLock { s in
            if s.phase == .draining { return "draining" }
            if !s.databaseUp { return "database not connected" }
            if !s.schemaCurrent { return "database schema not current" }
            if !s.brokerUp { return "broker not connected" }
            return nil
        }
    }

    /// The watchdog condition, met only when *every* pipeline meets it: its consume loop
    /// finished an iteration within `window` (a loop stuck in a call, on a hung socket or a
    /// lock, stops advancing it) and its latest database round trip succeeded with both its
    /// connections up (a loop spinning on failing calls or waiting out a back-off does not
    /// count). The loop touches the database at least once a second (the timer scan), so a dead
    /// database turns this false within about a second.
    public func isMakingProgress(within window: Duration, now: ContinuousClock.Instant = .now) -> Bool {
        state.withLock { s in
            s.pipelines.allSatisfy { p in
                guard let last = p.lastLoopProgress, now - last <= window else { return false }
                return p.isHealthy
            }
        }
    }

    /// `/healthz`: nil when live, else why not. Live while every pipeline's loop completed a
    /// healthy iteration (both connections up, the database answering) within `window`: what
    /// systemd's watchdog sees, pings withheld for WatchdogSec, so that Docker's HEALTHCHECK
    /// and a Kubernetes liveness probe restart what systemd would restart, and no sooner (a
    /// database blip shorter than the window restarts nothing; `/readyz` reports it at once).
    /// For the first `window` after start, a process still connecting counts as live (systemd's
    /// watchdog is not armed before READY=1 either); after that, a pipeline that never got going
    /// is as stuck as one that stopped.
    public func notLiveReason(within window: Duration, now: ContinuousClock.Instant = .now) -> String? {
        let stuck = state.withLock { s in
            s.pipelines.indices.filter { i in
                guard let last = s.pipelines[i].lastHealthyProgress else { return now - started > window }
                return now - last > window
            }
        }
        if stuck.isEmpty { return nil }
        let names = stuck.map { "\($0 + 1)" }.joined(separator: ", ")
        return "consume loop not progressing within \(Int(window.inSeconds)) s (pipeline \(names) of \(pipelineCount))"
    }

    var pipelineCount: Int { state.withLock { $0.pipelines.count } }

    /// The line for systemd's STATUS=: the phase, and the reason for an unavailable one.
    public func statusLine() -> String {
        state.withLock { s in s.phase.rawValue + (s.detail.map { ": \($0)" } ?? "") }
    }

    /// One line for STATUS=: error descriptions are redacted by their types, but the server's
    /// text may span lines.
    private static func reason(_ error: any Error) -> String {
        let text = "\(error)".split(whereSeparator: \.isNewline).joined(separator: " ")
        return text.count > 200 ? String(text.prefix(197)) + "..." : text
    }
}

/// A value behind a lock.
///
/// `@unchecked Sendable`: `value` is only read or written inside `withLock`, under `lock`.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
