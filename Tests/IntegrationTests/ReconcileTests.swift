import Foundation
import Postgres
import ReferralCore
import ReferralStore
import ReferralWorker
import Testing

/// A database written by the release before the incremental state (Fixtures/legacy-v5.md says
/// how it was made), migrated in place, then checked and repaired by `reconcile`.
@Suite struct ReconcileTests {
    static let dump = TestServices.packageRoot.appendingPathComponent(
        "Tests/IntegrationTests/Fixtures/legacy-v5.sql.gz")

    /// Restores the dump into a new database; returns its URL and name.
    func restoredLegacyDatabase(_ admin: PostgresConnection) async throws -> (url: String, name: String) {
        let name = "legacy\(UInt32.random(in: 0...UInt32.max))"
        try await admin.run { c in try c.executeScript("CREATE DATABASE \(name)") }
        let url = TestServices.databaseURL(database: name)
        let restore = try await Subprocess.run(
            URL(fileURLWithPath: "/bin/sh"),
            [
                "-c", "gunzip -c \"$1\" | psql -X -q -v ON_ERROR_STOP=1 \"$2\" >/dev/null", "restore", Self.dump.path,
                url,
            ])
        try #require(restore.status == 0, "restoring \(Self.dump.lastPathComponent): \(restore.errors)")
        return (url, name)
    }

