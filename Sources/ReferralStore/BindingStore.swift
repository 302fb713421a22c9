import Foundation
import Postgres
import ReferralCore

/// Referrals: leads bound to a code and a program version, their locks, bindings and views.
public enum BindingStore {
    /// Creates referrals for leads with a known code that have none yet, each bound to the version
    /// of its program in force at the lead's own time, as `ProgramVersions.inForce` chooses: the
    /// greatest effective time not after it, else the earliest version. Read from
    /// `program_versions`, not from this instance's file: during a rolling restart the instances
    /// hold different files, and a lead's version depended on which one took it. A program with
    /// no version stored binds nothing. Returns the leads bound now.
    public static func bindLeads(_ c: isolated PostgresConnection, _ leads: [LeadToBind]) throws -> [String] {
        if leads.isEmpty { return [] }
        return try c.query(
            """
            INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version)
            SELECT 'ref-' || nextval('referral_numbers'), l, cd, ra, p, v
            FROM (SELECT l, cd, ra, p, coalesce(
                      (SELECT version FROM program_versions WHERE program_id = p AND effective_from <= at
                       ORDER BY effective_from DESC, version DESC LIMIT 1),
                      (SELECT version FROM program_versions WHERE program_id = p
                       ORDER BY effective_from, version LIMIT 1)) AS v
                  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) AS t(l, cd, ra, p, at)) b
            WHERE v IS NOT NULL
            ORDER BY l
            ON CONFLICT (lead_id) DO NOTHING
            RETURNING lead_id
            """,
            [
                .textArray(leads.map(\.leadId)), .textArray(leads.map(\.code)),
                .textArray(leads.map(\.referrerAccountId)), .textArray(leads.map(\.programId)),
                .textArray(leads.map(\.at.rfc3339)),
            ]
        ).map { try $0.decode("lead_id", as: String.self) }
    }

    /// Lead ids that already have a referral.
    public static func boundLeads(_ c: isolated PostgresConnection, _ leads: [String]) throws -> Set<String> {
        Set(
            try c.query("SELECT lead_id FROM referrals WHERE lead_id = ANY($1::text[])", [.textArray(leads)])
                .map { try $0.decode("lead_id", as: String.self) })
    }

    /// Sets, for referrals of these leads, the friend account: the account of the lead's
    /// earliest order (an earlier order to another account moves it). Only a fact about the
    /// lead can change it: its order, or the lead itself, bound after its order arrived.
    public static func refreshFriendAccounts(_ c: isolated PostgresConnection, leads: [String]) throws {
        if leads.isEmpty { return }
        try c.executeDeferred(
            """
            UPDATE referrals r SET friend_account_id = o.account_id
            FROM (SELECT DISTINCT ON (lead_id) lead_id, account_id FROM facts
                  WHERE kind = 'order' AND lead_id = ANY($1::text[])
                  ORDER BY lead_id, at, account_id COLLATE "C") o
            WHERE r.lead_id = o.lead_id AND r.friend_account_id IS DISTINCT FROM o.account_id
            """, [.textArray(leads)])
    }

    /// The referrals a batch's facts touch directly: by lead, by friend account, by reward. Not
    /// by referrer account: a fact about a referrer's own account changes only the referrals
    /// `Lifecycle.referrerBoundaries` names, never all of them.
    public static func referralsTouched(
        _ c: isolated PostgresConnection, leads: [String], accounts: [String],
        rewards: [String]
    ) throws -> [String] {
        var touched = KeyUnion()
        if !leads.isEmpty {
            touched.add("SELECT referral_id FROM referrals WHERE lead_id = ANY(\(touched.parameter(leads)))")
        }
        if !accounts.isEmpty {
            touched.add(
                "SELECT referral_id FROM referrals WHERE friend_account_id = ANY(\(touched.parameter(accounts)))")
        }
        if !rewards.isEmpty {
            touched.add("SELECT referral_id FROM rewards WHERE reward_id = ANY(\(touched.parameter(rewards)))")
        }
        if touched.isEmpty { return [] }
        return try c.query(touched.sql, touched.parameters).map { try $0.decode("referral_id", as: String.self) }
    }

