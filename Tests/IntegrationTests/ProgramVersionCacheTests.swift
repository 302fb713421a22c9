import Postgres
import ReferralCore
import Testing

@testable import ReferralStore

/// Bindings take their programs from the cache once read: a version row never changes, so
/// reading it with every referral row was waste.
@Suite(.tearsDownTestBeds) struct ProgramVersionCacheTests {
    @Test func aVersionIsReadOncePerCache() async throws {
        let bed = try await TestBed.make()
        let programs = try bed.programs().programs
        let versions = try await bed.db.transaction { c in try ProgramStore.registerPrograms(c, programs) }
        let consumer = try #require(versions["consumer"])
        _ = try await bed.db.run { c in
            try c.execute(
                """
                INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version)
                VALUES ('ref-1', 'lead-1', 'CODE', 'acct-r', 'consumer', $1::int4)
                """, [.text(String(consumer))])
        }
        let cache = ProgramVersionCache()
        let first = try await bed.db.run { c in try BindingStore.loadBindings(c, ["ref-1"], cache: cache) }
        #expect(first.map(\.binding.program.id) == ["consumer"])
        #expect(first.first?.binding.programVersion == consumer)
        // Only possible by hand: the stored version now holds the business program's rules.
        try await bed.db.run { c in
            try c.executeScript(
                """
                UPDATE program_versions SET program = (SELECT program FROM program_versions WHERE program_id = 'business' LIMIT 1)
                WHERE program_id = 'consumer'
                """)
        }
        let cached = try await bed.db.run { c in try BindingStore.loadBindings(c, ["ref-1"], cache: cache) }
        #expect(cached.map(\.binding.program.id) == ["consumer"], "read from the cache, not the table")
        let fresh = try await bed.db.run { c in
            try BindingStore.loadBindings(c, ["ref-1"], cache: ProgramVersionCache())
        }
        #expect(fresh.map(\.binding.program.id) == ["business"], "a new cache reads the table")
    }
}
