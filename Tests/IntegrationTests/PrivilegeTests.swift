import AMQP
import Foundation
import Postgres
import ReferralCore
import ReferralStore
import ReferralWorker
import Testing

/// deploy/postgres/roles.sql in practice: a fresh database set up with it and migrated by
/// `referrald_migrate`, then the real worker running as `referrald_app`, which must manage
/// every statement of the pipeline and no DDL at all.
@Suite(.serialized) struct PrivilegeTests {
    static let environment = ProcessInfo.processInfo.environment
    static let migrateURL =
        environment["REFERRALD_TEST_MIGRATE_DATABASE_URL"]
        ?? "postgres://referrald_migrate:referrald_migrate@127.0.0.1:54329/referrald"
    static let appURL =
        environment["REFERRALD_TEST_APP_DATABASE_URL"]
        ?? "postgres://referrald_app:referrald_app@127.0.0.1:54329/referrald"

    /// The URL with another database (the path), keeping credentials and query parameters.
    static func url(_ base: String, database: String) throws -> String {
        var parts = try #require(URLComponents(string: base))
        parts.path = "/" + database
        return try #require(parts.string)
    }

    static func connect(_ base: String, database: String) async throws -> PostgresConnection {
        try await PostgresConnection.connect(
            PostgresURL(parsing: url(base, database: database)), applicationName: "referrald-privilege-test",
            logger: TestServices.logger)
    }

    /// SQLSTATE of the statement, run by the runtime role; nil when it succeeded.
    static func sqlState(_ db: PostgresConnection, _ sql: String) async -> String? {
        do {
            try await db.run { c in try c.executeScript(sql) }
            return nil
        } catch let error as PostgresError {
            return error.sqlState ?? "no SQLSTATE: \(error)"
        } catch {
            return "\(error)"
        }
    }

    @Test func runtimeRoleRunsTheWorkerButCannotChangeTheSchema() async throws {
        let name = "tpriv\(UInt32.random(in: 0...UInt32.max))"
        let admin = try await Self.connect(Self.migrateURL, database: "referrald")
        try await admin.run { c in try c.executeScript("CREATE DATABASE \(name)") }
        var failure: (any Error)?
        do {
            try await Self.exercise(database: name)
        } catch { failure = error }
        // Without FORCE: the migration role may not terminate the runtime role's sessions, so
        // every connection was closed first; a backend may take a moment to exit after that.
        var dropped = false
        for _ in 0..<50 where !dropped {
            dropped = (try? await admin.run { c in try c.executeScript("DROP DATABASE IF EXISTS \(name)") }) != nil
            if !dropped { try await Task.sleep(for: .milliseconds(100)) }
        }
        await admin.close()
        #expect(dropped, "database \(name) left behind")
        if let failure { throw failure }
    }

    static func exercise(database name: String) async throws {
        let rolesSQL = try String(
            contentsOf: TestServices.packageRoot.appendingPathComponent("deploy/postgres/roles.sql"), encoding: .utf8)
        let owner = try await connect(migrateURL, database: name)
        // Twice: the file must be idempotent.
        try await owner.run { c in try c.executeScript(rolesSQL) }
        try await owner.run { c in try c.executeScript(rolesSQL) }
        #expect(try await Schema.migrate(owner, logger: TestServices.logger) == Schema.migrations.map(\.version))
        let strangers = try await owner.run { c in
            try c.query(
                """
                SELECT count(*)::int8 AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S') AND pg_get_userbyid(c.relowner) <> 'referrald_migrate'
                """
            ).first?.decode("n", as: Int64.self)
        }
        #expect(strangers == 0, "every table and sequence is owned by the migration role")
        await owner.close()

        let app = try await connect(appURL, database: name)
        // DDL of every kind: 42501 insufficient_privilege.
        #expect(await sqlState(app, "CREATE TABLE intruder (id int)") == "42501")
        #expect(await sqlState(app, "CREATE TEMPORARY TABLE intruder (id int)") == "42501")
        #expect(await sqlState(app, "DROP TABLE inbox") == "42501")
        #expect(await sqlState(app, "ALTER TABLE inbox ADD COLUMN intruder int") == "42501")
        #expect(await sqlState(app, "ALTER TABLE outbox OWNER TO referrald_app") == "42501")
        #expect(await sqlState(app, "TRUNCATE outbox") == "42501")
        #expect(await sqlState(app, "CREATE INDEX intruder ON inbox (type)") == "42501")
        #expect(await sqlState(app, "CREATE SCHEMA intruder") == "42501")
        await app.close()

        try await runWorker(database: name)
    }

