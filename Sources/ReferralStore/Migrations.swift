import Logging
import Postgres

/// One versioned schema change. The SQL is compiled into the binary so that a deployed
/// `referrald` can never run against migrations from a different release.
public struct Migration: Sendable {
    public let version: Int
    public let name: String
    /// With a `backfill`, committed in a transaction of its own before it (the backfill may
    /// need the columns it adds), and run again by a `migrate` that resumes: it must be
    /// idempotent (`IF NOT EXISTS`, `ON CONFLICT DO NOTHING`).
    public let sql: String
    /// A data migration in Swift, run in chunks of their own transactions after `sql`: the
    /// version is recorded only once it finished, so `run` refuses a half-filled database and a
    /// `migrate` that stopped midway resumes where it was.
    public let backfill: (@Sendable (PostgresConnection, Logger) async throws -> Void)?

    init(
        version: Int, name: String, sql: String,
        backfill: (@Sendable (PostgresConnection, Logger) async throws -> Void)? = nil
    ) {
        self.version = version
        self.name = name
        self.sql = sql
        self.backfill = backfill
    }
}

public enum Schema {
    /// In order. A released migration is never edited: a change is a new version.
    public static let migrations: [Migration] = tables + changes

    public static var latestVersion: Int { migrations.last?.version ?? 0 }

    /// Any constant works as long as every instance uses the same one: it serialises
    /// migrations so that two instances starting together cannot both apply version N.
    static let migrationLockKey: Int64 = 0x5245_4652_4C44  // "REFRLD"

    /// Applies the missing migrations in order, each in its own transaction, under a
    /// session advisory lock. Returns the versions applied (empty when already current).
    public static func migrate(_ db: PostgresConnection, logger: Logger) async throws -> [Int] {
        try await db.run { c in
            _ = try c.query("SELECT pg_advisory_lock($1)", [.int(migrationLockKey)])
        }
        do {
            let applied = try await applyMissing(db, logger: logger)
            try await db.run { c in _ = try c.query("SELECT pg_advisory_unlock($1)", [.int(migrationLockKey)]) }
            return applied
        } catch {
            // The lock is per session: release it even on failure, or a retry on the same
            // connection would take it twice and a later unlock would leave it held.
            _ = try? await db.run { c in _ = try c.query("SELECT pg_advisory_unlock($1)", [.int(migrationLockKey)]) }
            throw error
        }
    }

    private static func applyMissing(_ db: PostgresConnection, logger: Logger) async throws -> [Int] {
        try await db.run { c in
            try c.executeScript(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer     PRIMARY KEY,
                    name       text        NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """)
        }
        let current = try await currentVersion(db)
        var applied: [Int] = []
        for m in migrations where m.version > current {
            if let backfill = m.backfill {
                if !m.sql.isEmpty { try await db.transaction { c in try c.executeScript(m.sql) } }
                try await backfill(db, logger)
            }
            try await db.transaction { c in
                if !m.sql.isEmpty && m.backfill == nil { try c.executeScript(m.sql) }
                try c.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    [.int(Int64(m.version)), .text(m.name)])
            }
            logger.info(
                "migration applied", metadata: ["migration.version": "\(m.version)", "migration.name": "\(m.name)"])
            applied.append(m.version)
        }
        return applied
    }

    /// The schema version of the database; 0 when it was never migrated.
    public static func currentVersion(_ db: PostgresConnection) async throws -> Int {
        try await db.run { c in
            let exists = try c.query("SELECT to_regclass('schema_migrations') IS NOT NULL AS present")
            guard try exists.first?.decode("present", as: Bool.self) == true else { return 0 }
            let rows = try c.query("SELECT coalesce(max(version), 0)::int8 AS v FROM schema_migrations")
            return Int(try rows.first?.decode("v", as: Int64.self) ?? 0)
        }
    }
}

extension Database {
    /// Applies the missing migrations (`Schema.migrate`); returns the versions applied.
    public func migrate(logger: Logger) async throws -> [Int] {
        try await Self.converting { try await Schema.migrate(connection, logger: logger) }
    }

    /// The schema version of the database; 0 when it was never migrated.
    public func schemaVersion() async throws -> Int {
        try await Self.converting { try await Schema.currentVersion(connection) }
    }
}
