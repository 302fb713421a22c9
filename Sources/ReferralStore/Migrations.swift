import Logging
import Postgres

/// One versioned schema change. The SQL is compiled into the binary so that a deployed
/// `referrald` can never run against migrations from a different release.
public struct Migration: Sendable {
    public let version: Int
    public let name: String
    public let sql: String
}

public enum Schema {
    /// In order. A released migration is never edited: a change is a new version.
    public static let migrations: [Migration] = [
        Migration(version: 1, name: "inbox, outbox and referral codes", sql: """
            -- Every consumed event, once per (source, id): the deduplication guard and the fact store.
            -- The body is kept as received so that later rules can re-derive from the facts.
            CREATE TABLE inbox (
                source      text        NOT NULL,
                event_id    text        NOT NULL,
                type        text        NOT NULL,
                account_id  text,
                lead_id     text,
                fact_time   timestamptz NOT NULL,
                received_at timestamptz NOT NULL DEFAULT now(),
                body        bytea       NOT NULL,
                PRIMARY KEY (source, event_id)
            );
            CREATE INDEX inbox_account ON inbox (account_id) WHERE account_id IS NOT NULL;
            CREATE INDEX inbox_lead ON inbox (lead_id) WHERE lead_id IS NOT NULL;

            -- Events to publish, written in the same transaction as the state change that caused
            -- them (transactional outbox). A row is leased while being published so that several
            -- instances never publish it at the same time; a crashed publisher's lease expires.
            CREATE TABLE outbox (
                seq           bigserial   PRIMARY KEY,
                event_id      text        NOT NULL UNIQUE,
                type          text        NOT NULL,
                subject       text,
                body          bytea       NOT NULL,
                created_at    timestamptz NOT NULL DEFAULT now(),
                leased_until  timestamptz,
                published_at  timestamptz
            );
            CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;

            -- One code per customer account, issued at its first activation.
            CREATE TABLE referral_codes (
                account_id  text        PRIMARY KEY,
                code        text        NOT NULL UNIQUE,
                program_id  text        NOT NULL,
                issued_at   timestamptz NOT NULL
            );
            """),
    ]

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
            try c.executeScript("""
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
            try await db.transaction { c in
                try c.executeScript(m.sql)
                try c.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                              [.int(Int64(m.version)), .text(m.name)])
            }
            logger.info("migration applied", metadata: ["migration.version": "\(m.version)", "migration.name": "\(m.name)"])
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
