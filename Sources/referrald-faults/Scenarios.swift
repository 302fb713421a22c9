import AMQP
import Foundation
import Postgres
import ReferralTestKit

/// What every scenario shares: the services, the daemon binary, the sizes and the seed.
struct SuiteConfig: Sendable {
    var services: Services
    var daemon: String
    var logDirectory: String
    var programsFile: String
    var rate: Int
    var drainTimeout: Duration
    var seed: UInt64
    var contractDirectory: String?
    var fixturesDirectory: String?
    var keepFailed: Bool
}

/// How far the load has got, for faults placed at moments of the load.
actor LoadProgress {
    private(set) var started: ContinuousClock.Instant?
    func start() { started = ContinuousClock.now }
}

/// What a fault script can use while the load runs.
struct FaultContext {
    let world: World
    let daemons: Daemons
    let progress: LoadProgress
    /// Expected length of phase two (the paced load), for placing faults at random moments in it.
    let loadDuration: Duration
    var rng: SeededGenerator
    var notes: [String] = []
    var failures: [String] = []
    /// A scenario's own recovery figure (e.g. from a cut to the next commit), reported instead
    /// of the drain after the load.
    var recovery: Duration?

    /// Sleeps until `fraction` of the paced load has gone by.
    func at(_ fraction: Double) async throws {
        while await progress.started == nil { try await Task.sleep(for: .milliseconds(20)) }
        let due = await progress.started! + loadDuration * fraction
        if due > ContinuousClock.now { try await Task.sleep(until: due) }
    }

    mutating func randomMoments(_ count: Int) -> [Double] {
        (0..<count).map { _ in 0.02 + Double(rng.next() % 9_300) / 10_000 }.sorted()
    }
}

struct Scenario {
    let name: String
    let events: Int
    var instances = 1
    var hostile = false
    /// Services other than the suite's own (the three-node cluster's broker).
    var services: Services? = nil
    /// Settings of the daemons over the world's, decided once the world exists.
    var daemonEnvironment: (World) throws -> [String: String] = { _ in [:] }
    /// Runs after the scenario, passed or not.
    var finish: () -> Void = {}
    /// Injects the faults while the load runs; returns how many it injected.
    let inject: (inout FaultContext) async throws -> Int
}

