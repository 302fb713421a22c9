import Foundation
import Postgres

// MARK: the database: restarted, down, its sessions terminated, partitioned

extension Scenarios {
    static func pgRestart(events: Int, services: Services) -> Scenario {
        Scenario(name: "pg-restart", events: events) { ctx in
            try await ctx.at(0.4)
            try services.checkPostgresIdentity()
            _ = try services.pgCtl(["-m", "fast", "-w", "-t", "60", "stop"])
            try services.pgStart()
            return 1
        }
    }

    static func pgOutage(events: Int, services: Services, outage: Duration) -> Scenario {
        Scenario(name: "pg-outage", events: events) { ctx in
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
        }
    }

    static func pgTerminate(events: Int) -> Scenario {
        Scenario(name: "pg-terminate", events: events) { ctx in
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
}

/// The partition scenario's proxy, started when its world exists and stopped after it.
/// `@unchecked Sendable`: `proxy` is set once, before the load starts (and the tasks that read
/// it exist), and only read after.
final class ProxyHolder: @unchecked Sendable {
    var proxy: TCPProxy?
}
