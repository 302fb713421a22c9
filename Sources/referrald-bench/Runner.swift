import AMQP
import Foundation
import Postgres
import ReferralCore
import ReferralStore

/// The phases. Each backlog is published in full before the consumer starts, so the drain is
/// measured from a standing queue, as after an outage.
struct Runner {
    let bed: Bed
    let observer: Observer
    let binary: String
    let batchWaitMs: Int
    let workers: Int
    /// REFERRALD_PREFETCH; 0 for (workers + 1) × batch size.
    let prefetch: Int
    /// Daemons that drain the mix and hot backlogs together.
    let instances: Int

    /// Publishes `count` messages of the generator in confirmed chunks, never holding more
    /// than one chunk in memory (a 1,000,000-message backlog would otherwise cost the bench
    /// several hundred MB on the same machine as the daemon).
    func preload(_ generator: inout MixGenerator, count: Int) async throws {
        let start = monotonicNanos()
        var sent = 0
        while sent < count {
            let chunk = generator.generate(count: min(2000, count - sent))
            try await bed.publish(chunk[...])
            sent += chunk.count
        }
        let seconds = Double(monotonicNanos() - start) / 1e9
        say(String(format: "  preloaded %d messages in %.1f s (%.0f/s)", count, seconds, Double(count) / seconds))
    }

    /// Referrers are customers who activated long ago; their codes come back on the observer.
    func seedReferrers(count: Int, now: Instant, batchSize: Int) async throws -> [String] {
        var messages: [BenchMessage] = []
        for i in 0..<count {
            let account = "\(bed.name)-r\(i)"
            let at = (now - .days(400)).rfc3339
            messages.append(
                BenchMessage(
                    routingKey: "provisioning.service.activated",
                    body: Array(
                        #"{"specversion":"1.0","id":"\#(bed.name)-seed\#(i)","source":"provisioning","type":"provisioning.service.activated","time":"\#(at)","data":{"account_id":"\#(account)","activated_at":"\#(at)","segment":"consumer"}}"#
                            .utf8),
                    key: nil))
        }
        observer.collectCodes(true)
        let generator = MixGenerator(prefix: "\(bed.name)s", referrerCodes: [], now: now, seed: 0)
        let (sentinel, last) = generator.sentinel()
        for chunk in stride(from: 0, to: messages.count, by: 2000) {
            try await bed.publish(messages[chunk..<min(messages.count, chunk + 2000)])
        }
        try await bed.publish([last])
        observer.expectSentinel(account: sentinel)
        let process = try bed.spawnDaemon(
            binary: binary, batchSize: batchSize, batchWaitMs: batchWaitMs, workers: workers, prefetch: prefetch)
        try await waitForSentinel(process, timeout: 300)
        await stop(process)
        observer.collectCodes(false)
        return observer.collectedCodes.filter { $0.key.hasPrefix("\(bed.name)-r") }.map(\.value).sorted()
    }

    /// A popular referrer's history, written straight into the store as the daemon would have
    /// left it (lead, order and activation facts, the referral bound to the current program
    /// version), then its standings filled by the same backfill `referrald migrate` runs (the
    /// returned seconds). Leads and milestones fall in the 300 days before `now`, inside this
    /// year's cap ranking where they can: the rankings the hot phase's decisions read.
    func seedHistory(code: String, count: Int, now: Instant) async throws -> Double {
        if count == 0 { return 0 }
        _ = try await bed.db.run { c in
            try c.execute(
                """
                WITH owner AS (SELECT account_id, program_id FROM referral_codes WHERE code = $1),
                     version AS (SELECT max(version) AS v FROM program_versions WHERE program_id = (SELECT program_id FROM owner)),
                     n AS (SELECT g, $3::timestamptz - make_interval(secs => (g % 300) * 86400 + g % 86400) AS t
                           FROM generate_series(1, $2) g),
                     f AS (INSERT INTO facts (kind, at, lead_id, account_id, code, household_id, contact_hash, segment)
                           SELECT 'lead', t, 'hist-l' || g, NULL, $1, 'hist-h' || g, 'sha256:hist' || g, 'consumer' FROM n
                           UNION ALL SELECT 'order', t + interval '1 day', 'hist-l' || g, 'hist-a' || g, NULL, NULL, NULL, NULL FROM n
                           UNION ALL SELECT 'activated', t + interval '6 days', NULL, 'hist-a' || g, NULL, 'hist-h' || g,
                                            'sha256:hist' || g, 'consumer' FROM n)
                INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version, friend_account_id)
                SELECT 'ref-hist-' || g, 'hist-l' || g, $1, (SELECT account_id FROM owner), (SELECT program_id FROM owner),
                       (SELECT v FROM version), 'hist-a' || g
                FROM n
                """, [.text(code), .int(Int64(count)), .text(now.rfc3339)])
        }
        let start = monotonicNanos()
        try await StandingStore.backfillStandings(bed.db, logger: benchLogger)
        return Double(monotonicNanos() - start) / 1e9
    }