func runScenario(_ scenario: Scenario, config: SuiteConfig) async -> Verdict {
    var verdict = Verdict(
        scenario: scenario.name, events: 0, faults: 0, expected: 0, lost: 0, duplicated: 0,
        redelivered: 0, unexpected: 0, recovery: nil)
    let world: World
    do {
        world = try await World.make(
            services: scenario.services ?? config.services, scenario: scenario.name,
            programsFile: config.programsFile, logDirectory: config.logDirectory)
    } catch {
        verdict.failures.append("setup: \(error)")
        return verdict
    }
    var rng = SeededGenerator(state: config.seed ^ UInt64(truncatingIfNeeded: scenario.name.hashValueStable))
    let plan = Plan(prefix: world.name, events: scenario.events, rng: &rng)
    let ledger = BillingLedger()
    let observer = observe(world: world, into: ledger)
    let publisher = UpstreamPublisher(world: world)
    let progress = LoadProgress()
    let hostile =
        scenario.hostile
        ? HostileInput.all(contractDirectory: config.contractDirectory, fixturesDirectory: config.fixturesDirectory)
        : []
    var started: Daemons?
    do {
        let daemons = try Daemons(
            world: world, executable: config.daemon, environment: try scenario.daemonEnvironment(world))
        started = daemons
        for _ in 0..<scenario.instances { try daemons.spawn() }
        let rate = config.rate
        let load = Task {
            // Phase one: referrers activate and get codes, which the friends' leads carry.
            try await publisher.publish(plan.referrers.indices.map { plan.referrerActivation($0) })
            var codes: [String: String] = [:]
            let deadline = ContinuousClock.now + .seconds(300)
            while codes.count < plan.referrers.count {
                guard ContinuousClock.now < deadline else { throw SuiteError("referrers got no codes within 300 s") }
                try await Task.sleep(for: .milliseconds(200))
                codes = try await world.db { c in
                    Dictionary(
                        uniqueKeysWithValues: try c.query("SELECT account_id, code FROM referral_codes").map {
                            (try $0.decode("account_id", as: String.self), try $0.decode("code", as: String.self))
                        })
                }
            }
            // Phase two, paced, with the hostile input spread through it.
            await progress.start()
            var events = plan.steps.map { plan.event($0, codes: codes) }
            for (i, h) in hostile.enumerated() {
                events.insert(UpstreamEvent(raw: h.body, type: h.routingKey), at: (i * 7919) % max(events.count, 1))
            }
            try await publisher.send(events, rate: rate)
        }
        let loadDuration = Duration.milliseconds(Int64(plan.steps.count + hostile.count) * 1000 / Int64(max(rate, 1)))
        var context = FaultContext(
            world: world, daemons: daemons, progress: progress, loadDuration: loadDuration, rng: rng)
        verdict.faults = try await scenario.inject(&context)
        try await load.value
        await publisher.close()
        // Recovery is timed from the end of the last fault or of the load, whichever is later.
        for slot in daemons.processes.indices where !daemons.running.contains(slot) {
            context.failures.append(
                "instance \(slot) not running after the faults (exit \(daemons.processes[slot].terminationStatus))")
        }
        let recovery = try await Oracle.awaitQuiescence(
            world: world, ledger: ledger, expected: plan.expectedRewards.count,
            timeout: config.drainTimeout)
        await daemons.stopAll()
        observer.cancel()
        _ = await observer.value
        var judged = try await Oracle.judge(
            scenario: scenario.name, plan: plan, world: world, ledger: ledger,
            faults: verdict.faults, recovery: recovery, deadLettersExpected: scenario.hostile)
        judged.events = plan.eventCount + hostile.count
        if let measured = context.recovery, judged.recovery != nil { judged.recovery = measured }
        judged.notes += context.notes
        judged.failures += context.failures
        if scenario.hostile {
            judged.failures += await HostileInput.check(
                hostile, resent: await publisher.resent, world: world, notes: &judged.notes)
        }
        verdict = judged
    } catch {
        observer.cancel()
        verdict.failures.append("\(error)")
    }
    // Also after a failed fault: a daemon left running would retry against a dropped database.
    await started?.stopAll()
    scenario.finish()
    if !verdict.passed {
        let log = (try? String(contentsOfFile: world.logPath, encoding: .utf8)) ?? ""
        verdict.notes.append(
            "daemon log \(world.logPath), last lines:\n" + log.split(separator: "\n").suffix(15).joined(separator: "\n")
        )
    }
    if verdict.passed || !config.keepFailed {
        await world.tearDown()
    } else {
        verdict.notes.append("kept: database and queues \(world.name)")
    }
    return verdict
}

extension String {
    /// `hashValue` changes per process; the fault moments must replay from the seed.
    var hashValueStable: UInt64 { utf8.reduce(1_469_598_103_934_665_603) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 } }
}

// MARK: the scenarios of the issue

