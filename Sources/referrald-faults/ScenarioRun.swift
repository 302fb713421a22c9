import Foundation
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
