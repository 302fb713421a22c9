import Foundation
import Prometheus
import Testing

@testable import ReferralWorker

/// `/healthz` and the watchdog follow every pipeline: one wedged consume loop must not hide
/// behind a healthy one (REFERRALD_WORKERS > 1). Pure state, an injected clock: no services.
@Suite struct HealthTests {
    static let window = Duration.seconds(30)

    /// A status whose pipelines are all connected and have just completed a loop at `at`.
    static func connected(pipelines: Int, at: ContinuousClock.Instant) -> ServiceStatus {
        let status = ServiceStatus(pipelines: pipelines, started: at)
        for p in 0..<pipelines {
            status.databaseConnected(pipeline: p)
            status.brokerConnected(pipeline: p)
            status.loopProgressed(pipeline: p, now: at)
        }
        return status
    }

    static func healthz(_ status: ServiceStatus, now: ContinuousClock.Instant) -> Int {
        HTTPService.respond(
            method: "GET", path: "/healthz", status: status, stallWindow: window,
            registry: PrometheusCollectorRegistry(), now: now
        ).status
    }

    @Test func aWedgedPipelineFailsHealthAndTheWatchdogWhileTheOtherRuns() {
        let t0 = ContinuousClock.now
        let status = Self.connected(pipelines: 2, at: t0)
        #expect(Self.healthz(status, now: t0 + .seconds(1)) == 200)
        // Pipeline 1 keeps looping; pipeline 2 is stuck (a hung socket, a lock it waits on).
        for s in stride(from: 5, through: 40, by: 5) { status.loopProgressed(pipeline: 0, now: t0 + .seconds(s)) }
        let later = t0 + .seconds(40)
        #expect(!status.isMakingProgress(within: Self.window, now: later))
        #expect(Self.healthz(status, now: later) == 503)
        #expect(status.notLiveReason(within: Self.window, now: later)?.contains("pipeline 2 of 2") == true)
        // It comes back: healthy again.
        status.loopProgressed(pipeline: 1, now: later)
        #expect(status.isMakingProgress(within: Self.window, now: later))
        #expect(Self.healthz(status, now: later) == 200)
    }

    /// A database outage: `/readyz` says so at once, `/healthz` only once it has lasted the
    /// window (the loop turning without its database does not count), as the watchdog would.
    @Test func aPipelineWhoseDatabaseFailsIsNotLiveOnceTheWindowPasses() {
        let t0 = ContinuousClock.now
        let status = Self.connected(pipelines: 2, at: t0)
        status.databaseLost(TestFailure(), pipeline: 0)
        for s in stride(from: 1, through: 35, by: 1) {
            status.loopProgressed(pipeline: 0, now: t0 + .seconds(s))
            status.loopProgressed(pipeline: 1, now: t0 + .seconds(s))
        }
        #expect(!status.isMakingProgress(within: Self.window, now: t0 + .seconds(2)))
        #expect(status.notReadyReason() == "database not connected")
        #expect(Self.healthz(status, now: t0 + .seconds(20)) == 200)
        #expect(Self.healthz(status, now: t0 + .seconds(35)) == 503)
        #expect(status.notLiveReason(within: Self.window, now: t0 + .seconds(35))?.contains("pipeline 1 of 2") == true)
    }

    @Test func aStartingProcessIsLiveForOneWindowThenNot() {
        let t0 = ContinuousClock.now
        let status = ServiceStatus(pipelines: 1, started: t0)
        #expect(Self.healthz(status, now: t0 + .seconds(10)) == 200)
        #expect(Self.healthz(status, now: t0 + .seconds(31)) == 503)
    }

    struct TestFailure: Error {}
}