enum Scenarios {
    static func all(
        events: Int, baseEvents: Int, kills: Int, crashes: Int, outage: Duration, services: Services,
        cluster: Services?
    ) -> [Scenario] {
        [
            Scenario(name: "hostile-input", events: baseEvents, hostile: true) { _ in 0 },
            Scenario(name: "kill-9", events: events) { ctx in
                for moment in ctx.randomMoments(kills) {
                    try await ctx.at(moment)
                    let slot = ctx.daemons.running.first ?? 0
                    ctx.daemons.signal(slot, SIGKILL)
                    _ = await ctx.daemons.waitForExit(slot, timeout: .seconds(10))
                    try await Task.sleep(for: .milliseconds(Int64(ctx.rng.next() % 500)))
                    try ctx.daemons.spawn(slot: slot)
                }
                return kills
            },
            failpointScenario("crash-commit-ack", point: "after-commit", crashes: crashes, events: baseEvents),
            failpointScenario("crash-publish-mark", point: "after-publish", crashes: crashes, events: baseEvents),
            Scenario(name: "broker-restart", events: baseEvents) { ctx in
                try await ctx.at(0.4)
                try services.checkRabbitIdentity()
                _ = try services.rabbitmqctl(["stop_app"])
                // While the broker is away the outbox may only grow: nothing is lost, it waits.
                var peak: Int64 = 0
                for _ in 0..<8 {
                    peak = max(
                        peak,
                        (try? await ctx.world.count("SELECT count(*) FROM outbox WHERE published_at IS NULL")) ?? 0)
                    try await Task.sleep(for: .seconds(1))
                }
                _ = try services.rabbitmqctl(["start_app"])
                ctx.notes.append("broker down 8 s; outbox unpublished peak \(peak)")
                return 1
            },
            Scenario(name: "broker-close", events: baseEvents) { ctx in
                var closed = 0
                for moment in [0.25, 0.5, 0.75] {
                    try await ctx.at(moment)
                    closed += try closeDaemonConnections(services)
                }
                return closed
            },
            Scenario(name: "pg-restart", events: baseEvents) { ctx in
                try await ctx.at(0.4)
                try services.checkPostgresIdentity()
                _ = try services.pgCtl(["-m", "fast", "-w", "-t", "60", "stop"])
                try services.pgStart()
                return 1
            },
            Scenario(name: "pg-outage", events: baseEvents) { ctx in
                try await ctx.at(0.3)
                try services.checkPostgresIdentity()
                _ = try services.pgCtl(["-m", "fast", "-w", "-t", "60", "stop"])
                // A batch committed just before the stop may still be acked: sample after that.
                try await Task.sleep(for: .seconds(2))
                let inbox = ctx.world.settings.inboxQueue
                var low = await ctx.world.queueDepth(inbox) ?? 0
                var shrank = false
                var deadLetters: UInt32 = 0
                let end = ContinuousClock.now + outage - .seconds(2)
                while ContinuousClock.now < end {
                    try await Task.sleep(for: .seconds(1))
                    let depth = await ctx.world.queueDepth(inbox) ?? low
                    if depth < low { shrank = true }
                    low = max(low, depth)
                    deadLetters = max(deadLetters, await ctx.world.queueDepth(ctx.world.settings.deadLetterQueue) ?? 0)
                }
                try services.pgStart()
                ctx.notes.append(
                    "database down \(outage); inbox held \(low) messages, none acked: \(!shrank), dead letters \(deadLetters)"
                )
                if shrank { ctx.failures.append("the inbox shrank while the database was down: messages were acked") }
                if deadLetters > 0 { ctx.failures.append("\(deadLetters) dead letter(s) while the database was down") }
                return 1
            },
            Scenario(name: "pg-terminate", events: baseEvents) { ctx in
                var terminated = 0
                for moment in ctx.randomMoments(10) {
                    try await ctx.at(moment)
                    terminated += Int(
                        try await ctx.world.count(
                            """
                            SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                            WHERE datname = current_database() AND application_name ~ '^referrald(-[0-9]+)?$') t
                            """))
                }
                return terminated
            },
            partitionScenario(events: baseEvents, services: services),
            Scenario(name: "three-instances", events: baseEvents * 2, instances: 3) { _ in 0 },
            // An emergency stop under load, with two instances: from `rewards pause` returning
            // to `rewards resume`, not one reward may be issued; after it every reward held must
            // be issued once, under its own id (the oracle).
            Scenario(name: "rewards-pause", events: baseEvents, instances: 2) { ctx in
                try await ctx.at(0.3)
                let who = ["--reason", "fault suite: payouts stopped under load", "--actor", "fault-suite"]
                let pause = try await ctx.daemons.command(["rewards", "pause"] + who)
                guard pause.status == 0 else {
                    ctx.failures.append("rewards pause exited \(pause.status): \(pause.output)")
                    return 1
                }
                let before = try await ctx.world.count("SELECT count(*) FROM rewards")
                try await ctx.at(0.7)
                let during = try await ctx.world.count("SELECT count(*) FROM rewards") - before
                if during != 0 { ctx.failures.append("\(during) reward(s) issued while paused") }
                let waiting = try await ctx.world.count("SELECT count(*) FROM referrals WHERE stage = 'qualified'")
                let resume = try await ctx.daemons.command(["rewards", "resume"] + who)
                guard resume.status == 0 else {
                    ctx.failures.append("rewards resume exited \(resume.status): \(resume.output)")
                    return 2
                }
                ctx.notes.append(
                    "paused from 30 % to 70 % of the load: \(waiting) referrals waited at qualified; \(resume.output.trimmingCharacters(in: .whitespacesAndNewlines))"
                )
                if waiting == 0 {
                    ctx.failures.append("no referral qualified during the pause: the scenario proved nothing")
                }
                return 2
            },
        ] + (cluster.map { [clusterNodeDown($0, events: baseEvents)] } ?? []) + [

            // The DLQ deleted under load (and with it its binding): the broker returns every dead
            // letter. Valid events must keep flowing, the refused dead letters wait in the parked
            // queue, and once the DLQ is back every one of them reaches it with its reason
            // (HostileInput.check, as in hostile-input).
            Scenario(name: "dlq-deleted", events: baseEvents, hostile: true) { ctx in
                let world = ctx.world
                let settings = world.settings
                let amqp = try await world.services.connectBroker(
                    heartbeatSeconds: 30,
                    connectionName: "referrald-faults dlq", logger: quietLogger)
                defer { Task { await amqp.close() } }
                // Deleted before the paced load, in which the hostile input travels: a dead letter
                // already in the DLQ would go with it, and the check would count it as lost.
                try await amqp.deleteQueue(settings.deadLetterQueue)
                try await ctx.at(0.05)
                let inboxBefore = try await world.count("SELECT count(*) FROM inbox")
                var parkedPeak: UInt32 = 0
                let sampler = Task {
                    var peak: UInt32 = 0
                    while !Task.isCancelled {
                        peak = max(peak, await world.queueDepth(settings.parkedQueue) ?? 0)
                        try? await Task.sleep(for: .milliseconds(200))
                    }
                    return peak
                }
                try await ctx.at(0.5)
                sampler.cancel()
                parkedPeak = await sampler.value
                let applied = try await world.count("SELECT count(*) FROM inbox") - inboxBefore
                _ = try await amqp.declareQueue(
                    settings.deadLetterQueue, durable: true, arguments: ["x-queue-type": .string("quorum")])
                try await amqp.bindQueue(
                    settings.deadLetterQueue, exchange: settings.deadLetterExchange, routingKey: "")
                let restoredAt = ContinuousClock.now
                var drained = false
                while ContinuousClock.now < restoredAt + .seconds(120) {
                    if await world.queueDepth(settings.parkedQueue) == 0 {
                        drained = true
                        break
                    }
                    try await Task.sleep(for: .milliseconds(200))
                }
                ctx.notes.append(
                    "DLQ gone for the first half of the load: \(applied) valid events applied meanwhile, \(parkedPeak) dead letters parked; "
                        + "parked queue empty \(ContinuousClock.now - restoredAt) after the DLQ was back")
                if applied == 0 { ctx.failures.append("no valid event was applied while the DLQ was gone") }
                if parkedPeak == 0 { ctx.failures.append("no dead letter was parked while the DLQ was gone") }
                if !drained { ctx.failures.append("parked dead letters did not reach the DLQ within 120 s") }
                return 1
            },
            Scenario(name: "sigterm", events: baseEvents) { ctx in
                for moment in [0.2, 0.5, 0.8] {
                    try await ctx.at(moment)
                    let began = ContinuousClock.now
                    ctx.daemons.signal(0, SIGTERM)
                    let status = await ctx.daemons.waitForExit(0, timeout: .seconds(30))
                    ctx.notes.append(
                        "SIGTERM: exit \(status.map(String.init) ?? "none") after \(ContinuousClock.now - began)")
                    if status != 0 {
                        ctx.failures.append("SIGTERM under load: exit \(status.map(String.init) ?? "none within 30 s")")
                    }
                    if status == nil {
                        ctx.daemons.signal(0, SIGKILL)
                        _ = await ctx.daemons.waitForExit(0, timeout: .seconds(5))
                    }
                    try ctx.daemons.spawn(slot: 0)
                }
                return 3
            },
        ]
    }

