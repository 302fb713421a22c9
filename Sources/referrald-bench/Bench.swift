import ArgumentParser
import Foundation
import ReferralCore
import ReferralTestWorld

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
        let binary = daemon ?? TestWorld.daemonBesideThisProgram
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

/// Writes a line at once, even into a file or pipe (where `print` buffers until exit): a long
/// run reports each phase as it ends.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
