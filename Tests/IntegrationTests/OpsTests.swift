import AMQP
import Foundation
import ReferralCore
import ReferralWorker
import Testing

/// The daemon as systemd and an SRE see it: the real binary, real services, a fake notify
/// socket, and a proxy that takes the database away from this daemon only.
@Suite(.serialized, .tearsDownTestBeds) struct OpsTests {
    static let activationType = "provisioning.service.activated"

    /// The bed's database URL with the proxy's port in it.
    static func databaseURL(_ bed: TestBed, through proxy: TCPProxy) -> String {
        var parts = URLComponents(string: bed.environment["REFERRALD_DATABASE_URL"]!)!
        parts.port = proxy.port
        return parts.string!
    }

    static var postgresPort: Int { URLComponents(string: TestServices.databaseURL)?.port ?? 5432 }

    @Test func notifiesReadyPingsOnlyWhileProgressingAndStopsCleanly() async throws {
        let bed = try await TestBed.make()
        let proxy = try TCPProxy(upstreamPort: Self.postgresPort)
        let notify = try NotifyListener()
        let port = Ops.freePort()
        let daemon = try bed.spawnDaemon(extraEnvironment: [
            "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000", "REFERRALD_HTTP_PORT": "\(port)",
            "REFERRALD_DATABASE_URL": Self.databaseURL(bed, through: proxy),
        ])
        func withheld() -> Double {
            Ops.http(port: port, path: "/metrics").flatMap {
                Ops.metric($0.body, "referrald_watchdog_pings_withheld_total")
            }
                ?? 0
        }

        #expect(try await bed.eventually(timeout: .seconds(20)) { !notify.times(of: "READY=1").isEmpty })
        // Healthy: a ping every WatchdogSec/2 = 0.5 s.
        #expect(try await bed.eventually(timeout: .seconds(5)) { notify.times(of: "WATCHDOG=1").count >= 3 })
        #expect(notify.statusLines().contains("STATUS=consuming"))

        // A start on a busy machine may already have let a ping time pass: count from here.
        let before = withheld()
        proxy.cut()
        let cutAt = ContinuousClock.now
        // The daemon's own count of ping times it let pass proves the pings would have come:
        // from the first withheld one, three more ping times pass without a ping.
        #expect(try await bed.eventually(timeout: .seconds(20)) { withheld() >= before + 1 })
        let quietFrom = ContinuousClock.now
        #expect(try await bed.eventually(timeout: .seconds(20)) { withheld() >= before + 4 })
        let pingsWhileCut = notify.times(of: "WATCHDOG=1").filter { $0 >= quietFrom }
        #expect(pingsWhileCut.isEmpty, "pings while the database was unreachable: \(pingsWhileCut.count)")
        let lastPing = notify.times(of: "WATCHDOG=1").last!
        print("ops: last ping \(lastPing - cutAt) after the cut; status lines: \(notify.statusLines())")
        #expect(notify.statusLines().contains { $0.hasPrefix("STATUS=database unavailable") })

        proxy.restore()
        let restoredAt = ContinuousClock.now
        #expect(
            try await bed.eventually(timeout: .seconds(25)) {
                notify.times(of: "WATCHDOG=1").contains { $0 > restoredAt }
            })
        print(
            "ops: pings resumed \(notify.times(of: "WATCHDOG=1").first { $0 > restoredAt }! - restoredAt) after the restore"
        )

