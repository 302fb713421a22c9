import Foundation

/// One event that no transaction can apply, in a batch of good ones: the good events must be
/// applied and the poison alone dead-lettered, without re-running the batch one event at a time.
/// The poison is the failpoint `poison-event:<id>`: the daemon's transaction fails after its
/// writes whenever that event is in it, as it would for a value the database cannot store.
enum PoisonCheck {
    struct Result {
        let good: Int
        let applied: Int64
        let deadLettered: UInt32
        let took: Duration
        /// Transactions the daemon's database saw from start to stop: about 2·log₂ n for the
        /// search by halves, plus the loop's own (timer scans, relay); about n event by event.
        let transactions: Int64
    }

    static func run(config: SuiteConfig, good: Int) async throws -> Result {
        try await World.with(config: config, scenario: "poison") { world in
            try await measure(world: world, config: config, good: good)
        }
    }

    private static func measure(world: World, config: SuiteConfig, good: Int) async throws -> Result {
        let activatedAt = ISO8601DateFormatter().string(from: Date())
        func activation(_ id: String) -> UpstreamEvent {
            UpstreamEvent(
                id: "\(world.name)-\(id)", type: "provisioning.service.activated",
                data: [
                    "account_id": "\(world.name)-\(id)", "activated_at": activatedAt, "segment": "consumer",
                ])
        }
        var events = (0..<good).map { activation("g\($0)") }
        let poison = activation("poison")
        events.insert(poison, at: good / 2)
        // The whole backlog waits in the inbox before the daemon starts, so that the poison
        // arrives inside a full batch.
        let publisher = UpstreamPublisher(world: world)
        try await publisher.publish(events)
        await publisher.close()
        let before = try await transactions(world)
        let daemons = try Daemons(world: world, executable: config.daemon)
        let started = ContinuousClock.now
        try daemons.spawn(failpoint: "poison-event:\(poison.id)")
        let deadline = started + .seconds(120)
        var applied: Int64 = 0
        var deadLettered: UInt32 = 0
        var polls: Int64 = 0
        while ContinuousClock.now < deadline {
            applied = try await world.count("SELECT count(*) FROM referral_codes")
            polls += 1
            deadLettered = await world.queueDepth(world.settings.deadLetterQueue) ?? 0
            if applied >= good && deadLettered >= 1 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let took = ContinuousClock.now - started
        await daemons.stopAll()
        // The daemon's backend flushed its statistics when it disconnected.
        let after = try await transactions(world)
        let poisonCoded = try await world.count(
            "SELECT count(*) FROM referral_codes WHERE account_id = '\(world.name)-poison'")
        if poisonCoded != 0 { throw SuiteError("the poison event was applied") }
        // Our own reads are transactions too: each poll, and the first count's own.
        return Result(
            good: good, applied: applied, deadLettered: deadLettered, took: took,
            transactions: after - before - polls - 1)
    }

    private static func transactions(_ world: World) async throws -> Int64 {
        try await world.count(
            """
            SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = current_database()
            """)
    }
}
