import AMQP
import Foundation

/// The daemon's memory with a large backlog: `count` messages wait in the inbox, the daemon is
/// started and its resident set sampled while it works through them. Prefetch bounds what it
/// holds, so the figure must not depend on the backlog (issue: under 100 MiB).
enum MemoryCheck {
    struct Result {
        let queued: Int
        let peakRSS: Int
        let stillWaiting: UInt32
        let publishTook: Duration
    }

    static func run(config: SuiteConfig, count: Int, sample: Duration) async throws -> Result {
        try await World.with(config: config, scenario: "memory") { world in
            try await measure(world: world, config: config, count: count, sample: sample)
        }
    }

    private static func measure(world: World, config: SuiteConfig, count: Int, sample: Duration) async throws -> Result
    {
        let started = ContinuousClock.now
        // Four connections publish in parallel: one confirmed stream is latency-bound.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in 0..<4 {
                group.addTask {
                    let publisher = UpstreamPublisher(world: world)
                    for batch in stride(from: lane * 2_000, to: count, by: 8_000) {
                        let events = (batch..<min(count, batch + 2_000)).map { i in
                            UpstreamEvent(
                                raw: Array(
                                    """
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

/// Large valid bodies with the default settings (issue #16, item 1): `count` events of about
/// 250 KiB wait in the inbox when the daemon starts, and must all be stored, none dead-lettered,
/// while the daemon's peak resident set (VmHWM) stays within 256 MiB. Before batches were
/// capped by bytes and bytea went in binary, a batch of 512 such bodies took 1.3-1.9 GiB.
enum LargeBodyCheck {
    struct Result {
        let events: Int
        let bodyBytes: Int
        let peakRSS: Int
        let drained: Duration
        let deadLetters: UInt32
    }

    static let limit = 256 * 1_048_576

    static func run(config: SuiteConfig, count: Int) async throws -> Result {
        try await World.with(config: config, scenario: "memory-large") { world in
            try await measure(world: world, config: config, count: count)
        }
    }

    /// A valid `provisioning.install.scheduled` of exactly `size` bytes: the bulk is a member
    /// the contract does not name (producers may add members), different in every event.
    static func body(_ i: Int, size: Int) -> [UInt8] {
        let head = """
            {"specversion":"1.0","id":"big-\(i)","source":"provisioning","type":"provisioning.install.scheduled",\
            "time":"2027-03-02T09:31:00Z","datacontenttype":"application/json",\
            "data":{"account_id":"acct-big\(i)","scheduled_for":"2027-03-10T08:00:00Z","notes":"
            """
        let tail = "\"}}"
        var bytes = Array(head.utf8)
        let fill = size - bytes.count - tail.utf8.count
        var state = UInt64(i) &* 0x9E37_79B9_7F4A_7C15 | 1
        for _ in 0..<fill {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            bytes.append(UInt8(ascii: "a") + UInt8(state % 26))
        }
        bytes += Array(tail.utf8)
        return bytes
    }

    private static func measure(world: World, config: SuiteConfig, count: Int) async throws -> Result {
        let size = 250 * 1024
        let publisher = UpstreamPublisher(world: world)
        for start in stride(from: 0, to: count, by: 50) {
            try await publisher.publish(
                (start..<min(count, start + 50)).map {
                    UpstreamEvent(raw: body($0, size: size), type: "provisioning.install.scheduled")
                })
        }
        await publisher.close()
        let daemons = try Daemons(world: world, executable: config.daemon)
        try daemons.spawn()
        let started = ContinuousClock.now
        var peak = 0
        var stored: Int64 = 0
        while stored < count {
            guard ContinuousClock.now - started < config.drainTimeout else {
                await daemons.stopAll()
                throw SuiteError("\(stored) of \(count) stored within \(config.drainTimeout)")
            }
            guard daemons.running.contains(0) else {
                throw SuiteError(
                    "the daemon exited (\(daemons.processes[0].terminationStatus)) with \(stored) of \(count) stored")
            }
            try await Task.sleep(for: .milliseconds(200))
            peak = max(peak, peakResidentBytes(pid: daemons.processes[0].processIdentifier) ?? 0)
            stored = try await world.count("SELECT count(*) FROM inbox")
        }
        let drained = ContinuousClock.now - started
        peak = max(peak, peakResidentBytes(pid: daemons.processes[0].processIdentifier) ?? 0)
        let deadLetters = await world.queueDepth(world.settings.deadLetterQueue) ?? 0
        await daemons.stopAll()
        return Result(events: count, bodyBytes: size, peakRSS: peak, drained: drained, deadLetters: deadLetters)
    }
}
