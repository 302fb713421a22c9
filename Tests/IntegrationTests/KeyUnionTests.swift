import Postgres
import Testing

@testable import ReferralStore

/// The statements built from only the branches a batch needs, against the real server: each
/// combination finds what the full statement found.
@Suite(.tearsDownTestBeds) struct KeyUnionTests {
    /// Placeholders are numbered in the order parameters are added, whatever branches are left
    /// out, and a branch may use its parameter twice.
    @Test func placeholdersFollowTheBranchesPresent() {
        var keys = KeyUnion()
        #expect(keys.isEmpty)
        let p = keys.parameter(["a-1"])
        keys.add("SELECT 'a:' || unnest(\(p)) AS k")
        keys.add("SELECT 'l:' || lead_id AS k FROM facts WHERE account_id = ANY(\(p))")
        keys.add("SELECT 'r:' || account_id AS k FROM referral_codes WHERE code = ANY(\(keys.parameter(["C"])))")
        #expect(
            keys.sql == """
                SELECT 'a:' || unnest($1::text[]) AS k
                UNION SELECT 'l:' || lead_id AS k FROM facts WHERE account_id = ANY($1::text[])
                UNION SELECT 'r:' || account_id AS k FROM referral_codes WHERE code = ANY($2::text[])
                """)
        #expect(keys.parameters.count == 2)
    }

    /// Whichever subset of keys a batch has, the touched-referral lookup finds exactly the
    /// referrals the one full statement found (by lead, by friend account, by reward).
    @Test func everySubsetFindsWhatTheFullStatementFound() async throws {
        let bed = try await TestBed.make()
        try await bed.db.run { c in
            try c.executeScript(
                """
                INSERT INTO program_versions (program_id, version, canonical, program) VALUES ('p', 1, 'c', '{}');
                INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version, friend_account_id)
                VALUES ('ref-1', 'lead-1', 'CODE', 'acct-r', 'p', 1, NULL),
                       ('ref-2', 'lead-2', 'CODE', 'acct-r', 'p', 1, 'acct-f'),
                       ('ref-3', 'lead-3', 'CODE', 'acct-r', 'p', 1, NULL);
                INSERT INTO rewards (reward_id, referral_id, beneficiary, account_id, kind, amount_minor, currency, program_id,
                                     state, issued_at, updated_at)
                VALUES ('rwd-3', 'ref-3', 'referrer', 'acct-r', 'bill_credit', 100, 'USD', 'p', 'issued', now(), now());
                """)
        }
        let cases: [(leads: [String], accounts: [String], rewards: [String], expected: Set<String>)] = [
            (["lead-1"], [], [], ["ref-1"]),
            ([], ["acct-f"], [], ["ref-2"]),
            ([], [], ["rwd-3"], ["ref-3"]),
            (["lead-1"], ["acct-f"], ["rwd-3"], ["ref-1", "ref-2", "ref-3"]),
            (["lead-2"], ["acct-f"], [], ["ref-2"]),
            ([], [], [], []),
        ]
        for (leads, accounts, rewards, expected) in cases {
            let found = try await bed.db.run { c in
                try BindingStore.referralsTouched(c, leads: leads, accounts: accounts, rewards: rewards)
            }
            #expect(Set(found) == expected, "leads \(leads), accounts \(accounts), rewards \(rewards)")
            #expect(found.count == expected.count, "a referral found twice")
        }
    }
}
