import Foundation
import Postgres
import ReferralCore

/// Stored facts: the lock on their keys, their inserts and their loads.
public enum FactStore {
    /// Serialises batches that carry facts about the same leads or accounts, taken before
    /// anything is read. Without it, two instances each missed the other's uncommitted fact: one
    /// stored an order linking a lead to an account while the other stored that account's
    /// activation, found no referral for the account yet (the link was not committed), and
    /// nobody re-decided the referral, which stayed `installed` with its rewards never issued.
    /// Leads and accounts already linked by a committed order
    /// are locked together, so a fact about either waits for the other.
    ///
    /// A referral decided on the timer or repair path (`referrals`), or through billing's answer
    /// about its reward, is locked by its lead, as a batch with a fact about that lead locks it.
    ///
    /// A referrer is locked (`r:`) only where a fact about it can change referrals other
    /// batches decide without touching it: the owner of the code a new lead carries, and an
    /// account whose cancellation arrives; a referrer's new household or contact locks that
    /// pair (`p:<account>/<key>`), which a batch giving a friend the same key locks too
    /// (`Lifecycle.personalLockKeys`). These come as `referrerKeys`. Without them, a lead
    /// decided beside its referrer's cancellation would see neither the other's fact nor the
    /// other's referral, and be attributed. Not the
    /// referrers of every referral touched: with the cluster gone nothing needs them, and two
    /// pipelines queued on them (a referrer in common is likely between two batches of 512).
    /// The rankings a changed standing moves are locked later, by key (`lockCompetitionKeys`).
    ///
    /// Locks are taken in hash order in one statement (no two batches wait on each other in a
    /// cycle) and end with the transaction.
    public static func lockFactKeys(
        _ c: isolated PostgresConnection, leads: [String], accounts: [String],
        referrerKeys: [String] = [], codes: [String] = [], rewards: [String] = [],
        referrals: [String] = []
    ) throws {
        if leads.isEmpty && accounts.isEmpty && referrals.isEmpty && rewards.isEmpty { return }
        // Only the branches this batch needs (`KeyUnion`): planned on every call while batches
        // are small, the full union cost more than it ran.
        var keys = KeyUnion()
        if !leads.isEmpty {
            let p = keys.parameter(leads)
            keys.add("SELECT 'l:' || unnest(\(p)) AS k")
            keys.add("SELECT 'a:' || account_id AS k FROM facts WHERE kind = 'order' AND lead_id = ANY(\(p))")
        }
        if !accounts.isEmpty {
            let p = keys.parameter(accounts)
            keys.add("SELECT 'a:' || unnest(\(p)) AS k")
            keys.add("SELECT 'l:' || lead_id AS k FROM facts WHERE kind = 'order' AND account_id = ANY(\(p))")
        }
        if !referrals.isEmpty {
            keys.add("SELECT 'l:' || lead_id AS k FROM referrals WHERE referral_id = ANY(\(keys.parameter(referrals)))")
        }
        if !rewards.isEmpty {
            keys.add(
                """
                SELECT 'l:' || r.lead_id AS k FROM rewards w JOIN referrals r USING (referral_id)
                WHERE w.reward_id = ANY(\(keys.parameter(rewards)))
                """)
        }
        if !referrerKeys.isEmpty { keys.add("SELECT unnest(\(keys.parameter(referrerKeys))) AS k") }
        if !codes.isEmpty {
            keys.add("SELECT 'r:' || account_id AS k FROM referral_codes WHERE code = ANY(\(keys.parameter(codes)))")
        }
        try c.executeDeferred(
            """
            WITH keys AS (\(keys.sql))
            SELECT pg_advisory_xact_lock(1, h) FROM (SELECT DISTINCT hashtext(k) AS h FROM keys ORDER BY h) s
            """, keys.parameters)
    }

