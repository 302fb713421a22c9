import AMQP
import ArgumentParser
import Foundation
import Histogram
import Postgres
import ReferralCore
import ReferralStore

/// Throughput and latency of the real `referrald` binary against the local RabbitMQ and
/// PostgreSQL (BENCHMARKS.md has the figures and how to read them).
///
/// Phases, in one scratch world: seed referrers (their activations through the daemon, codes
/// read from `referral.code.issued`), then on backlogs of the realistic mix: the ceiling (the
/// same AMQP path with an inbox-only transaction, run by the bench itself), the daemon at the
/// chosen batch size, the daemon at batch size 1, and finally an open-loop run at a fixed rate
/// for publish-to-downstream latency.
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "referrald-bench",
        abstract: "Measure referrald: backlog throughput, ceiling, batch size 1, latency at a fixed rate.")

    @Option(help: "Messages in the realistic-mix backlog (and the ceiling's).")
    var events = 200_000

    @Option(help: "Messages in the batch-size-1 backlog (0: events / 50, at least 2,000).")
    var batch1Events = 0

    @Option(help: "REFERRALD_BATCH_SIZE of the daemon (and the ceiling loop's batch).")
    var batchSize = 512

    @Option(help: "REFERRALD_BATCH_WAIT_MS of the daemon (and the ceiling loop's).")
    var batchWaitMs = 20

    @Option(help: "REFERRALD_WORKERS of the daemon: lanes in the process (every daemon phase).")
    var workers = 2

    @Option(
        help:
            "REFERRALD_PREFETCH of the daemon; 0 gives room for every lane's batch and one read ahead, (workers + 1) × batch size."
    )
    var prefetch = 0

    @Option(
        help:
            "Daemon processes that drain the mix and hot backlogs together (instances against one broker and database)."
    )
    var instances = 1

    @Option(help: "Open-loop rate of the latency phase in events/s (0: half the measured mix throughput).")
    var rate = 0.0

    @Option(help: "Length of the latency phase in seconds.")
    var latencySeconds = 20.0

    @Option(help: "Seconds of the same open-loop load before the latency phase starts recording.")
    var warmupSeconds = 5.0

    @Option(
        help:
            "Seconds of idle before the latency phase, with the services' CPU over them printed: what the broker and the database still do after the drains."
    )
    var settleSeconds = 0.0

    @Option(help: "Phases to run, comma-separated: ceiling, mix, hot, batch1, latency.")
    var modes = "ceiling,mix,hot,batch1,latency"

    @Option(help: "Hot phase: the share of friends that carry one popular referrer's code.")
    var hotShare = 0.3

    @Option(help: "Hot phase: referrals that popular referrer already has stored when the phase starts.")
    var hotHistory = 100_000

    @Option(help: "The referrald binary (default: beside this one).")
    var daemon: String?

    @Option(help: "Programs file for the daemon.")
    var programs = "deploy/programs.example.yaml"

    @Option(
        help:
            "Friends' stories in flight in the mix: how far apart one story's events are in the stream, and so how often two concurrent batches share a story."
    )
    var stories = 2000

    @Option(help: "Seed of the workload generator.")
    var seed: UInt64 = 1

    @Flag(help: "Keep the scratch database and queues (for EXPLAIN and pg_stat_* after the run).")
    var keep = false

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let amqpURL = env["REFERRALD_TEST_AMQP_URL"] ?? "amqp://referrald:referrald@127.0.0.1:5672/referrald_test"
        let databaseURL =
            env["REFERRALD_TEST_DATABASE_URL"] ?? "postgres://referrald:referrald@127.0.0.1:54329/referrald"
        let binary =
            daemon
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("referrald").path
        let phases = Set(modes.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        var programsFile = URL(fileURLWithPath: programs).standardizedFileURL.path
        if phases.contains("hot") {
            // A popular referrer's leads would otherwise end as `too_many_leads` after the fifth
            // of the day, and the phase would measure the cheap rejection path. Every phase of
            // the run uses the same lifted file, so that hot and plain mix compare like with like.
            programsFile = try liftedLimits(programsFile)
            say(
                "programs: \(programs) with max_leads_per_code_per_day and max_rewards_per_referrer_per_year lifted to 1000000 (hot phase)"
            )
        }

        say("machine: \(machineDescription())")
        say(
            "options: events=\(events) batch-size=\(batchSize) batch-wait-ms=\(batchWaitMs) workers=\(workers) prefetch=\(prefetch == 0 ? (workers + 1) * batchSize : prefetch) instances=\(instances) modes=\(modes)"
        )
        let bed = try await Bed.make(amqpURL: amqpURL, databaseURL: databaseURL, programsFile: programsFile)
        let observer = Observer()
        try await observer.start(url: bed.amqpURL, queue: bed.observerQueue)
        let runner = Runner(
            bed: bed, observer: observer, binary: binary, batchWaitMs: batchWaitMs, workers: workers,
            prefetch: prefetch, instances: instances)
        var report = Report()
        do {
            let now = Instant(microseconds: Int64(Date().timeIntervalSince1970 * 1_000_000))
            let codes = try await runner.seedReferrers(count: max(200, events / 25), now: now, batchSize: batchSize)
            say("seeded \(codes.count) referrers with codes")
            func mix(_ prefix: String, hotCode: String? = nil) -> MixGenerator {
                MixGenerator(
                    prefix: "\(bed.name)\(prefix)", referrerCodes: codes, now: now, seed: seed, hotCode: hotCode,
                    hotShare: hotShare, storiesInFlight: stories)
            }
            if phases.contains("ceiling") {
                var generator = mix("c")
                report.ceiling = try await runner.ceiling(&generator, count: events, batchSize: batchSize)
                say(report.ceiling!.line("ceiling"))
            }
            if phases.contains("mix") {
                var generator = mix("m")
                report.mix = try await runner.backlog(&generator, count: events, batchSize: batchSize)
                say(report.mix!.line("mix, batch \(batchSize)"))
            }
            if phases.contains("hot"), let hotCode = codes.first {
                let seeded = try await runner.seedHistory(code: hotCode, count: hotHistory, now: now)
                report.hotBackfillSeconds = seeded
                say(
                    String(
                        format:
                            "seeded %d stored referrals of the referrer of %@; standings backfilled in %.1f s (%.0f s per million referrals)",
                        hotHistory, hotCode, seeded, hotHistory > 0 ? seeded * 1_000_000 / Double(hotHistory) : 0))
                var generator = mix("h", hotCode: hotCode)
                report.hot = try await runner.backlog(&generator, count: events, batchSize: batchSize)
                say(
                    report.hot!.line(
                        String(
                            format: "hot mix (%.0f %% of friends on one referrer with %d referrals stored), batch %d",
                            hotShare * 100, hotHistory, batchSize)))
            }
            if phases.contains("batch1") {
                var generator = mix("b")
                report.batch1 = try await runner.backlog(
                    &generator, count: batch1Events > 0 ? batch1Events : max(2000, events / 50),
                    batchSize: 1)
                say(report.batch1!.line("mix, batch 1"))
            }
            if phases.contains("latency") {
                let target = rate > 0 ? rate : (report.mix.map { $0.eventsPerSecond / 2 } ?? 2000)
                if settleSeconds > 0 {
                    let cpu = CPUWindow(processes: [])
                    try await Task.sleep(for: .milliseconds(Int(settleSeconds * 1000)))
                    let idle = cpu.stop()
                    say(
                        String(
                            format:
                                "settled %.0f s after the drains: CPU (cores) rabbitmq %.2f, postgres %.2f, machine %.0f %% busy",
                            settleSeconds, idle.services["beam.smp"] ?? 0, idle.services["postgres"] ?? 0,
                            idle.machineBusy * 100))
                }
                var generator = mix("l")
                report.latency = try await runner.latency(
                    &generator, rate: target, seconds: latencySeconds,
                    warmup: warmupSeconds, batchSize: batchSize)
                say(report.latency!.line)
            }
        } catch {
            say("bench failed: \(error)")
            observer.stop()
            await bed.tearDown()
            throw ExitCode.failure
        }
        observer.stop()
        if keep { say("kept database and queues \(bed.name)") } else { await bed.tearDown() }
        say("")
        say(report.table(batchSize: batchSize))
    }

    func machineDescription() -> String {
        let cpu =
            Proc.read("/proc/cpuinfo")?.split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { $0.split(separator: ":", maxSplits: 1).last!.trimmingCharacters(in: .whitespaces) } ?? "?"
        let memory =
            Proc.read("/proc/meminfo")?.split(separator: "\n").first.map {
                String($0.split(separator: " ", omittingEmptySubsequences: true)[1])
            }
            .flatMap { Int($0) }.map { "\($0 / 1024 / 1024) GiB" } ?? "?"
        let load = Proc.read("/proc/loadavg")?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
        return "\(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpu), \(memory), load average \(load)"
    }

    /// A copy of the programs file with both per-referrer limits lifted.
    func liftedLimits(_ path: String) throws -> String {
        var text = try String(contentsOfFile: path, encoding: .utf8)
        for key in ["max_leads_per_code_per_day", "max_rewards_per_referrer_per_year"] {
            text = text.replacingOccurrences(of: "\(key): [0-9]+", with: "\(key): 1000000", options: .regularExpression)
        }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent(
            "referrald-bench-programs-\(getpid()).yaml"
        ).path
        try text.write(toFile: out, atomically: true, encoding: .utf8)
        return out
    }
}

