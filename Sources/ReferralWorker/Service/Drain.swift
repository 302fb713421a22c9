import Foundation
import Logging
import Metrics
import Prometheus
import ReferralCore
import ServiceLifecycle
import UnixSignals

/// The metrics registry `/metrics` serves. swift-metrics takes one factory per process, so the
/// bootstrap happens on first use and a second `Daemon.run` in the same process (tests) reuses it.
enum MetricsBootstrap {
    static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(factory(registry: registry))
        return registry
    }()

    /// The Prometheus factory with buckets fitted to these metrics (the library's defaults are
    /// for request latencies in milliseconds and request sizes in bytes).
    static func factory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.valueHistogramBuckets["referrald_batch_size"] = [
            1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
        ]
        factory.durationHistogramBuckets["referrald_batch_seconds"] = [
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
        ]
        // Events wait in queues during outages and holds: seconds to an hour.
        factory.durationHistogramBuckets["referrald_end_to_end_seconds"] = [
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
            .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300),
            .seconds(900), .seconds(3600),
        ]
        return factory
    }
}

/// Runs a service group the way systemd stops a unit: the first SIGTERM or SIGINT starts a
/// graceful shutdown (the worker finishes the batch in hand), the group escalates to
/// cancellation after `drainTimeout`, and a second signal escalates at once (an operator who
/// presses Ctrl-C twice means it).
///
/// ServiceGroup alone cannot do the second part: a signal may be either a graceful or a
/// cancellation signal, not both, so the signals are trapped here instead.
struct DrainingGroup {
    let group: ServiceGroup
    let drainTimeout: Duration
    let logger: Logger

    struct Escalated: Error, CustomStringConvertible {
        let description: String
    }

    func run() async throws {
        let drainStarted = Locked<ContinuousClock.Instant?>(nil)
        let secondSignal = Locked(false)
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                var iterator = signals.makeAsyncIterator()
                guard let first = await iterator.next() else { return }
                drainStarted.withLock { $0 = .now }
                logger.notice(
                    "stopping: draining",
                    metadata: [
                        "signal": "\(first)", "drain.timeout_seconds": "\(drainTimeout.components.seconds)",
                    ])
                await group.triggerGracefulShutdown()
                guard let second = await iterator.next() else { return }
                secondSignal.withLock { $0 = true }
                logger.warning("second signal: cancelling the drain", metadata: ["signal": "\(second)"])
                throw CancellationError()
            }
            // The group finishing ends the signal listener; a second signal ends the group.
            do {
                try await tasks.next()
            } catch is CancellationError where secondSignal.withLock({ $0 }) {
                tasks.cancelAll()
                try? await tasks.waitForAll()
            }
            tasks.cancelAll()
        }
        // A drain cut short leaves the batch in hand unacked (the broker redelivers it, the inbox
        // deduplicates): nothing is lost, but the stop was not clean and the exit status says so.
        if secondSignal.withLock({ $0 }) {
            throw Escalated(description: "stopped by a second signal before the drain finished")
        }
        if let started = drainStarted.withLock({ $0 }) {
            let took = ContinuousClock.now - started
            if took >= drainTimeout {
                throw Escalated(
                    description:
                        "drain took longer than REFERRALD_DRAIN_TIMEOUT_SECONDS (\(drainTimeout.components.seconds) s); cancelled"
                )
            }
            logger.notice("stopped", metadata: ["drain.seconds": "\(took.inSeconds)"])
        }
    }
}