    @Test func aDatabaseOfThePreviousReleaseMigratesInPlaceAndReconcilesClean() async throws {
        let admin = try await PostgresConnection.connect(
            try PostgresURL(parsing: TestServices.databaseURL),
            applicationName: "reconcile-test", logger: TestServices.logger)
        let (url, name) = try await restoredLegacyDatabase(admin)
        defer {
            Task {
                _ = try? await admin.run { c in try c.executeScript("DROP DATABASE IF EXISTS \(name) WITH (FORCE)") }
                await admin.close()
            }
        }
        let db = try await PostgresConnection.connect(
            try PostgresURL(parsing: url), applicationName: "reconcile-test",
            logger: TestServices.logger)
        defer { Task { await db.close() } }
        func count(_ sql: String) async throws -> Int64 {
            try await db.run { c in try c.query(sql).first?.decode(0, as: Int64.self) ?? -1 }
        }
        #expect(try await Schema.currentVersion(db) == 5)
        let referrals = try await count("SELECT count(*)::int8 FROM referrals")
        let rewardsBefore = try await count("SELECT count(*)::int8 FROM rewards")
        try #require(referrals > 1000, "the fixture holds the previous release's referrals")

        let started = ContinuousClock.now
        _ = try await Schema.migrate(db, logger: TestServices.logger)
        let seconds = (ContinuousClock.now - started).inSeconds
        print(
            String(
                format: "migration of %d referrals to version %d: %.2f s (%.0f s per million referrals)",
                referrals, Schema.latestVersion, seconds, seconds * 1_000_000 / Double(referrals)))
        #expect(try await Schema.currentVersion(db) == Schema.latestVersion)
        #expect(try await count("SELECT count(*)::int8 FROM referrals WHERE lead_at IS NULL") == 0)
        #expect(try await count("SELECT count(*)::int8 FROM referral_links WHERE lead_at IS NULL") == 0)
        // Every cap slot is counted once in its ranking's size.
        #expect(
            try await count("SELECT coalesce(sum(size), 0)::int8 FROM ranking_sizes WHERE ranking LIKE 'cap:%'")
                == (try await count("SELECT count(*)::int8 FROM referrals WHERE milestone_at IS NOT NULL")))
        #expect(try await count("SELECT count(*)::int8 FROM referrals WHERE milestone_at IS NOT NULL") > 1000)
        // Version 14: every code the old release issued is a recorded effect, with its program.
        let codes = try await count("SELECT count(*)::int8 FROM referral_codes")
        #expect(codes > 1000)
        #expect(
            try await count(
                """
                SELECT count(*)::int8 FROM referral_codes rc JOIN effects e ON e.effect_key = 'code:' || rc.account_id
                WHERE e.kind = 'code_issued' AND e.account_id = rc.account_id AND e.referral_id IS NULL
                  AND e.effect -> 'codeIssued' ->> 'code' = rc.code AND e.effect -> 'codeIssued' ->> 'programId' = rc.program_id
                """) == codes)
        // Version 13: no text column is left to the database's collation.
        #expect(
            try await count(
                """
                SELECT count(*)::int8 FROM information_schema.columns
                WHERE table_schema = current_schema() AND data_type = 'text' AND coalesce(collation_name, '') <> 'C'
                  AND table_name <> 'schema_migrations'
                """) == 0)

        // Version 17: the plan each stored activation named, and each lead's channel, read back
        // from the inbox bodies (the old release stored neither).
        #expect(
            try await count(
                """
                SELECT count(*)::int8 FROM inbox i
                WHERE i.type = 'provisioning.service.activated'
                  AND convert_from(i.body, 'UTF8')::jsonb -> 'data' ->> 'plan_id' IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM facts f WHERE f.kind = 'plan' AND f.account_id = i.account_id
                                    AND f.at = i.fact_time AND f.plan_id = convert_from(i.body, 'UTF8')::jsonb -> 'data' ->> 'plan_id')
                """) == 0)
        #expect(try await count("SELECT count(*)::int8 FROM facts WHERE kind = 'plan'") > 1000)
        let leadsWithChannel = try await count(
            """
            SELECT count(*)::int8 FROM inbox
            WHERE type = 'provisioning.lead.created' AND convert_from(body, 'UTF8')::jsonb -> 'data' ->> 'channel' IS NOT NULL
            """)
        #expect(leadsWithChannel > 1000)
        #expect(
            try await count("SELECT count(*)::int8 FROM facts WHERE kind = 'lead' AND channel IS NOT NULL")
                == leadsWithChannel)

        // Decided at the moment the old release last decided, so timers it left for later do
        // not fire here: what reconcile finds is a difference, never the passing of time.
        let lastDecision = try await db.run { c in
            Instant(
                microseconds: try c.query("SELECT max(recorded_at) AS t FROM effects").first!
                    .decode("t", as: PostgresTimestamp.self).microsecondsSinceEpoch)
        }
        let environment = TestBed.isolatedEnvironment(name: name, amqpURL: TestServices.amqpURL, databaseURL: url)
        let settings = try await Settings.load(configFile: nil, environment: environment)
        let programs = try ProgramBook.load(path: settings.programsFile)
        let clean = try await Reconcile.run(
            settings: settings, scope: .all, programs: programs, now: lastDecision,
            logger: TestServices.logger)
        print("reconcile --all after the migration: \(clean)")
        #expect(clean.referrals == Int(referrals))
        #expect(clean.fixes == 0, "\(clean)")
        #expect(try await count("SELECT count(*)::int8 FROM rewards") == rewardsBefore)

        // Now break it as a lost decision and a drifted state would: one rewarded referral loses
        // its issued rewards (effects and ledger rows), and its cap slot.
        let victim = try await db.run { c in
            try c.query(
                """
                SELECT r.referral_id, r.referrer_account_id FROM referrals r
                WHERE r.stage = 'rewarded' AND r.milestone_at IS NOT NULL ORDER BY r.referral_id LIMIT 1
                """
            ).first.map {
                (try $0.decode("referral_id", as: String.self), try $0.decode("referrer_account_id", as: String.self))
            }
        }
        let (referral, referrer) = try #require(victim)
        let lost = try await db.run { c in
            _ = try c.execute("UPDATE referrals SET milestone_at = NULL WHERE referral_id = $1", [.text(referral)])
            _ = try c.execute("DELETE FROM rewards WHERE referral_id = $1", [.text(referral)])
            return try c.execute(
                "DELETE FROM effects WHERE referral_id = $1 AND kind = 'reward_issued'", [.text(referral)])
        }
        try #require(lost > 0)
        let repaired = try await Reconcile.run(
            settings: settings, scope: .referrer(referrer), programs: programs,
            now: lastDecision, logger: TestServices.logger)
        print("reconcile --referrer \(referrer) after the damage: \(repaired)")
        #expect(repaired.standingsFixed == [referral])
        #expect(repaired.events["referral.reward.issued"] == Int(lost))
        #expect(try await count("SELECT count(*)::int8 FROM rewards") == rewardsBefore)
        #expect(try await count("SELECT count(*)::int8 FROM outbox WHERE type = 'referral.reward.issued'") == lost)
        let again = try await Reconcile.run(
            settings: settings, scope: .referrer(referrer), programs: programs,
            now: lastDecision, logger: TestServices.logger)
        #expect(again.fixes == 0, "\(again)")
    }
}