        let stopAt = ContinuousClock.now
        daemon.terminate()
        #expect(await Ops.waitForExit(daemon))
        #expect(daemon.terminationStatus == 0)
        #expect(notify.times(of: "STOPPING=1").contains { $0 >= stopAt })
        notify.stop()
        proxy.stop()
    }

    @Test func metricsCountAKnownScenarioAndReadinessFollowsTheDatabase() async throws {
        let bed = try await TestBed.make()
        let proxy = try TCPProxy(upstreamPort: Self.postgresPort)
        let port = Ops.freePort()
        let daemon = try bed.spawnDaemon(extraEnvironment: [
            "REFERRALD_HTTP_PORT": "\(port)", "REFERRALD_DATABASE_URL": Self.databaseURL(bed, through: proxy),
        ])
        #expect(
            try await bed.eventually(timeout: .seconds(20)) { Ops.http(port: port, path: "/readyz")?.status == 200 })
        #expect(Ops.http(port: port, path: "/healthz")?.status == 200)
        #expect(Ops.http(port: port, path: "/nope")?.status == 404)
        #expect(Ops.http("POST", port: port, path: "/metrics")?.status == 405)
        // Clients that connect and say nothing hold a connection each, never the endpoint:
        // behind 50 of them /metrics still answers at once (served one at a time, each held it
        // for its 2 s deadline in turn). An oversized request head is refused.
        let silent = (0..<50).compactMap { _ in TCPProxy.connectLocal(port: port) }
        #expect(silent.count == 50)
        let askedAt = ContinuousClock.now
        #expect(Ops.http(port: port, path: "/metrics")?.status == 200)
        let waited = ContinuousClock.now - askedAt
        for fd in silent { close(fd) }
        print("ops: /metrics behind 50 silent clients answered after \(waited)")
        #expect(waited < .seconds(1))
        #expect(Ops.http(port: port, path: "/healthz?" + String(repeating: "x", count: 10_000))?.status == 431)

        // 3 activations, 1 duplicate of the first, 2 bodies that are not JSON.
        let bodies = (1...3).map { PipelineTests.activation(id: "ops-\($0)", account: "acct-ops-\($0)") }
        for body in bodies { try await bed.publish(body, type: Self.activationType) }
        try await bed.publish(bodies[0], type: Self.activationType)
        try await bed.publish(Array("{not json".utf8), type: Self.activationType)
        try await bed.publish(Array("<xml/>".utf8), type: Self.activationType)
        #expect(try await bed.take(from: bed.observerQueue, count: 3).count == 3)
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.deadLetterQueue) == 2 })

        let type = Self.activationType
        var text = ""
        let settled = try await bed.eventually {
            text = Ops.http(port: port, path: "/metrics")?.body ?? ""
            return Ops.metric(text, "referrald_events_consumed_total", ["type": type, "outcome": "dead_lettered"]) == 2
                && Ops.metric(text, "referrald_events_consumed_total", ["type": type, "outcome": "applied"]) == 3
                && Ops.metric(text, "referrald_events_consumed_total", ["type": type, "outcome": "duplicate"]) == 1
                // Recorded after the ack, which follows the counters above: all 4 valid deliveries.
                && Ops.metric(text, "referrald_end_to_end_seconds_count") == 4
        }
        #expect(settled, "metrics:\n\(text)")
        #expect(Ops.metric(text, "referrald_dead_letters_total", ["code": "not_json"]) == 2)
        #expect(Ops.metric(text, "referrald_events_consumed_total", ["type": type, "outcome": "failed"]) == nil)
        #expect((Ops.metric(text, "referrald_batch_size_count") ?? 0) >= 1)
        #expect((Ops.metric(text, "referrald_batch_seconds_count") ?? 0) >= 1)
        #expect(Ops.metric(text, "referrald_connection_up", ["peer": "postgres"]) == 1)
        #expect(Ops.metric(text, "referrald_connection_up", ["peer": "amqp"]) == 1)
        #expect(Ops.metric(text, "referrald_outbox_backlog") != nil)
        #expect(Ops.metric(text, "referrald_timers_due") != nil)
        #expect((Ops.metric(text, "referrald_start_time_seconds") ?? 0) > 1_700_000_000)
        #expect(Ops.metric(text, "referrald_build_info", ["version": BuildInfo.version]) == 1)
        #expect((Ops.metric(text, "process_resident_memory_bytes") ?? 0) > 1_000_000)
        #expect((Ops.metric(text, "process_open_fds") ?? 0) > 3)
        #expect((Ops.metric(text, "process_cpu_seconds_total") ?? 0) > 0)
        #expect((Ops.metric(text, "referrald_loop_iterations_total") ?? 0) > 0)
        // Every metric says what it is.
        let typed = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] }
        let helped = Set(
            text.split(separator: "\n").filter { $0.hasPrefix("# HELP ") }.map { $0.split(separator: " ")[2] })
        #expect(
            !typed.isEmpty && typed.allSatisfy(helped.contains), "no HELP for \(typed.filter { !helped.contains($0) })")

        proxy.cut()
        var notReady = ""
        #expect(
            try await bed.eventually(timeout: .seconds(10)) {
                guard let r = Ops.http(port: port, path: "/readyz"), r.status == 503 else { return false }
                notReady = r.body
                return true
            })
        print("ops: /readyz while the database is cut: \(notReady)")
        // A fixed reason: libpq's text names the host, its address and the user.
        #expect(notReady.trimmingCharacters(in: .whitespacesAndNewlines) == "database not connected")
        #expect(Ops.http(port: port, path: "/healthz")?.status == 200)
        proxy.restore()
        #expect(
            try await bed.eventually(timeout: .seconds(25)) { Ops.http(port: port, path: "/readyz")?.status == 200 })
        text = Ops.http(port: port, path: "/metrics")?.body ?? ""
        #expect((Ops.metric(text, "referrald_reconnects_total", ["peer": "postgres"]) ?? 0) >= 1)

        daemon.terminate()
        #expect(await Ops.waitForExit(daemon))
        #expect(daemon.terminationStatus == 0)
        proxy.stop()
    }

    @Test func aStopUnderLoadLosesAndDoublesNothing() async throws {
        let n = 2000
        let drainTimeout = 20
        let bed = try await TestBed.make()
        let exchange = bed.settings.upstreamExchanges[0]
        for chunk in stride(from: 0, to: n, by: 250) {
            let messages = (chunk..<min(n, chunk + 250)).map { i in
                OutgoingMessage(
                    exchange: exchange, routingKey: Self.activationType,
                    body: PipelineTests.activation(id: "load-\(i)", account: "acct-load-\(i)"), headers: [:],
                    messageId: nil, contentType: "application/cloudevents+json", persistent: true, mandatory: true)
            }
            #expect(try await bed.amqp.publish(messages).allSatisfy { $0 == .confirmed })
        }

        let first = try bed.spawnDaemon(extraEnvironment: ["REFERRALD_DRAIN_TIMEOUT_SECONDS": "\(drainTimeout)"])
        #expect(
            try await bed.eventually(timeout: .seconds(60)) {
                try await bed.count("SELECT count(*) FROM referral_codes") >= Int64(n / 5)
            })
        let stopAt = ContinuousClock.now
        first.terminate()
        #expect(await Ops.waitForExit(first, timeout: .seconds(drainTimeout + 10)))
        let drained = ContinuousClock.now - stopAt
        let codesAtStop = try await bed.count("SELECT count(*) FROM referral_codes")
        print(
            "ops: SIGTERM with \(codesAtStop) of \(n) codes issued; drain took \(drained) (timeout \(drainTimeout) s); exit \(first.terminationStatus)"
        )
        #expect(first.terminationStatus == 0)
        #expect(drained < .seconds(drainTimeout))
        #expect(codesAtStop < Int64(n), "the stop came after all work was done; the test proves less")

        let second = try bed.spawnDaemon()
        #expect(
            try await bed.eventually(timeout: .seconds(120)) {
                try await bed.count("SELECT count(*) FROM referral_codes") == Int64(n)
            })
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.inboxQueue) == 0 })
        // Each activation yields its code and its post_activation ask: n of each, no more. A
        // republished outbox row keeps its CloudEvents id (at-least-once delivery, harmless to a
        // consumer that deduplicates by id); a doubled effect would carry a second id.
        let observed =
            try await bed.take(from: bed.observerQueue, count: 2 * n, timeout: .seconds(60))
            + bed.take(from: bed.observerQueue, count: 1, timeout: .seconds(2))
        var byId: [String: Delivery] = [:]
        for d in observed { byId[d.messageId ?? ""] = d }
        let distinct = Array(byId.values)
        let codes = distinct.filter { $0.routingKey == "referral.code.issued" }
        let asks = distinct.filter { $0.routingKey == "referral.ask.due" }
        let accounts = try codes.map { try PipelineTests.data($0)["account_id"] as? String ?? "" }
        let asked = try asks.map { try PipelineTests.data($0)["account_id"] as? String ?? "" }
        print(
            "ops: \(codes.count) referral.code.issued, \(Set(accounts).count) distinct accounts, \(asks.count) asks; "
                + "\(observed.count - distinct.count) redelivered with the same id")
        #expect(codes.count == n && asks.count == n)
        #expect(distinct.count == codes.count + asks.count)
        #expect(!byId.keys.contains(""))
        #expect(Set(accounts).count == n && !accounts.contains(""))
        #expect(Set(asked) == Set(accounts))
        #expect(try await bed.count("SELECT count(*) FROM referral_codes") == Int64(n))
        #expect(try await bed.queueDepth(bed.settings.deadLetterQueue) == 0)

        second.terminate()
        #expect(await Ops.waitForExit(second))
        #expect(second.terminationStatus == 0)
    }

    @Test func checkSaysOKOrNamesTheKeyOrTheField() async throws {
        let bed = try await TestBed.make()
        let (status, out, err) = try await Ops.runBinary(["check"], environment: bed.environment)
        print("ops: check → \(status)\n\(out)\(err)")
        #expect(status == 0)
        #expect(out.hasSuffix("ok\n") && out.contains("schema version"))

        var badURL = bed.environment
        badURL["REFERRALD_DATABASE_URL"] = "mysql://referrald:s3cret@127.0.0.1/x"
        let (s1, _, e1) = try await Ops.runBinary(["check"], environment: badURL)
        #expect(s1 != 0)
        #expect(e1.contains("REFERRALD_DATABASE_URL"))
        #expect(!e1.contains("s3cret"))

        var unreachable = bed.environment
        unreachable["REFERRALD_AMQP_URL"] = "amqp://u:p@127.0.0.1:\(Ops.freePort())/"
        let (s2, _, e2) = try await Ops.runBinary(["check"], environment: unreachable)
        #expect(s2 != 0 && e2.contains("REFERRALD_AMQP_URL"), "\(e2)")

        let file = NSTemporaryDirectory() + "ops-programs-\(bed.name).yaml"
        let example = try String(contentsOfFile: bed.settings.programsFile, encoding: .utf8)
        try example.replacingOccurrences(of: "hold: 30d", with: "hold: 30 fortnights").write(
            toFile: file, atomically: true, encoding: .utf8)
        var badPrograms = bed.environment
        badPrograms["REFERRALD_PROGRAMS_FILE"] = file
        let (s3, _, e3) = try await Ops.runBinary(["check"], environment: badPrograms)
        print("ops: bad programs file → \(s3): \(e3)")
        #expect(s3 != 0 && e3.contains(file) && e3.contains("qualify.hold"))
        try? FileManager.default.removeItem(atPath: file)
    }
}

