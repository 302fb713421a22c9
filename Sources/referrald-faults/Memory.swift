import AMQP
import Foundation

/// The daemon's memory with a large backlog: `count` messages wait in the inbox, the daemon is
/// started and its resident set sampled while it works through them. Prefetch bounds what it
/// holds, so the figure must not depend on the backlog (issue: under 100 MiB).
enum MemoryCheck {
    struct Result { let queued: Int; let peakRSS: Int; let stillWaiting: UInt32; let publishTook: Duration }

    static func run(config: SuiteConfig, count: Int, sample: Duration) async throws -> Result {
        let world = try await World.make(services: config.services, scenario: "memory",
                                         programsFile: config.programsFile, logDirectory: config.logDirectory)
        do {
            let result = try await measure(world: world, config: config, count: count, sample: sample)
            await world.tearDown()
            return result
        } catch {
            await world.tearDown()
            throw error
        }
    }

    private static func measure(world: World, config: SuiteConfig, count: Int, sample: Duration) async throws -> Result {
        let started = ContinuousClock.now
        // Four connections publish in parallel: one confirmed stream is latency-bound.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in 0..<4 {
                group.addTask {
                    let publisher = UpstreamPublisher(world: world)
                    for batch in stride(from: lane * 2_000, to: count, by: 8_000) {
                        let events = (batch..<min(count, batch + 2_000)).map { i in
                            UpstreamEvent(raw: Array("""
                                {"specversion":"1.0","id":"m-\(i)","source":"provisioning","type":"provisioning.install.scheduled",\
                                "time":"2027-03-02T09:31:00Z","datacontenttype":"application/json",\
                                "data":{"account_id":"acct-m\(i % 50_000)","scheduled_for":"2027-03-10T08:00:00Z"}}
                                """.utf8), type: "provisioning.install.scheduled")
                        }
                        try await publisher.publish(events)
                    }
                    await publisher.close()
                }
            }
            try await group.waitForAll()
        }
        let publishTook = ContinuousClock.now - started
        let daemons = try Daemons(world: world, executable: config.daemon)
        try daemons.spawn()
        var peak = 0
        let end = ContinuousClock.now + sample
        while ContinuousClock.now < end {
            if let rss = residentBytes(pid: daemons.processes[0].processIdentifier) { peak = max(peak, rss) }
            try await Task.sleep(for: .milliseconds(100))
        }
        let waiting = await world.queueDepth(world.settings.inboxQueue) ?? 0
        await daemons.stopAll()
        return Result(queued: count, peakRSS: peak, stillWaiting: waiting, publishTook: publishTook)
    }
}