    /// `channels`: the sales channel of lead facts (`InboundEvent.leadChannels`), written on the
    /// lead's row for the report.
    public static func insertFacts(
        _ c: isolated PostgresConnection, _ facts: [Fact],
        channels: [Fact: LeadChannel] = [:]
    ) throws {
        if facts.isEmpty { return }
        let rows = facts.map { FactRow($0, channel: channels[$0]) }
        try c.executeDeferred(
            """
            INSERT INTO facts (kind, at, lead_id, account_id, invoice_id, reward_id, code, household_id,
                               contact_hash, segment, sequence, amount_minor, currency, reason, plan_id, channel)
            SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[], $12::int8[],
                                 $13::text[], $14::text[], $15::text[], $16::text[])
            """,
            [
                .textArray(rows.map(\.kind)), .textArray(rows.map { $0.at.rfc3339 }), .textArray(rows.map(\.lead)),
                .textArray(rows.map(\.account)), .textArray(rows.map(\.invoice)), .textArray(rows.map(\.reward)),
                .textArray(rows.map(\.code)), .textArray(rows.map(\.household)), .textArray(rows.map(\.contact)),
                .textArray(rows.map(\.segment)), .textArray(rows.map { $0.sequence.map(String.init) }),
                .int8Array(rows.map(\.amount)), .textArray(rows.map(\.currency)), .textArray(rows.map(\.reason)),
                .textArray(rows.map(\.plan)), .textArray(rows.map(\.channel)),
            ])
    }

    /// Every fact a decision of these referrals reads: their leads' (versions, orders), their
    /// friends' and referrers' accounts, and billing's answers about their rewards. Billing's
    /// answers are read by reward, never by account: the beneficiary of most of them is a
    /// referrer, and reading them by account would read every answer about every reward it was
    /// ever paid. `accounts` adds accounts decided for a code of their own.
    ///
    /// One branch per key array, not one scan with the three conditions OR-ed: under a generic
    /// plan the OR became a filter that compared every row read with every element of the
    /// three arrays in turn (hundreds of elements each at batches of 512), which made this the
    /// costliest read of a batch (BENCHMARKS.md). A fact reached by two keys (an order, by its lead
    /// and by its account) comes twice and is kept once, by `seq`.
    public static func loadFacts(_ c: isolated PostgresConnection, referrals: [BoundReferral], accounts: [String])
        throws -> [Fact]
    {
        let all = Array(Set(referrals.flatMap(\.accounts) + accounts))
        let leads = referrals.map(\.binding.leadId)
        let rewards = referrals.flatMap(\.rewardIds)
        let columns = """
            seq, kind, at, lead_id, account_id, invoice_id, reward_id, code, household_id, contact_hash,
            segment, sequence::int8 AS sequence, amount_minor, currency, reason, plan_id
            """
        var load = KeyUnion()
        load.keepsDuplicates = true
        if !leads.isEmpty { load.add("SELECT \(columns) FROM facts WHERE lead_id = ANY(\(load.parameter(leads)))") }
        if !all.isEmpty {
            load.add(
                """
                SELECT \(columns) FROM facts
                WHERE account_id = ANY(\(load.parameter(all))) AND kind NOT IN ('credit_applied', 'credit_rejected')
                """)
        }
        if !rewards.isEmpty {
            load.add("SELECT \(columns) FROM facts WHERE reward_id = ANY(\(load.parameter(rewards)))")
        }
        if load.isEmpty { return [] }
        var seen = Set<Int64>()
        return try c.query(load.sql, load.parameters).compactMap { row in
            try seen.insert(row.decode("seq", as: Int64.self)).inserted ? try FactRow.fact(row) : nil
        }
    }
}

/// A fact as a row of `facts`: one column per field any kind has.
struct FactRow {
    var kind: String
    var at: Instant
    var lead: String?, account: String?, invoice: String?, reward: String?, code: String?
    var household: String?, contact: String?, segment: String?
    var sequence: Int?, amount: Int64?, currency: String?, reason: String?, plan: String?
    /// A lead's sales channel: beside the fact, not in it (`InboundEvent.leadChannels`).
    var channel: String?

