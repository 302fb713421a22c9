import Foundation
import Postgres
import ReferralStore
import ReferralWorker
import Testing

@Suite struct MigrationTests {
    /// A fresh, empty database for one test, dropped afterwards.
    func withEmptyDatabase(_ body: (String) async throws -> Void) async throws {
        let name = "m\(UInt32.random(in: 0...UInt32.max))"
        let admin = try await PostgresConnection.connect(
            try PostgresURL(parsing: TestServices.databaseURL),
            applicationName: "migration-test", logger: TestServices.logger)
        try await admin.run { c in try c.executeScript("CREATE DATABASE \(name)") }
        do {
            try await body(TestServices.databaseURL(database: name))
        } catch {
            _ = try? await admin.run { c in try c.executeScript("DROP DATABASE IF EXISTS \(name) WITH (FORCE)") }
            throw error
        }
        _ = try? await admin.run { c in try c.executeScript("DROP DATABASE IF EXISTS \(name) WITH (FORCE)") }
        await admin.close()
    }

    @Test func twoInstancesMigratingTogetherApplyEachVersionOnce() async throws {
        try await withEmptyDatabase { url in
            let a = try await PostgresConnection.connect(
                try PostgresURL(parsing: url), applicationName: "a", logger: TestServices.logger)
            let b = try await PostgresConnection.connect(
                try PostgresURL(parsing: url), applicationName: "b", logger: TestServices.logger)
            async let first = Schema.migrate(a, logger: TestServices.logger)
            async let second = Schema.migrate(b, logger: TestServices.logger)
            let applied = try await [first, second]
            // The advisory lock serialises them: one applies everything, the other nothing.
            #expect(applied.map(\.count).sorted() == [0, Schema.migrations.count])
            #expect(try await Schema.currentVersion(a) == Schema.latestVersion)
            #expect(try await Schema.migrate(a, logger: TestServices.logger).isEmpty)
            let rows = try await a.run { c in
                try c.query("SELECT count(*)::int8 AS n FROM schema_migrations").first?.decode("n", as: Int64.self)
            }
            #expect(rows == Int64(Schema.migrations.count))
            await a.close()
            await b.close()
        }
    }

    @Test func runRefusesAnOlderSchemaNamingMigrate() async throws {
        try await withEmptyDatabase { url in
            var env = ProcessInfo.processInfo.environment
            env["REFERRALD_AMQP_URL"] = TestServices.amqpURL
            env["REFERRALD_DATABASE_URL"] = url
            env["REFERRALD_PROGRAMS_FILE"] =
                TestServices.packageRoot.appendingPathComponent("deploy/programs.example.yaml").path
            env["REFERRALD_HTTP_PORT"] = "0"
            let result = try await Subprocess.run(
                URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
                    "referrald"),
                ["run"], environment: env)
            let text = result.errors
            // EX_TEMPFAIL: the unit restarts it until `referrald migrate` has run.
            #expect(result.status == 75)
            #expect(text.contains("referrald migrate"), "\(text)")
            #expect(!text.contains("referrald:referrald@"), "the password must not be logged")
        }
    }

    /// A configuration or programs-file error exits 78 (EX_CONFIG), which the unit's
    /// RestartPreventExitStatus stops restarting; `--version` answers without configuration.
    @Test func configurationErrorsExit78AndTheVersionIsShown() async throws {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
            "referrald")
        let programs = FileManager.default.temporaryDirectory.appendingPathComponent(
            "bad-programs-\(UInt32.random(in: 0...UInt32.max)).yaml")
        try "programs:\n  - id: consumer\n    segment: martian\n".write(to: programs, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: programs) }
        var env = ProcessInfo.processInfo.environment
        env["REFERRALD_AMQP_URL"] = TestServices.amqpURL
        env["REFERRALD_DATABASE_URL"] = TestServices.databaseURL
        env["REFERRALD_HTTP_PORT"] = "0"
        env["REFERRALD_PROGRAMS_FILE"] = programs.path
        let badPrograms = try await Subprocess.run(binary, ["run"], environment: env)
        #expect(badPrograms.status == 78, "\(badPrograms.errors)")
        #expect(badPrograms.errors.contains(programs.path), "\(badPrograms.errors)")
        // No file at all (a container with none mounted): 78 too, saying to mount one.
        env["REFERRALD_PROGRAMS_FILE"] = programs.path + ".absent"
        let absent = try await Subprocess.run(binary, ["run"], environment: env)
        #expect(absent.status == 78, "\(absent.errors)")
        #expect(
            absent.errors.contains(programs.path + ".absent") && absent.errors.contains("mount one"), "\(absent.errors)"
        )
        env["REFERRALD_PROGRAMS_FILE"] =
            TestServices.packageRoot.appendingPathComponent("deploy/programs.example.yaml").path
        env["REFERRALD_BATCH_SIZE"] = "many"
        let badKey = try await Subprocess.run(binary, ["run"], environment: env)
        #expect(badKey.status == 78, "\(badKey.errors)")
        #expect(badKey.errors.contains("REFERRALD_BATCH_SIZE"), "\(badKey.errors)")
        let version = try await Subprocess.run(binary, ["--version"], environment: [:])
        #expect(version.status == 0)
        #expect(version.output.trimmingCharacters(in: .whitespacesAndNewlines) == BuildInfo.version)
    }
}