    /// A three-node RabbitMQ cluster, the daemon given all three nodes: the node that leads the
    /// inbox's quorum queue is stopped under load and started again 10 s later. The queue elects
    /// another leader among the two left (a majority), the daemon's connections to the stopped
    /// node break and reconnect to the next node of its URL, and nothing is lost or doubled.
    static func clusterNodeDown(_ cluster: Services, events: Int) -> Scenario {
        Scenario(name: "cluster-node-down", events: events, services: cluster) { ctx in
            try await ctx.at(0.4)
            let queue = ctx.world.settings.inboxQueue
            let vhost = try AMQPURL.parseList(cluster.amqpURL)[0].vhost
            let leaders = try cluster.rabbitmqctl(["list_queues", "-p", vhost, "--no-table-headers", "name", "leader"])
            guard
                let line = leaders.split(separator: "\n").first(where: {
                    $0.split(separator: "\t").first.map(String.init) == queue
                }),
                let leader = line.split(separator: "\t").last.map(String.init)
            else { throw SuiteError("no leader found for \(queue) in: \(leaders)") }
            var node = cluster
            node.node = leader
            let stoppedAt = ContinuousClock.now
            _ = try node.rabbitmqctl(["stop_app"])
            try await Task.sleep(for: .seconds(10))
            _ = try node.rabbitmqctl(["start_app"])
            ctx.notes.append("stopped \(leader), the inbox's leader, for \(ContinuousClock.now - stoppedAt)")
            return 1
        }
    }

