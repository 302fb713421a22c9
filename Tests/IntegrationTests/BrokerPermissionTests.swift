import AMQP
import Foundation
import Postgres
import ReferralStore
import ReferralTestKit
import ReferralWorker
import Testing

/// deploy/rabbitmq/definitions.json in practice: its two users' permissions, over this test's
/// names, given to two fresh broker users. `referrald topology` runs as the one with configure
/// rights; the real `referrald run` runs as the one with `configure ^$`, and must consume,
/// publish and dead-letter without declaring anything.
@Suite(.serialized) struct BrokerPermissionTests {
    /// One permission line of definitions.json, its expressions turned into lists of names.
    struct Grant {
        var configure: [String], write: [String], read: [String]
    }

    /// The names an expression of definitions.json allows: `^$` (none) or `^(a\.b|c\.d)$`.
    /// Anything else fails the test: a pattern it cannot read cannot be checked here.
    static func names(_ pattern: String) throws -> [String] {
        if pattern == "^$" { return [] }
        guard pattern.hasPrefix("^("), pattern.hasSuffix(")$") else {
            throw PatternError(pattern: pattern)
        }
        return pattern.dropFirst(2).dropLast(2).split(separator: "|").map {
            $0.replacingOccurrences(of: "\\.", with: ".")
        }
    }

    struct PatternError: Error, CustomStringConvertible {
        let pattern: String
        var description: String { "definitions.json: \(pattern) is neither ^$ nor ^(name|name...)$" }
    }