/// One drained backlog.
struct DrainResult {
    var messages: Int
    var seconds: Double
    var usage: CPUWindow.Usage
    var peakRSSKiB: Int64?
    /// Drain rates of the first and the last 10 % of the backlog (from the inbox's depth):
    /// whether throughput holds as the tables grow.
    var firstTenth: Double?
    var lastTenth: Double?

    var eventsPerSecond: Double { Double(messages) / seconds }

    func line(_ label: String) -> String {
        let rss = peakRSSKiB.map { String(format: "%.1f MiB", Double($0) / 1024) } ?? "-"
        var out = String(
            format:
                "%@: %d messages in %.2f s = %.0f events/s; peak RSS %@; CPU (cores) process %.2f, rabbitmq %.2f, postgres %.2f, machine busy %.0f %%",
            label, messages, seconds, eventsPerSecond, rss, usage.process, usage.services["beam.smp"] ?? 0,
            usage.services["postgres"] ?? 0, usage.machineBusy * 100)
        if let firstTenth, let lastTenth {
            out += String(
                format: "; first 10 %% %.0f/s, last 10 %% %.0f/s (last / first %.2f)", firstTenth, lastTenth,
                lastTenth / firstTenth)
        }
        return out
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

struct LatencyResult {
    var rate: Double
    var warmupSeconds: Double
    var published: Int
    var expected: Int
    var histogram: Histogram<UInt64>
    var usage: CPUWindow.Usage
    var peakRSSKiB: Int64?

    func ms(_ p: Double) -> Double { Double(histogram.valueAtPercentile(p)) / 1000 }

    var line: String {
        String(
            format:
                "latency at %.0f events/s after %.0f s of warm-up (%d published, %d of %d expected downstream events matched): p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, max %.1f ms; CPU (cores) daemon %.2f, rabbitmq %.2f, postgres %.2f; peak RSS %.1f MiB",
            rate, warmupSeconds, published, Int(histogram.totalCount), expected, ms(50), ms(99), ms(99.9),
            Double(histogram.max) / 1000,
            usage.process, usage.services["beam.smp"] ?? 0, usage.services["postgres"] ?? 0,
            Double(peakRSSKiB ?? 0) / 1024)
    }
}

struct Report {
    var ceiling: DrainResult?
    var mix: DrainResult?
    var batch1: DrainResult?
    var latency: LatencyResult?
    var hot: DrainResult?
    var hotBackfillSeconds: Double?

    func table(batchSize: Int) -> String {
        var rows = ["| measure | value |", "|---|---|"]
        func f(_ v: Double) -> String { String(format: "%.0f", v) }
        if let mix { rows.append("| realistic mix, batch \(batchSize) (events/s) | \(f(mix.eventsPerSecond)) |") }
        if let ceiling { rows.append("| ceiling: inbox-only transaction (events/s) | \(f(ceiling.eventsPerSecond)) |") }
        if let batch1 { rows.append("| realistic mix, batch 1 (events/s) | \(f(batch1.eventsPerSecond)) |") }
        if let mix, let ceiling {
            rows.append(String(format: "| mix / ceiling | %.2f |", mix.eventsPerSecond / ceiling.eventsPerSecond))
        }
        if let mix, let batch1 {
            rows.append(String(format: "| mix / batch 1 | %.1f |", mix.eventsPerSecond / batch1.eventsPerSecond))
        }
        if let hot { rows.append("| hot mix (events/s) | \(f(hot.eventsPerSecond)) |") }
        if let mix, let hot {
            rows.append(String(format: "| hot mix / mix | %.2f |", hot.eventsPerSecond / mix.eventsPerSecond))
        }
        if let latency {
            rows.append(
                String(
                    format:
                        "| latency at %.0f events/s (after %.0f s of warm-up): p50 / p99 / p99.9 (ms) | %.1f / %.1f / %.1f |",
                    latency.rate, latency.warmupSeconds, latency.ms(50), latency.ms(99), latency.ms(99.9)))
        }
        if let rss = mix?.peakRSSKiB {
            rows.append(String(format: "| peak RSS draining the backlog | %.1f MiB |", Double(rss) / 1024))
        }
        if let mix {
            rows.append(
                String(
                    format:
                        "| CPU while draining (cores): daemon / rabbitmq / postgres / machine busy | %.2f / %.2f / %.2f / %.0f %% |",
                    mix.usage.process, mix.usage.services["beam.smp"] ?? 0, mix.usage.services["postgres"] ?? 0,
                    mix.usage.machineBusy * 100))
        }
        return rows.joined(separator: "\n")
    }
}

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

/// Writes a line at once, even into a file or pipe (where `print` buffers until exit): a long
/// run reports each phase as it ends.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