    /// The worker as `referrald_app`: an activation in, a code issued and published out. That
    /// covers inbox, facts, codes, outbox with its lease, timers and program versions. On the
    /// broker it runs as a user with only the `referrald run` permissions of docs/security.md.
    static func runWorker(database name: String) async throws {
        let broker = try await AMQPConnection.connect(
            try AMQPURL(parsing: TestServices.amqpURL), connectionName: "\(name) test", logger: TestServices.logger)
        var runtimeURL = try AMQPURL(parsing: TestServices.amqpURL)
        runtimeURL.user = "\(name)-run"
        runtimeURL.password = "\(name)-run"
        let settings = try await Settings.load(
            configFile: nil,
            environment: TestBed.isolatedEnvironment(
                name: name,
                amqpURL: "amqp://\(runtimeURL.user):\(runtimeURL.password)@\(runtimeURL.host):\(runtimeURL.port)/"
                    + runtimeURL.vhost,
                databaseURL: try url(appURL, database: name)))
        let observer = "\(name).observer"
        var failure: (any Error)?
        var worker: Task<Void, any Error>?
        do {
            _ = try await AMQPTestBroker.rabbitmqctl(["add_user", runtimeURL.user, runtimeURL.password])
            // The docs' expressions for `referrald run`, over this test's names.
            _ = try await AMQPTestBroker.rabbitmqctl([
                "set_permissions", "-p", runtimeURL.vhost, runtimeURL.user, "^$",
                "^(\(NSRegularExpression.escapedPattern(for: settings.eventsExchange))|\(NSRegularExpression.escapedPattern(for: settings.deadLetterExchange)))$",
                "^\(NSRegularExpression.escapedPattern(for: settings.inboxQueue))$",
            ])
            try await Topology(settings: settings).declare(
                on: broker, passiveUpstream: false, logger: TestServices.logger)
            try await broker.declareQueue(observer, arguments: ["x-queue-type": .string("quorum")])
            try await broker.bindQueue(observer, exchange: settings.eventsExchange, routingKey: "#")
            let programs = try ProgramBook.load(path: settings.programsFile)
            worker = Task {
                try await Worker(
                    settings: settings, programs: programs, logger: TestServices.logger,
                    instanceName: "referrald-privilege-test"
                ).run()
            }
            let outcome = try await broker.publish([
                OutgoingMessage(
                    exchange: settings.upstreamExchanges[0], routingKey: "provisioning.service.activated",
                    body: PipelineTests.activation(id: "act-priv-1", account: "acct-priv-1"), headers: [:],
                    messageId: nil,
                    contentType: "application/cloudevents+json", persistent: true, mandatory: true)
            ])
            #expect(outcome == [.confirmed])
            try await broker.consume(queue: observer, prefetch: 10)
            let published = try await AMQPTestBroker.receive(1, from: broker, timeout: .seconds(20))
            #expect(published.map(\.routingKey) == ["referral.code.issued"])
        } catch { failure = error }
        worker?.cancel()
        _ = await worker?.result
        await broker.close()
        let cleaner = try await AMQPConnection.connect(
            try AMQPURL(parsing: TestServices.amqpURL), connectionName: "\(name) cleanup", logger: TestServices.logger)
        for queue in [settings.inboxQueue, settings.deadLetterQueue, observer] { try? await cleaner.deleteQueue(queue) }
        for exchange in settings.upstreamExchanges + [settings.eventsExchange, settings.deadLetterExchange] {
            try? await cleaner.deleteExchange(exchange)
        }
        await cleaner.close()
        _ = try? await AMQPTestBroker.rabbitmqctl(["delete_user", runtimeURL.user])
        if let failure { throw failure }
    }
}
