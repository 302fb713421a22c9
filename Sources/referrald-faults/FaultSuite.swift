import ArgumentParser
import Foundation
import ReferralCore
import ReferralTestKit
import ReferralTestWorld

/// The fault suite: drives a referral load with known rewards through the real `referrald run`,
/// RabbitMQ and PostgreSQL while it kills, restarts and cuts them, and judges every reward
/// billing received. Exit status 0 only if no scenario lost, doubled or invented a reward.
@main
struct FaultSuite: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "referrald-faults",
        abstract: "Fault-inject the real daemon and services under load; print lost/duplicated rewards per scenario.",
        discussion: """
            It restarts and stops the services it is given: point it only at a RabbitMQ node and a \
            PostgreSQL cluster nobody else uses meanwhile (scripts/fault-suite.sh).
            """)

    static let env = ProcessInfo.processInfo.environment
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    @Option(help: "RabbitMQ URL (vhost included).")
    var amqpURL = env["REFERRALD_AMQP_URL"] ?? "amqp://referrald:referrald@127.0.0.1:5672/referrald"
    @Option(help: "PostgreSQL URL of a role that may create databases; each scenario creates its own.")
    var databaseURL = env["REFERRALD_DATABASE_URL"] ?? "postgres://referrald:referrald@127.0.0.1:54329/referrald"
    @Option(help: "RabbitMQ node that serves --amqp-url (restarted by broker-restart).")
    var rabbitmqctlNode = env["REFERRALD_RABBITMQ_NODE"] ?? "referrald-5672@localhost"
    @Option(help: "rabbitmqctl executable.")
    var rabbitmqctl = "/usr/lib/rabbitmq/bin/rabbitmqctl"
    @Option(help: "Data directory of the PostgreSQL cluster that serves --database-url (restarted by pg-*).")
    var pgData = FaultSuite.packageRoot + "/.services/postgres"
    @Option(help: "Folder of pg_ctl.")
    var pgBin =
        (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql"))?
        .sorted { $0.compare($1, options: .numeric) == .orderedAscending }.last.map { "/usr/lib/postgresql/\($0)/bin" }
        ?? "/usr/lib/postgresql/15/bin"
    @Option(help: "The referrald binary (default: beside this one).")
    var daemon = TestWorld.daemonBesideThisProgram
    @Option(
        help:
            "Comma-separated scenarios, or 'all'; 'memory' and 'memory-large' are the RSS checks, 'poison' the failing-event check."
    )
    var scenarios = "all"
    @Option(help: "Events of the kill -9 scenario.")
    var events = 10_000
    @Option(help: "Events of every other scenario.")
    var baseEvents = 2_000
    @Option(help: "kill -9 moments in the kill-9 scenario.")
    var kills = 20
    @Option(help: "Crashes at each failpoint.")
    var crashes = 5
    @Option(help: "Seconds PostgreSQL is down in pg-outage.")
    var outageSeconds = 60
    @Option(help: "Upstream events per second.")
    var rate = 400
    @Option(help: "Seconds a scenario may take to deliver everything after its last fault.")
    var drainTimeout = 180
    @Option(
        help:
            "AMQP URL of a three-node RabbitMQ cluster, nodes comma-separated (scripts/rabbit-cluster.sh env); without it the cluster-node-down scenario is skipped."
    )
    var clusterAmqpURL = env["REFERRALD_CLUSTER_AMQP_URL"] ?? ""
    @Option(help: "One node of that cluster, for rabbitmqctl.")
    var clusterNode = env["REFERRALD_CLUSTER_NODES"]?.split(separator: ",").first.map(String.init) ?? ""
    @Option(help: "Good events around the poison in the poison check.")
    var poisonGood = 500
    @Option(help: "Messages waiting in the queue for the memory check.")
    var queuedMessages = 1_000_000
    @Option(help: "Events of about 250 KiB for the large-body memory check.")
    var largeEvents = 2_000
    @Option(help: "Seed of the plans and fault moments (printed; a failure replays with it).")
    var seed: UInt64 = 2026
    @Option(help: "The shared contract (its invalid examples join the hostile input).")
    var contractDir =
        env["REFERRALD_CONTRACT_DIR"]
        ?? URL(fileURLWithPath: FaultSuite.packageRoot + "/../shared/contract").standardized.path
    @Flag(help: "Keep the database and queues of a failed scenario for inspection.")
    var keepFailed = false
    @Option(help: "Where the daemons' logs go.")
    var logDir = FileManager.default.temporaryDirectory.appendingPathComponent("referrald-faults").path

    func run() async throws {
        let services = Services(
            amqpURL: amqpURL, databaseURL: databaseURL, rabbitmqctl: rabbitmqctl,
            node: rabbitmqctlNode, pgBin: pgBin, pgData: pgData)
        try FileManager.default.createDirectory(atPath: logDir, withIntermediateDirectories: true)
        let programs = logDir + "/programs-fast.yaml"
        try FastPrograms.yaml(hold: "2s").write(toFile: programs, atomically: true, encoding: .utf8)
        let contract =
            FileManager.default.fileExists(atPath: contractDir + "/examples/invalid/manifest.json") ? contractDir : nil
        if contract == nil {
            say("contract: \(contractDir) not found; hostile input uses our fixtures and generated bodies only")
        }
        let config = SuiteConfig(
            services: services, daemon: daemon, logDirectory: logDir, programsFile: programs, rate: rate,
            drainTimeout: .seconds(drainTimeout), seed: seed, contractDirectory: contract,
            fixturesDirectory: FaultSuite.packageRoot + "/Tests/ReferralCoreTests/Fixtures/invalid",
            keepFailed: keepFailed)
        let wanted = Set(scenarios.split(separator: ",").map(String.init))
        var cluster: Services?
        if !clusterAmqpURL.isEmpty, !clusterNode.isEmpty {
            cluster = services
            cluster?.amqpURL = clusterAmqpURL
            cluster?.node = clusterNode
        } else {
            say("cluster-node-down: skipped (no --cluster-amqp-url: start one with scripts/rabbit-cluster.sh)")
        }
        let chosen = Scenarios.all(
            events: events, baseEvents: baseEvents, kills: kills, crashes: crashes,
            outage: .seconds(outageSeconds), services: services, cluster: cluster
        )
        .filter { wanted.contains("all") || wanted.contains($0.name) }
        say("fault suite: seed \(seed), rate \(rate)/s, \(chosen.count) scenario(s), daemon logs in \(logDir)")
        let began = ContinuousClock.now
        var verdicts: [Verdict] = []
        for scenario in chosen {
            say("scenario \(scenario.name): \(scenario.events) events …")
            let started = ContinuousClock.now
            let verdict = await runScenario(scenario, config: config)
            say(
                "  \(verdict.passed ? "passed" : "FAILED") in \(seconds(ContinuousClock.now - started)): "
                    + "expected \(verdict.expected) rewards, lost \(verdict.lost), duplicated \(verdict.duplicated), "
                    + "redelivered \(verdict.redelivered), unexpected \(verdict.unexpected)")
            for note in verdict.notes { say("  note: \(note)") }
            for failure in verdict.failures { say("  FAILURE: \(failure)") }
            verdicts.append(verdict)
        }
        var memoryPassed = true
        if wanted.contains("all") || wanted.contains("memory") {
            say("memory: \(queuedMessages) messages waiting in the inbox …")
            do {
                let m = try await MemoryCheck.run(config: config, count: queuedMessages, sample: .seconds(15))
                let mib = Double(m.peakRSS) / 1_048_576
                memoryPassed = m.peakRSS < 100 * 1_048_576 && m.peakRSS > 0
                say(
                    String(
                        format:
                            "memory: RSS peak %.1f MiB with %d messages queued (%u still waiting after 15 s; queued in %@) %@",
                        mib, m.queued, m.stillWaiting, seconds(m.publishTook),
                        memoryPassed ? "ok (< 100 MiB)" : "FAILED (>= 100 MiB)"))
            } catch {
                memoryPassed = false
                say("memory: FAILED: \(error)")
            }
        }
        var poisonPassed = true
        if wanted.contains("all") || wanted.contains("poison") {
            say("poison: \(poisonGood) good events and 1 that no transaction can apply, in one backlog …")
            do {
                let p = try await PoisonCheck.run(config: config, good: poisonGood)
                // Event by event, the batch around the poison cost a transaction per event.
                poisonPassed = p.applied == Int64(p.good) && p.deadLettered == 1 && p.transactions < Int64(p.good / 2)
                say(
                    "poison: \(p.applied) of \(p.good) applied, \(p.deadLettered) dead-lettered, \(p.transactions) transactions, "
                        + "in \(seconds(p.took)) \(poisonPassed ? "ok" : "FAILED (needs all applied, 1 dead-lettered, < \(p.good / 2) transactions)")"
                )
            } catch {
                poisonPassed = false
                say("poison: FAILED: \(error)")
            }
        }
        if wanted.contains("all") || wanted.contains("memory-large") {
            say("memory-large: \(largeEvents) valid events of 250 KiB waiting in the inbox, default settings …")
            do {
                let m = try await LargeBodyCheck.run(config: config, count: largeEvents)
                let ok = m.peakRSS <= LargeBodyCheck.limit && m.peakRSS > 0 && m.deadLetters == 0
                memoryPassed = memoryPassed && ok
                say(
                    String(
                        format:
                            "memory-large: %d events of %d bytes drained in %@, %u dead letters, peak RSS (VmHWM) %.1f MiB %@",
                        m.events, m.bodyBytes, seconds(m.drained), m.deadLetters, Double(m.peakRSS) / 1_048_576,
                        ok ? "ok (≤ 256 MiB)" : "FAILED (limit 256 MiB, no dead letters)"))
            } catch {
                memoryPassed = false
                say("memory-large: FAILED: \(error)")
            }
        }
        printTable(verdicts)
        let failed = verdicts.filter { !$0.passed }.count + (memoryPassed ? 0 : 1) + (poisonPassed ? 0 : 1)
        say(
            "fault suite: \(verdicts.count - verdicts.filter { !$0.passed }.count) passed, \(failed) failed in \(seconds(ContinuousClock.now - began))"
        )
        if failed > 0 { throw ExitCode(1) }
    }

    func printTable(_ verdicts: [Verdict]) {
        let header = [
            "scenario", "events", "faults", "rewards", "lost", "duplicated", "redelivered", "unexpected", "recovery",
            "result",
        ]
        let rows = verdicts.map { v in
            [
                v.scenario, "\(v.events)", "\(v.faults)", "\(v.expected)", "\(v.lost)", "\(v.duplicated)",
                "\(v.redelivered)",
                "\(v.unexpected)", v.recovery.map(seconds) ?? "-", v.passed ? "ok" : "FAILED",
            ]
        }
        let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max()! }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                i == 0
                    ? c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[i] - c.count) + c
            }.joined(separator: "  ")
        }
        say("")
        say(line(header))
        say(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
        for row in rows { say(line(row)) }
        say("")
    }
}

/// Line by line even into a pipe: CI shows progress as it happens, not at exit.
func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

func seconds(_ d: Duration) -> String {
    String(format: "%.1f s", d.inSeconds)
}