    /// The daemon drains a backlog of `count` messages plus the sentinel.
    func backlog(_ generator: inout MixGenerator, count: Int, batchSize: Int) async throws -> DrainResult {
        try await preload(&generator, count: count)
        let (sentinel, last) = generator.sentinel()
        try await bed.publish([last])
        observer.expectSentinel(account: sentinel)
        let start = monotonicNanos()
        let depth = DepthSampler()
        depth.start(bed)
        let processes = try (0..<max(1, instances)).map { _ in
            try bed.spawnDaemon(
                binary: binary, batchSize: batchSize, batchWaitMs: batchWaitMs, workers: workers, prefetch: prefetch)
        }
        let cpu = CPUWindow(processes: processes.map(\.processIdentifier))
        let arrival = try await waitForSentinel(processes[0], timeout: Double(count) / 100 + 120)
        let usage = cpu.stop()
        let peak = processes.compactMap { Proc.memoryKiB($0.processIdentifier, "VmHWM") }.max()
        for process in processes { await stop(process) }
        let tenths = await depth.stop(total: count + 1)
        return DrainResult(
            messages: count + 1, seconds: Double(arrival - start) / 1e9, usage: usage, peakRSSKiB: peak,
            firstTenth: tenths?.first, lastTenth: tenths?.last)
    }

    /// The ceiling: consume a batch, insert its inbox rows set-based in one transaction,
    /// publish one message per event with confirms, ack with `multiple` — the daemon's AMQP
    /// path and its smallest possible transaction, run in this process with the same modules.
    func ceiling(_ generator: inout MixGenerator, count: Int, batchSize: Int) async throws -> DrainResult {
        try await preload(&generator, count: count)
        let consumer = try await AMQPConnection.connect(
            bed.amqpURL, heartbeatSeconds: 30, connectionName: "bench ceiling consumer",
            logger: benchLogger)
        let publisher = try await AMQPConnection.connect(
            bed.amqpURL, heartbeatSeconds: 30, connectionName: "bench ceiling publisher",
            logger: benchLogger)
        try await publisher.enableConfirms()
        let db = try await PostgresConnection.connect(
            try PostgresURL(parsing: bed.environment["REFERRALD_DATABASE_URL"]!),
            applicationName: "bench ceiling", logger: benchLogger)
        let start = monotonicNanos()
        let cpu = CPUWindow(process: getpid())
        try await consumer.consume(queue: bed.settings.inboxQueue, prefetch: UInt16(max(256, 2 * batchSize)))
        var done = 0
        while done < count {
            let batch = try await consumer.nextDeliveries(max: batchSize, wait: .milliseconds(batchWaitMs))
            guard let last = batch.last else { continue }
            let entries: [InboxEntry] = batch.compactMap { d in
                guard case .success(let e) = classify(body: d.body) else { return nil }
                return InboxEntry(
                    source: e.source, eventId: e.id, type: e.type.rawValue, accountId: nil, leadId: nil,
                    factTime: e.time, body: d.body)
            }
            _ = try await db.transaction { c in try InboxStore.recordInbox(c, entries) }
            let outcomes = try await publisher.publish(
                batch.map {
                    OutgoingMessage(
                        exchange: bed.settings.eventsExchange, routingKey: "bench.ceiling", body: $0.body, headers: [:],
                        messageId: nil, contentType: "application/cloudevents+json", persistent: true, mandatory: false)
                })
            guard !outcomes.contains(.nacked) else { throw BenchError("ceiling publish nacked") }
            try await consumer.ack(last.deliveryTag, multiple: true)
            done += batch.count
        }
        let seconds = Double(monotonicNanos() - start) / 1e9
        let usage = cpu.stop()
        await consumer.close()
        await publisher.close()
        await db.close()
        return DrainResult(messages: count, seconds: seconds, usage: usage, peakRSSKiB: nil)
    }