/// The pieces that need no services: settings checks and the watchdog's environment.
@Suite(.tearsDownTestBeds) struct OpsSettingsTests {
    static let required = [
        "REFERRALD_AMQP_URL": "amqp://u:p@127.0.0.1/", "REFERRALD_DATABASE_URL": "postgres://u:p@127.0.0.1/d",
        "REFERRALD_PROGRAMS_FILE": "/dev/null",
    ]

    @Test func drainMustEndBeforeSystemdKills() async throws {
        let defaults = try await Settings.load(configFile: nil, environment: Self.required)
        #expect(
            defaults.drainTimeoutSeconds == 20 && defaults.stopTimeoutSeconds == 30 && defaults.httpHost == "127.0.0.1")
        var env = Self.required
        env["REFERRALD_DRAIN_TIMEOUT_SECONDS"] = "30"
        await #expect { try await Settings.load(configFile: nil, environment: env) } throws: {
            "\($0)".contains("REFERRALD_DRAIN_TIMEOUT_SECONDS") && "\($0)".contains("REFERRALD_STOP_TIMEOUT_SECONDS")
        }
    }

    @Test func watchdogHonoursItsPidAndHalvesTheInterval() {
        #expect(Watchdog(environment: ["WATCHDOG_USEC": "30000000"], pid: 7)?.interval == .seconds(15))
        #expect(Watchdog(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"], pid: 7) != nil)
        #expect(Watchdog(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"], pid: 7) == nil)
        #expect(Watchdog(environment: ["WATCHDOG_USEC": "0"], pid: 7) == nil)
        #expect(Watchdog(environment: [:], pid: 7) == nil)
    }

    @Test func notifierSendsToAPathSocket() async throws {
        let listener = try NotifyListener(lifetime: .seconds(10))
        defer { listener.stop() }
        let notifier = try #require(SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.path]))
        #expect(notifier.send("READY=1\nSTATUS=test"))
        let deadline = ContinuousClock.now + .seconds(2)
        while listener.messages.isEmpty, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(listener.messages.first?.lines == ["READY=1", "STATUS=test"])
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": "relative/path"]) == nil)
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": "@abstract-name"]) != nil)
    }
}
