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
        let error = await #expect(throws: SettingsError.self) { try await Settings.load(configFile: nil, environment: env) }
        #expect(error?.key == "REFERRALD_PREFETCH")
        #expect(error.map { "\($0)".contains("hunter2") } == false)
        env["REFERRALD_PREFETCH"] = "16"
        env["REFERRALD_BATCH_SIZE"] = "64"
        let mismatch = await #expect(throws: SettingsError.self) { try await Settings.load(configFile: nil, environment: env) }
        #expect(mismatch?.key == "REFERRALD_PREFETCH")
    }

    @Test func aMissingRequiredKeySaysWhatItIsFor() async throws {
        let error = await #expect(throws: SettingsError.self) { try await Settings.load(configFile: nil, environment: base) }
        #expect(error?.key == "REFERRALD_AMQP_URL")
        #expect(error.map { "\($0)".contains("is required") } == true)
    }
}