    /// Open loop at a fixed rate: message i is due at start + i / rate whatever happened
    /// before, and its latency runs from that due time to the arrival of the downstream event
    /// it causes (coordinated omission would otherwise hide every stall of the publisher).
    /// The first `warmup` seconds of the load are not recorded: a freshly started daemon has
    /// empty caches, its first batches took 1.0-1.9 ms per event against 0.85 later (measured),
    /// and the queue that built would otherwise be reported as the steady state's tail.
    func latency(
        _ generator: inout MixGenerator, rate: Double, seconds: Double, warmup: Double,
        batchSize: Int
    ) async throws -> LatencyResult {
        let process = try bed.spawnDaemon(
            binary: binary, batchSize: batchSize, batchWaitMs: batchWaitMs, workers: workers, prefetch: prefetch)
        // Warm-up: the daemon is connected and consuming once a first activation went through.
        let (warm, warmMessage) = MixGenerator(prefix: "\(bed.name)w", referrerCodes: [], now: generator.now, seed: 0)
            .sentinel()
        observer.expectSentinel(account: warm)
        try await bed.publish([warmMessage])
        try await waitForSentinel(process, timeout: 60)

        let warmupCount = Int(rate * warmup)
        let messages = generator.generate(count: warmupCount + Int(rate * seconds))
        observer.resetLatency()
        var cpu = CPUWindow(process: process.processIdentifier)
        var recording = warmupCount == 0
        let start = monotonicNanos()
        let interval = 1e9 / rate
        var next = 0
        while next < messages.count {
            let elapsed = Double(monotonicNanos() - start)
            let due = min(messages.count, Int(elapsed / interval) + 1)
            if due <= next {
                try await Task.sleep(for: .microseconds(500))
                continue
            }
            if !recording, due > warmupCount {
                cpu = CPUWindow(process: process.processIdentifier)
                recording = true
            }
            let chunk = messages[next..<due]
            let keyed = chunk.indices.filter { $0 >= warmupCount && messages[$0].key != nil }
            observer.expect(
                keyed.map { messages[$0].key! }, sentAt: keyed.map { start + UInt64(Double($0) * interval) })
            try await bed.publish(chunk)
            next = due
        }
        let expected = messages[warmupCount...].filter { $0.key != nil }.count
        // Stragglers: wait until the last expected event arrived or nothing new came for 3 s
        // (a rejected lead's offer never comes; those keys stay unmatched).
        var pending = observer.pendingCount
        var quietSince = monotonicNanos()
        while pending > 0, monotonicNanos() - quietSince < 3_000_000_000 {
            try await Task.sleep(for: .milliseconds(100))
            let now = observer.pendingCount
            if now != pending {
                pending = now
                quietSince = monotonicNanos()
            }
        }
        let usage = cpu.stop()
        let peak = Proc.memoryKiB(process.processIdentifier, "VmHWM")
        await stop(process)
        // Named, so that a run can tell a legitimately skipped one (a status that went straight
        // past `ordered` because the install was applied with the order) from a lost one.
        let unmatched = observer.pendingKeys
        if !unmatched.isEmpty {
            say("  unmatched keys (\(unmatched.count)): \(unmatched.prefix(10).joined(separator: " "))")
        }
        return LatencyResult(
            rate: rate, warmupSeconds: warmup, published: messages.count - warmupCount, expected: expected,
            histogram: observer.latencyHistogram, usage: usage, peakRSSKiB: peak)
    }

    @discardableResult
    func waitForSentinel(_ process: Process, timeout: Double) async throws -> UInt64 {
        let deadline = monotonicNanos() + UInt64(timeout * 1e9)
        while monotonicNanos() < deadline {
            if let arrival = observer.sentinelArrival { return arrival }
            guard process.isRunning else { throw BenchError("referrald exited (status \(process.terminationStatus))") }
            try await Task.sleep(for: .milliseconds(5))
        }
        await stop(process)
        throw BenchError("the sentinel did not arrive within \(Int(timeout)) s")
    }

    /// SIGTERM: the daemon finishes the batch in hand and exits.
    func stop(_ process: Process) async {
        process.terminate()
        while process.isRunning { try? await Task.sleep(for: .milliseconds(20)) }
    }
}

/// The inbox's depth over a drain, sampled twice a second.
final class DepthSampler: @unchecked Sendable {
    // Confined: `samples` is appended by the sampling task only and read after it ended.
    private var samples: [(nanos: UInt64, depth: UInt32)] = []
    private var task: Task<Void, Never>?

    func start(_ bed: Bed) {
        let queue = bed.settings.inboxQueue
        task = Task { [self] in
            while !Task.isCancelled {
                if let depth = try? await bed.producer.declareQueue(queue, durable: true, passive: true).messageCount {
                    samples.append((monotonicNanos(), depth))
                }
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    /// Stops sampling; the rates at which the first and the last tenth of `total` drained.
    func stop(total: Int) async -> (first: Double, last: Double)? {
        task?.cancel()
        await task?.value
        func time(atDepth d: Double) -> UInt64? { samples.first { Double($0.depth) <= d }?.nanos }
        let n = Double(total)
        guard let start = samples.first(where: { Double($0.depth) < n * 0.999 })?.nanos ?? samples.first?.nanos,
            let t90 = time(atDepth: n * 0.9), let t10 = time(atDepth: n * 0.1), let t0 = time(atDepth: 0),
            t90 > start, t0 > t10
        else { return nil }
        return (n * 0.1 / (Double(t90 - start) / 1e9), n * 0.1 / (Double(t0 - t10) / 1e9))
    }
}
