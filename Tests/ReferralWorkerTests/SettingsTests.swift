import Foundation
import ReferralWorker
import Testing

/// Configuration sources and their priority; no services needed.
@Suite struct SettingsTests {
    let base = ["REFERRALD_PROGRAMS_FILE": "/etc/referrald/programs.yaml"]

    func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("settings-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func environmentWinsOverCredentialsWhichWinOverTheFile() async throws {
        let dir = try temporaryDirectory()
        let credentials = dir.appendingPathComponent("credentials")
        try FileManager.default.createDirectory(at: credentials, withIntermediateDirectories: true)
        try "postgres://app:from-credential@db/referrald\n".write(
            to: credentials.appendingPathComponent("REFERRALD_DATABASE_URL"), atomically: true, encoding: .utf8)
        let file = dir.appendingPathComponent("referrald.env")
        try """
        REFERRALD_AMQP_URL=amqp://u:from-file@broker/referrald
        REFERRALD_DATABASE_URL=postgres://app:from-file@db/referrald
        REFERRALD_BATCH_SIZE=64
        """.write(to: file, atomically: true, encoding: .utf8)
        var env = base
        env["CREDENTIALS_DIRECTORY"] = credentials.path
        env["REFERRALD_BATCH_SIZE"] = "32"
        let s = try await Settings.load(configFile: file.path, environment: env)
        #expect(s.batchSize == 32)  // environment over file
        #expect(s.databaseURL == "postgres://app:from-credential@db/referrald")  // credential over file
        #expect(s.amqpURL == "amqp://u:from-file@broker/referrald")  // file when nothing else says
        #expect(s.heartbeatSeconds == 30)  // documented default
    }

    @Test func errorsNameTheKeyAndTheSourceButNeverTheSecret() async throws {
        var env = base
        env["REFERRALD_AMQP_URL"] = "amqp://u:hunter2@broker/referrald"
        env["REFERRALD_DATABASE_URL"] = "postgres://app:hunter2@db/referrald"
        env["REFERRALD_PREFETCH"] = "lots"
        let error = await #expect(throws: SettingsError.self) {
            try await Settings.load(configFile: nil, environment: env)
        }
        #expect(error?.key == "REFERRALD_PREFETCH")
        #expect(error.map { "\($0)".contains("hunter2") } == false)
        env["REFERRALD_PREFETCH"] = "4096"
        let overBudget = await #expect(throws: SettingsError.self) {
            try await Settings.load(configFile: nil, environment: env)
        }
        #expect(overBudget?.key == "REFERRALD_MEMORY_BUDGET_BYTES")
        #expect(overBudget.map { "\($0)".contains("hunter2") } == false)
    }

    /// The defaults fit the memory budget they document; so does a prefetch below the batch
    /// size (batches are bounded by bytes too); prefetch × max body past the budget is refused.
    /// The process has one consumer whatever REFERRALD_WORKERS is, so lanes do not multiply it.
    @Test func prefetchTimesMaxBodyMustFitTheMemoryBudget() async throws {
        var env = base
        env["REFERRALD_AMQP_URL"] = "amqp://u:p@broker/referrald"
        env["REFERRALD_DATABASE_URL"] = "postgres://app:p@db/referrald"
        let defaults = try await Settings.load(configFile: nil, environment: env)
        #expect(defaults.prefetch * defaults.maxBodyBytes <= defaults.memoryBudgetBytes)
        #expect(defaults.batchMaxBytes == 8 << 20)
        env["REFERRALD_PREFETCH"] = "16"
        env["REFERRALD_BATCH_SIZE"] = "64"
        #expect(try await Settings.load(configFile: nil, environment: env).prefetch == 16)
        env["REFERRALD_PREFETCH"] = "1025"
        let error = await #expect(throws: SettingsError.self) {
            try await Settings.load(configFile: nil, environment: env)
        }
        #expect(error?.key == "REFERRALD_MEMORY_BUDGET_BYTES")
        env["REFERRALD_PREFETCH"] = "1024"
        env["REFERRALD_WORKERS"] = "3"
        #expect(try await Settings.load(configFile: nil, environment: env).workers == 3)
        env["REFERRALD_PREFETCH"] = "1536"
        env["REFERRALD_MEMORY_BUDGET_BYTES"] = "\(1536 * 262_144)"
        #expect(try await Settings.load(configFile: nil, environment: env).prefetch == 1536)
    }

    /// A password with an unencoded '/' or '?' is refused under its key (exit 78), without
    /// echoing it: split there, its end used to become the host or vhost.
    @Test func aURLWithAnUnencodedSlashInThePasswordIsAConfigErrorThatHidesIt() async throws {
        for (key, url) in [
            ("REFERRALD_AMQP_URL", "amqp://u:hun/ter2@broker/referrald"),
            ("REFERRALD_DATABASE_URL", "postgres://app:hun?ter2@db/referrald"),
        ] {
            var env = base
            env["REFERRALD_AMQP_URL"] = "amqp://u:p@broker/referrald"
            env["REFERRALD_DATABASE_URL"] = "postgres://app:p@db/referrald"
            env[key] = url
            let error = await #expect(throws: SettingsError.self) {
                try await Settings.load(configFile: nil, environment: env)
            }
            #expect(error?.key == key)
            #expect(error.map { "\($0)".contains("ter2") || "\($0)".contains("hun") } == false)
        }
    }

    @Test func databaseTimeoutsHaveDefaultsAndBounds() async throws {
        var env = base
        env["REFERRALD_AMQP_URL"] = "amqp://u:p@broker/referrald"
        env["REFERRALD_DATABASE_URL"] = "postgres://app:p@db/referrald"
        let s = try await Settings.load(configFile: nil, environment: env)
        #expect(s.statementTimeout.microseconds == 60_000_000)
        #expect(s.lockTimeout.microseconds == 30_000_000)
        #expect(s.idleInTransactionTimeout.microseconds == 60_000_000)
        env["REFERRALD_DB_LOCK_TIMEOUT"] = "30d"
        let error = await #expect(throws: SettingsError.self) {
            try await Settings.load(configFile: nil, environment: env)
        }
        #expect(error?.key == "REFERRALD_DB_LOCK_TIMEOUT")
    }

    @Test func aMissingRequiredKeySaysWhatItIsFor() async throws {
        let error = await #expect(throws: SettingsError.self) {
            try await Settings.load(configFile: nil, environment: base)
        }
        #expect(error?.key == "REFERRALD_AMQP_URL")
        #expect(error.map { "\($0)".contains("is required") } == true)
    }
}