    /// At `crashes` random moments of the load the running instance is stopped and one with the
    /// failpoint takes over: it exits (86) at that point of its first batch, abruptly, and a
    /// normal instance is started to recover what it left behind.
    static func failpointScenario(_ name: String, point: String, crashes: Int, events: Int) -> Scenario {
        Scenario(name: name, events: events) { ctx in
            var crashed = 0
            for moment in ctx.randomMoments(crashes) {
                try await ctx.at(moment)
                ctx.daemons.signal(0, SIGTERM)
                _ = await ctx.daemons.waitForExit(0, timeout: .seconds(30))
                try ctx.daemons.spawn(slot: 0, failpoint: point)
                guard let status = await ctx.daemons.waitForExit(0, timeout: .seconds(60)) else {
                    ctx.failures.append("the failpoint \(point) was not hit within 60 s")
                    break
                }
                if status == 86 { crashed += 1 } else { ctx.failures.append("exit \(status) at the failpoint, not 86") }
                try ctx.daemons.spawn(slot: 0)
            }
            return crashed
        }
    }

    /// Timeouts of the partition scenario, short so that it runs in seconds: the answer
    /// deadline is the statement timeout + 10 s.
    static let partitionTimeouts = (statement: 5, lock: 5, idleInTransaction: 5)

