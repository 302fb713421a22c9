import Postgres
import Testing

/// Deferred statements (libpq's pipeline mode) and the per-session statement cache, against
/// the real server.
@Suite("PostgresConnection: deferred statements and prepared statements")
struct PostgresPipelineTests {
    /// Deferred writes run in the order sent, before the query that reads them, and commit.
    @Test(arguments: [0, 16])
    func deferredStatementsRunInOrderBeforeTheNextQuery(statementCache: Int) async throws {
        try await withTestConnection(statementCache: statementCache) { db in
            try await db.execute("CREATE TABLE r (id int8 PRIMARY KEY, state text NOT NULL)")
            let seen = try await db.transaction { c in
                try c.executeDeferred("INSERT INTO r VALUES ($1, $2)", [.int(1), .text("lead")])
                try c.executeDeferred("UPDATE r SET state = $2 WHERE id = $1", [.int(1), .text("ordered")])
                try c.executeDeferred("INSERT INTO r VALUES ($1, $2)", [.int(2), .text("lead")])
                let states = try c.query("SELECT state FROM r ORDER BY id").map {
                    try $0.decode("state", as: String.self)
                }
                try c.executeDeferred("DELETE FROM r WHERE id = $1", [.int(2)])
                return states
            }
            #expect(seen == ["ordered", "lead"])
            let after = try await db.query("SELECT id FROM r ORDER BY id").map { try $0.decode("id", as: Int64.self) }
            #expect(after == [1])
        }
    }

    /// A deferred statement that fails is thrown by the next sync (here the commit), with its
    /// SQLSTATE; nothing of the transaction stays, and the connection serves the next one.
    @Test func aFailingDeferredStatementFailsTheTransactionAtItsSync() async throws {
        try await withTestConnection(statementCache: 16) { db in
            try await db.execute("CREATE TABLE r (id int8 PRIMARY KEY)")
            let error = await #expect(throws: PostgresError.self) {
                try await db.transaction { c in
                    try c.executeDeferred("INSERT INTO r VALUES ($1)", [.int(1)])
                    try c.executeDeferred("INSERT INTO r VALUES ($1)", [.int(1)])
                    try c.executeDeferred("INSERT INTO r VALUES ($1)", [.int(2)])
                }
            }
            #expect(error?.sqlState == "23505")
            let rows = try await db.query("SELECT count(*)::int8 AS n FROM r").first?.decode("n", as: Int64.self)
            #expect(rows == 0)
            try await db.transaction { c in try c.executeDeferred("INSERT INTO r VALUES ($1)", [.int(3)]) }
            let kept = try await db.query("SELECT id FROM r").map { try $0.decode("id", as: Int64.self) }
            #expect(kept == [3])
        }
    }

    /// A query that joins the pipeline reports an earlier deferred statement's error, not its own
    /// result over rows that were never written.
    @Test func aQueryAfterAFailedDeferredStatementThrowsThatError() async throws {
        try await withTestConnection { db in
            try await db.execute("CREATE TABLE r (id int8 PRIMARY KEY)")
            let error = await #expect(throws: PostgresError.self) {
                try await db.transaction { c in
                    try c.executeDeferred("INSERT INTO r VALUES ($1)", [.text("not a number")])
                    _ = try c.query("SELECT count(*) AS n FROM r")
                }
            }
            #expect(error?.sqlState == "22P02")
        }
    }

    /// Outside a transaction nothing would read a deferred answer: it runs, and fails, at once.
    @Test func outsideATransactionADeferredStatementRunsAtOnce() async throws {
        try await withTestConnection { db in
            try await db.execute("CREATE TABLE r (id int8 PRIMARY KEY)")
            try await db.run { c in try c.executeDeferred("INSERT INTO r VALUES (1)") }
            let error = await #expect(throws: PostgresError.self) {
                try await db.run { c in try c.executeDeferred("INSERT INTO r VALUES (1)") }
            }
            #expect(error?.sqlState == "23505")
        }
    }

    /// Statements are prepared once per session and reused; a table changed under a prepared
    /// statement makes it fail as transient (a new session prepares it again), and the cache
    /// keeps to its capacity.
    @Test func statementsArePreparedOnceAndAStalePlanIsTransient() async throws {
        try await withTestConnection(statementCache: 3) { db in
            try await db.execute("CREATE TABLE r (id int8 PRIMARY KEY, a text)")
            for i in 1...3 { try await db.execute("INSERT INTO r VALUES ($1, 'x')", [.int(Int64(i))]) }
            _ = try await db.query("SELECT * FROM r WHERE id = $1", [.int(1)])
            let names = try await db.query("SELECT name FROM pg_prepared_statements ORDER BY name").map {
                try $0.decode("name", as: String.self)
            }
            // CREATE, INSERT (three times, one name) and SELECT; the catalogue query found it full.
            #expect(names.count == 3)
            try await db.execute("ALTER TABLE r ADD COLUMN b text")
            let error = await #expect(throws: PostgresError.self) {
                _ = try await db.query("SELECT * FROM r WHERE id = $1", [.int(1)])
            }
            #expect(error?.isTransient == true)
        }
    }
}