    static func grants() throws -> [String: Grant] {
        let data = try Data(
            contentsOf: TestServices.packageRoot.appendingPathComponent("deploy/rabbitmq/definitions.json"))
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let permissions = try #require(json["permissions"] as? [[String: String]])
        var grants: [String: Grant] = [:]
        for p in permissions {
            grants[try #require(p["user"])] = Grant(
                configure: try names(try #require(p["configure"])),
                write: try names(try #require(p["write"])),
                read: try names(try #require(p["read"])))
        }
        return grants
    }

    /// The expression for this test's names in place of the default ones.
    static func pattern(_ defaults: [String], _ rename: [String: String]) throws -> String {
        if defaults.isEmpty { return "^$" }
        let names = try defaults.map { name in
            try #require(rename[name], "definitions.json names \(name), unknown here")
        }
        return "^(" + names.map { NSRegularExpression.escapedPattern(for: $0) }.joined(separator: "|") + ")$"
    }

    @Test func runtimeUserWithoutConfigureRunsOnTopologyDeclaredByTheTopologyUser() async throws {
        let grants = try Self.grants()
        let topologyGrant = try #require(
            grants["referrald-topology"], "definitions.json has no referrald-topology user")
        let runtimeGrant = try #require(grants["referrald"], "definitions.json has no referrald user")
        #expect(runtimeGrant.configure.isEmpty, "the runtime user must have configure ^$")

        let name = "tperm\(UInt32.random(in: 0...UInt32.max))"
        let adminDB = try await PostgresConnection.connect(
            try PostgresURL(parsing: TestServices.databaseURL),
            applicationName: "referrald-test-admin", logger: TestServices.logger)
        try await adminDB.run { c in try c.executeScript("CREATE DATABASE \(name)") }
        let databaseURL = TestServices.databaseURL(database: name)
        let base = try AMQPURL(parsing: TestServices.amqpURL)
        func url(_ user: String) -> String { "amqp://\(user):\(user)@\(base.host):\(base.port)/\(base.vhost)" }
        let (topologyUser, runtimeUser) = ("\(name)-topology", "\(name)-run")
        var environment = TestBed.isolatedEnvironment(name: name, amqpURL: url(runtimeUser), databaseURL: databaseURL)
        environment["REFERRALD_LOG_LEVEL"] = "warning"
        let runtime = try await Settings.load(configFile: nil, environment: environment)
        var topologyEnvironment = environment
        topologyEnvironment["REFERRALD_AMQP_URL"] = url(topologyUser)
        let topology = try await Settings.load(configFile: nil, environment: topologyEnvironment)
        let rename = [
            "referrald.inbox": runtime.inboxQueue, "referrald.dlq": runtime.deadLetterQueue,
            "referrald.dlx": runtime.deadLetterExchange, "referral.events": runtime.eventsExchange,
            "provisioning.events": runtime.upstreamExchanges[0], "billing.events": runtime.upstreamExchanges[1],
            "crm.events": runtime.upstreamExchanges[2], "referrald.parked": runtime.parkedQueue,
            // The default exchange has one name on every vhost.
            "amq.default": "amq.default",
        ]
        let admin = try await AMQPConnection.connect(base, connectionName: "\(name) admin", logger: TestServices.logger)
        let observer = "\(name).observer"
        var failure: (any Error)?
        var daemon: Process?
        do {
            let db = try await PostgresConnection.connect(
                try PostgresURL(parsing: databaseURL),
                applicationName: "referrald-test", logger: TestServices.logger)
            _ = try await Schema.migrate(db, logger: TestServices.logger)
            await db.close()
            for (user, grant) in [(topologyUser, topologyGrant), (runtimeUser, runtimeGrant)] {
                _ = try await AMQPTestBroker.rabbitmqctl(["add_user", user, user])
                _ = try await AMQPTestBroker.rabbitmqctl([
                    "set_permissions", "-p", base.vhost, user, try Self.pattern(grant.configure, rename),
                    try Self.pattern(grant.write, rename), try Self.pattern(grant.read, rename),
                ])
            }
            // The upstream exchanges belong to other teams: they exist before referrald is deployed.
            for exchange in runtime.upstreamExchanges { try await admin.declareExchange(exchange, type: "topic") }

            // The runtime user may declare nothing: its `topology` is refused.
            await #expect {
                try await Operations.declareTopology(
                    settings: runtime, passiveUpstream: true, logger: TestServices.logger)
            } throws: { ($0 as? AMQPError)?.replyCode == 403 }

            // Before `topology`, `run` says what is missing and exits 75, to be restarted.
            let early = try await Ops.runBinary(["run"], environment: environment)
            #expect(early.0 == 75, "\(early.2)")
            #expect(early.2.contains(runtime.inboxQueue) && early.2.contains("referrald topology"), "\(early.2)")

            try await Operations.declareTopology(settings: topology, passiveUpstream: true, logger: TestServices.logger)
            try await admin.declareQueue(observer, arguments: ["x-queue-type": .string("quorum")])
            try await admin.bindQueue(observer, exchange: runtime.eventsExchange, routingKey: "#")

            let process = Process()
            process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
                .appendingPathComponent("referrald")
            process.arguments = ["run"]
            var processEnvironment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("REFERRALD_") }
            processEnvironment.merge(environment) { _, new in new }
            process.environment = processEnvironment
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            daemon = process

            // Consumed and published as the runtime user: an activation in, its code out.
            let outcomes = try await admin.publish([
                OutgoingMessage(
                    exchange: runtime.upstreamExchanges[0], routingKey: "provisioning.service.activated",
                    body: PipelineTests.activation(id: "act-\(name)", account: "acct-\(name)"),
                    contentType: "application/cloudevents+json"),
                // Dead-lettered as the runtime user (write on the DLX only).
                OutgoingMessage(
                    exchange: runtime.upstreamExchanges[0], routingKey: "provisioning.lead.created",
                    body: Array("not json".utf8), contentType: "application/cloudevents+json"),
            ])
            #expect(outcomes == [.confirmed, .confirmed])
            try await admin.consume(queue: observer, prefetch: 10)
            let published = try await AMQPTestBroker.receive(1, from: admin, timeout: .seconds(30))
            #expect(published.map(\.routingKey) == ["referral.code.issued"])
            let deadLettered = try await AMQPTestBroker.eventually(timeout: .seconds(20)) {
                try await admin.declareQueue(runtime.deadLetterQueue, passive: true).messageCount == 1
            }
            #expect(deadLettered, "the bad body reached \(runtime.deadLetterQueue)")
            #expect(process.isRunning, "the daemon keeps running as the runtime user")
            process.terminate()
            #expect(await Ops.waitForExit(process))
            #expect(process.terminationStatus == 0)
        } catch { failure = error }
        if let daemon, daemon.isRunning {
            daemon.terminate()
            _ = await Ops.waitForExit(daemon)
        }
        await admin.close()
        let cleaner = try await AMQPConnection.connect(
            base, connectionName: "\(name) cleanup", logger: TestServices.logger)
        for queue in [runtime.inboxQueue, runtime.deadLetterQueue, observer] { try? await cleaner.deleteQueue(queue) }
        for exchange in runtime.upstreamExchanges + [runtime.eventsExchange, runtime.deadLetterExchange] {
            try? await cleaner.deleteExchange(exchange)
        }
        await cleaner.close()
        for user in [topologyUser, runtimeUser] { _ = try? await AMQPTestBroker.rabbitmqctl(["delete_user", user]) }
        _ = try? await adminDB.run { c in try c.executeScript("DROP DATABASE IF EXISTS \(name) WITH (FORCE)") }
        await adminDB.close()
        if let failure { throw failure }
    }
}
