import Foundation

// MARK: the scenarios of the issue

/// The scenarios, in the order the suite runs them. Each kind of fault has its file: the
/// daemon's processes here, the broker in BrokerScenarios, the database in DatabaseScenarios.
enum Scenarios {
    static func all(
        events: Int, baseEvents: Int, kills: Int, crashes: Int, outage: Duration, services: Services,
        cluster: Services?
    ) -> [Scenario] {
        [
            Scenario(name: "hostile-input", events: baseEvents, hostile: true) { _ in 0 },
            kill9(events: events, kills: kills),
            failpointScenario("crash-commit-ack", point: "after-commit", crashes: crashes, events: baseEvents),
            failpointScenario("crash-publish-mark", point: "after-publish", crashes: crashes, events: baseEvents),
            brokerRestart(events: baseEvents, services: services),
            brokerClose(events: baseEvents, services: services),
            pgRestart(events: baseEvents, services: services),
            pgOutage(events: baseEvents, services: services, outage: outage),
            pgTerminate(events: baseEvents),
            partitionScenario(events: baseEvents, services: services),
            Scenario(name: "three-instances", events: baseEvents * 2, instances: 3) { _ in 0 },
            rewardsPause(events: baseEvents),
        ] + (cluster.map { [clusterNodeDown($0, events: baseEvents)] } ?? []) + [
            dlqDeleted(events: baseEvents),
            sigterm(events: baseEvents),
        ]
    }

    // MARK: the daemon's processes: killed, crashed at a failpoint, paused, stopped

    static func kill9(events: Int, kills: Int) -> Scenario {
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
        }
    }

    /// An emergency stop under load, with two instances: from `rewards pause` returning to
    /// `rewards resume`, not one reward may be issued; after it every reward held must be
    /// issued once, under its own id (the oracle).
    static func rewardsPause(events: Int) -> Scenario {
        Scenario(name: "rewards-pause", events: events, instances: 2) { ctx in
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
        }
    }

    static func sigterm(events: Int) -> Scenario {
        Scenario(name: "sigterm", events: events) { ctx in
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
}