    /// Locks the rows of the referrals a transaction decides, in id order, so that two
    /// instances deciding the same referral queue instead of deadlocking, and the second sees the
    /// first's committed facts and effects (the effect cache relies on it).
    public static func lockReferrals(_ c: isolated PostgresConnection, _ ids: [String]) throws {
        if ids.isEmpty { return }
        try c.executeDeferred(
            "SELECT 1 FROM referrals WHERE referral_id = ANY($1::text[]) ORDER BY referral_id FOR UPDATE",
            [.textArray(ids)])
    }

    /// The referrals' bindings, in id order. Their programs come from `cache` (by default a new
    /// one for this call), and only the versions it lacks are read.
    public static func loadBindings(
        _ c: isolated PostgresConnection, _ ids: [String],
        cache: ProgramVersionCache = ProgramVersionCache()
    ) throws -> [BoundReferral] {
        let rows = try c.query(
            """
            SELECT referral_id, lead_id, code, referrer_account_id, program_version::int8 AS version,
                   friend_account_id, program_id
            FROM referrals WHERE referral_id = ANY($1::text[])
            ORDER BY referral_id
            """, [.textArray(ids)]
        ).map { row in
            (
                referralId: try row.decode("referral_id", as: String.self),
                leadId: try row.decode("lead_id", as: String.self),
                code: try row.decode("code", as: String.self),
                referrerAccountId: try row.decode("referrer_account_id", as: String.self),
                programId: try row.decode("program_id", as: String.self),
                version: Int(try row.decode("version", as: Int64.self)),
                friendAccountId: try row.decodeIfPresent("friend_account_id", as: String.self)
            )
        }
        var missing: [String: (programId: String, version: Int)] = [:]
        for r in rows where cache.program(r.programId, version: r.version) == nil {
            missing[ProgramVersionCache.key(r.programId, r.version)] = (r.programId, r.version)
        }
        if !missing.isEmpty {
            let decoder = JSONDecoder()
            let wanted = Array(missing.values)
            for row in try c.query(
                """
                SELECT p.program_id, p.version::int8 AS version, p.program::text AS program
                FROM program_versions p JOIN unnest($1::text[], $2::int8[]) AS w(program_id, version)
                  ON p.program_id = w.program_id AND p.version = w.version
                """, [.textArray(wanted.map(\.programId)), .int8Array(wanted.map { Int64($0.version) })])
            {
                let program = try decoder.decode(
                    Program.self, from: Data(try row.decode("program", as: String.self).utf8))
                cache.insert(
                    program, programId: try row.decode("program_id", as: String.self),
                    version: Int(try row.decode("version", as: Int64.self)))
            }
        }
        return rows.compactMap { r in
            // The foreign key to `program_versions` keeps every version read; a row without one
            // (a damaged database) is left out, as the inner join that read them did.
            guard let program = cache.program(r.programId, version: r.version) else { return nil }
            return BoundReferral(
                binding: ReferralBinding(
                    referralId: r.referralId, leadId: r.leadId, code: r.code,
                    referrerAccountId: r.referrerAccountId, program: program, programVersion: r.version),
                friendAccountId: r.friendAccountId)
        }
    }

    /// Where each referral stands, for `explain`, reports and follow-ups.
    public static func saveViews(_ c: isolated PostgresConnection, _ views: [ReferralView]) throws {
        if views.isEmpty { return }
        try c.executeDeferred(
            """
            UPDATE referrals r SET stage = v.stage, reason = v.reason, rule = v.rule, updated_at = now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS v(id, stage, reason, rule)
            WHERE r.referral_id = v.id
              AND (r.stage, r.reason, r.rule) IS DISTINCT FROM (v.stage, v.reason, v.rule)
            """,
            [
                .textArray(views.map(\.referralId)), .textArray(views.map(\.stage.rawValue)),
                .textArray(views.map(\.reason)), .textArray(views.map(\.rule)),
            ])
    }
}

/// A referral as decisions read it: its binding, and its friend once the lead ordered.
public struct BoundReferral: Sendable {
    public var binding: ReferralBinding
    public var friendAccountId: String?

    /// The accounts whose facts decide it: its referrer's, and its friend's once ordered.
    public var accounts: [String] { [binding.referrerAccountId] + (friendAccountId.map { [$0] } ?? []) }
    /// Its rewards' ids, one per beneficiary.
    public var rewardIds: [String] {
        Beneficiary.allCases.map { rewardId(referralId: binding.referralId, beneficiary: $0) }
    }
}