    /// A silent partition between the daemon and PostgreSQL, mid-transaction: the daemon reaches
    /// the database through a proxy, which black-holes the daemon's connection while it holds a
    /// transaction open. Nothing is reset or closed: the daemon's statement hangs until its
    /// answer deadline, it reconnects (new connections pass) and retries the batch, whose locks
    /// the stranded transaction holds until the server's idle-in-transaction timeout ends it.
    /// The recovery figure runs from the cut to the first commit after it.
    static func partitionScenario(events: Int, services: Services) -> Scenario {
        let proxy = ProxyHolder()
        var scenario = Scenario(name: "pg-partition", events: events) { ctx in
            guard let proxy = proxy.proxy else { throw SuiteError("the proxy did not start") }
            var attempts = 0
            let world = ctx.world
            while attempts < 3 {
                attempts += 1
                try await ctx.at(0.2 + 0.25 * Double(attempts - 1))
                // Cut when the daemon's session is inside a transaction: polled on one
                // connection of the suite's own (not through the proxy).
                let open = try await world.db { c in
                    let deadline = ContinuousClock.now + .seconds(20)
                    while ContinuousClock.now < deadline {
                        let inTransaction =
                            try c.query(
                                """
                                SELECT count(*)::int8 AS n FROM pg_stat_activity
                                WHERE datname = current_database() AND application_name ~ '^referrald(-[0-9]+)?$' AND xact_start IS NOT NULL
                                """
                            ).first?.decode("n", as: Int64.self) ?? 0
                        if inTransaction > 0 {
                            proxy.blackHole()
                            return true
                        }
                        usleep(2_000)
                    }
                    return false
                }
                let cut = ContinuousClock.now
                let committed = try await world.count("SELECT count(*) FROM inbox")
                // Half a second on, a stranded transaction shows as the daemon's session idle
                // in one (the answer to its last statement went into the void).
                try await Task.sleep(for: .milliseconds(500))
                let stranded = try await world.count(
                    """
                    SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND application_name ~ '^referrald(-[0-9]+)?$' AND state = 'idle in transaction'
                    """)
                // Recovered once a batch commits again: the load keeps events coming.
                while try await world.count("SELECT count(*) FROM inbox") <= committed {
                    guard ContinuousClock.now - cut < .seconds(120) else {
                        ctx.failures.append("no commit within 120 s of the cut")
                        return attempts
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
                let recovered = ContinuousClock.now - cut
                ctx.notes.append(
                    "cut \(attempts): caught \(open && stranded > 0 ? "mid-transaction" : "between transactions"), "
                        + "first commit after \(seconds(recovered))")
                if open && stranded > 0 {
                    ctx.recovery = recovered
                    let t = partitionTimeouts
                    let bound = Duration.seconds(t.statement + 10 + t.idleInTransaction + 10)
                    if recovered > bound {
                        ctx.failures.append(
                            "recovery \(seconds(recovered)) is past the configured bound \(seconds(bound))")
                    }
                    return attempts
                }
            }
            ctx.failures.append("no cut caught a transaction in \(attempts) attempts")
            return attempts
        }
        scenario.daemonEnvironment = { world in
            let direct = try PostgresURL(parsing: world.databaseURL)
            let started = try TCPProxy(targetPort: direct.port)
            proxy.proxy = started
            var url = URLComponents(string: world.databaseURL)!
            url.host = "127.0.0.1"
            url.port = started.port
            // What production sets against a real partition (they cannot fire through a local
            // proxy, whose kernel answers for the cut flow; see TCPProxy).
            url.queryItems =
                (url.queryItems ?? []) + [
                    URLQueryItem(name: "keepalives", value: "1"), URLQueryItem(name: "keepalives_idle", value: "5"),
                    URLQueryItem(name: "keepalives_interval", value: "2"),
                    URLQueryItem(name: "keepalives_count", value: "3"),
                    URLQueryItem(name: "tcp_user_timeout", value: "10000"),
                ]
            let t = partitionTimeouts
            return [
                "REFERRALD_DATABASE_URL": url.string!,
                "REFERRALD_DB_STATEMENT_TIMEOUT": "\(t.statement)s", "REFERRALD_DB_LOCK_TIMEOUT": "\(t.lock)s",
                "REFERRALD_DB_IDLE_IN_TRANSACTION_TIMEOUT": "\(t.idleInTransaction)s",
            ]
        }
        scenario.finish = { proxy.proxy?.stop() }
        return scenario
    }

    /// Closes every broker connection named by the daemon (`referrald consumer|publisher`),
    /// as an operator's `close_connection` or a load balancer's idle cut would.
    static func closeDaemonConnections(_ services: Services) throws -> Int {
        let listing = try services.rabbitmqctl(["list_connections", "name", "client_properties", "--formatter", "json"])
        guard let rows = try JSONSerialization.jsonObject(with: Data(listing.utf8)) as? [[String: Any]] else {
            return 0
        }
        var closed = 0
        for row in rows {
            guard let name = row["name"] as? String else { continue }
            let properties = "\(row["client_properties"] ?? "")"
            // The consumer is the process's; each lane has a publisher (`referrald-N publisher`).
            guard
                properties.contains("referrald consumer")
                    || properties.range(of: #"referrald(-[0-9]+)? publisher"#, options: .regularExpression) != nil
            else { continue }
            _ = try? services.rabbitmqctl(["close_connection", name, "fault suite: forced close"])
            closed += 1
        }
        return closed
    }
}

/// The partition scenario's proxy, started when its world exists and stopped after it.
final class ProxyHolder: @unchecked Sendable {
    /// Set once, before the load starts, and read by the fault script and `finish` after.
    var proxy: TCPProxy?
}