    init(_ fact: Fact, channel: LeadChannel? = nil) {
        at = fact.at
        self.channel = channel?.rawValue
        switch fact {
        case .leadCreated(let l, _, let code, let h, let ct, let seg):
            kind = "lead"
            lead = l
            self.code = code
            household = h
            contact = ct
            segment = seg?.rawValue
        case .orderPlaced(let l, let a, _):
            kind = "order"
            lead = l
            account = a
        case .installCompleted(let a, _):
            kind = "installed"
            account = a
        case .serviceActivated(let a, _, let h, let ct, let seg):
            kind = "activated"
            account = a
            household = h
            contact = ct
            segment = seg?.rawValue
        case .serviceCancelled(let a, _):
            kind = "cancelled"
            account = a
        case .invoiceOverdue(let a, let i, _):
            kind = "overdue"
            account = a
            invoice = i
        case .invoicePaid(let a, let i, let s, _):
            kind = "paid"
            account = a
            invoice = i
            sequence = s
        case .creditApplied(let r, let a, let m, let cur, _):
            kind = "credit_applied"
            reward = r
            account = a
            amount = m
            currency = cur
        case .creditRejected(let r, let why, _):
            kind = "credit_rejected"
            reward = r
            reason = why
        case .customerErased(let a, _):
            kind = "erased"
            account = a
        case .planChosen(let a, let p, _):
            kind = "plan"
            account = a
            plan = p
        case .operatorRejected(let l, _):
            kind = "operator_rejected"
            lead = l
        case .operatorReversed(let r, _):
            kind = "operator_reversed"
            reward = r
        }
    }

    /// The fact a row stores; nil for a kind this binary does not know (a newer release's row).
    static func fact(_ row: PostgresRow) throws -> Fact? {
        let at = Instant(microseconds: try row.decode("at", as: PostgresTimestamp.self).microsecondsSinceEpoch)
        func s(_ column: String) throws -> String? { try row.decodeIfPresent(column, as: String.self) }
        func req(_ column: String) throws -> String { try row.decode(column, as: String.self) }
        switch try req("kind") {
        case "lead":
            return .leadCreated(
                leadId: try req("lead_id"), at: at, code: try s("code"), householdId: try s("household_id"),
                contactHash: try s("contact_hash"), segment: try s("segment").flatMap(Segment.init(rawValue:)))
        case "order": return .orderPlaced(leadId: try req("lead_id"), accountId: try req("account_id"), at: at)
        case "installed": return .installCompleted(accountId: try req("account_id"), at: at)
        case "activated":
            return .serviceActivated(
                accountId: try req("account_id"), at: at, householdId: try s("household_id"),
                contactHash: try s("contact_hash"), segment: try s("segment").flatMap(Segment.init(rawValue:)))
        case "cancelled": return .serviceCancelled(accountId: try req("account_id"), at: at)
        case "overdue":
            return .invoiceOverdue(accountId: try req("account_id"), invoiceId: try req("invoice_id"), at: at)
        case "paid":
            return .invoicePaid(
                accountId: try req("account_id"), invoiceId: try req("invoice_id"),
                sequence: Int(try row.decode("sequence", as: Int64.self)), at: at)
        case "credit_applied":
            return .creditApplied(
                rewardId: try req("reward_id"), accountId: try req("account_id"),
                amountMinor: try row.decode("amount_minor", as: Int64.self), currency: try req("currency"), at: at)
        case "credit_rejected":
            return .creditRejected(rewardId: try req("reward_id"), reason: try req("reason"), at: at)
        case "erased": return .customerErased(accountId: try req("account_id"), at: at)
        case "plan": return .planChosen(accountId: try req("account_id"), planId: try req("plan_id"), at: at)
        case "operator_rejected": return .operatorRejected(leadId: try req("lead_id"), at: at)
        case "operator_reversed": return .operatorReversed(rewardId: try req("reward_id"), at: at)
        default: return nil
        }
    }
}
