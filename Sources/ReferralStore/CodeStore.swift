import Postgres
import ReferralCore

/// Referral codes: one per account for life, each owned by one account and program.
public enum CodeStore {
    /// The codes already issued to these accounts.
    public static func codes(_ c: isolated PostgresConnection, accounts: [String]) throws -> [String: String] {
        if accounts.isEmpty { return [:] }
        var result: [String: String] = [:]
        for row in try c.query(
            "SELECT account_id, code FROM referral_codes WHERE account_id = ANY($1::text[])",
            [.textArray(accounts)])
        {
            result[try row.decode("account_id", as: String.self)] = try row.decode("code", as: String.self)
        }
        return result
    }

    /// Inserts codes; returns the accounts whose insert did not happen because the drawn code
    /// was taken by another account (the caller redraws). An account that already has a code
    /// keeps it: the first activation's code is the account's code for life.
    public static func insertCodes(
        _ c: isolated PostgresConnection, _ codes: [(account: String, code: String, program: String, issuedAt: Instant)]
    ) throws -> Set<String> {
        if codes.isEmpty { return [] }
        let rows = try c.query(
            """
            INSERT INTO referral_codes (account_id, code, program_id, issued_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
            ON CONFLICT DO NOTHING
            RETURNING account_id
            """,
            [
                .textArray(codes.map(\.account)), .textArray(codes.map(\.code)),
                .textArray(codes.map(\.program)), .textArray(codes.map { $0.issuedAt.rfc3339 }),
            ])
        var inserted = Set<String>()
        for row in rows { inserted.insert(try row.decode("account_id", as: String.self)) }
        let notInserted = Set(codes.map(\.account)).subtracting(inserted)
        let existing = try Self.codes(c, accounts: Array(notInserted))
        return notInserted.subtracting(existing.keys)
    }

    /// Code owners for binding leads: canonical code → (account, program id).
    public static func codeOwners(_ c: isolated PostgresConnection, codes: [String]) throws -> [String: (
        accountId: String, programId: String
    )] {
        var owners: [String: (accountId: String, programId: String)] = [:]
        for row in try c.query(
            "SELECT code, account_id, program_id FROM referral_codes WHERE code = ANY($1::text[])",
            [.textArray(codes)])
        {
            owners[try row.decode("code", as: String.self)] = (
                try row.decode("account_id", as: String.self),
                try row.decode("program_id", as: String.self)
            )
        }
        return owners
    }
}
