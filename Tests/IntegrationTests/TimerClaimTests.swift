import Postgres
import ReferralCore
import ReferralStore
import Testing

/// `TimerStore.claimDueTimers` leases due timers so that a scan and a batch never hold timer rows
/// while deciding, and so that instances claim disjoint timers. Both tables, one function.
@Suite(.serialized, .tearsDownTestBeds) struct TimerClaimTests {
    let now = Instant(rfc3339: "2026-11-24T12:00:00Z")!

    @Test func referralTimersAreClaimedDueFirstLeasedAndFireAgainAfterTheLease() async throws {
        let bed = try await TestBed.make()
        let programs = try bed.programs().programs
        let versions = try await bed.db.transaction { c in try ProgramStore.registerPrograms(c, programs) }
        let program = programs[0].id
        let version = versions[program] ?? 1
        try await bed.db.run { c in
            _ = try c.execute(
                """
                INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version)
                SELECT 'ref-' || n, 'lead-' || n, 'CODE', 'acc-r', $1, $2 FROM unnest(ARRAY['a', 'b', 'c']) AS n
                """, [.text(program), .int(Int64(version))])
        }
        try await checkClaims(bed, .referrals, keys: ["ref-a", "ref-b", "ref-c"]) { c, key, due in
            try TimerStore.setTimers(c, [(key, due)])
        }
    }

    @Test func accountTimersAreClaimedDueFirstLeasedAndFireAgainAfterTheLease() async throws {
        let bed = try await TestBed.make()
        try await checkClaims(bed, .accounts, keys: ["acc-a", "acc-b", "acc-c"]) { c, key, due in
            try AskStore.setAccountTimers(c, [(key, due)])
        }
    }

    /// keys[0] is due an hour ago, keys[1] a minute ago, keys[2] in an hour.
    func checkClaims(
        _ bed: TestBed, _ table: TimerStore.TimerTable, keys: [String],
        set: @escaping @Sendable (isolated PostgresConnection, String, Instant) throws -> Void
    ) async throws {
        let dues = [now - .hours(1), now - .minutes(1), now + .hours(1)]
        let now = self.now
        try await bed.db.transaction { c in
            for (key, due) in zip(keys, dues) { try set(c, key, due) }
        }
        func claim(at t: Instant, limit: Int) async throws -> [String] {
            try await bed.db.transaction { c in
                try TimerStore.claimDueTimers(c, table, now: t, limit: limit, leaseSeconds: 30)
            }
        }
        // The most overdue first, within the limit.
        #expect(try await claim(at: now, limit: 1) == [keys[0]])
        // The claimed one is leased: the next claim takes the other due one, never the future one.
        #expect(try await claim(at: now, limit: 10) == [keys[1]])
        #expect(try await claim(at: now, limit: 10) == [])
        // A claimer that died: its timers are due again once the lease has passed.
        #expect(Set(try await claim(at: now + .seconds(31), limit: 10)) == [keys[0], keys[1]])
        // The future timer fires in its own time.
        #expect(try await claim(at: now + .hours(2), limit: 10).contains(keys[2]))
    }
}
