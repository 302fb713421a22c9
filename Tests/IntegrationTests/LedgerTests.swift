import Foundation
import Postgres
import ReferralCore
import ReferralStore
import Testing

@testable import ReferralWorker

/// `referrald ledger export` and `totals` over a known ledger: every line of the output is
/// written out below, so a lost change, a time from the wrong column, a reward in the wrong
/// year or a quoting slip shows as a differing line.
@Suite(.serialized, .tearsDownTestBeds) struct LedgerTests {
    static func t(_ text: String) -> Instant { Instant(rfc3339: text)! }

    static func grant(
        _ referral: String, _ beneficiary: Beneficiary, _ account: String, _ kind: RewardKind,
        _ amount: Int64, _ currency: String
    ) -> RewardGrant {
        RewardGrant(
            rewardId: "rwd-\(referral.dropFirst(4))-\(beneficiary.rawValue)", referralId: referral, accountId: account,
            beneficiary: beneficiary, kind: kind, amountMinor: amount, currency: currency, programId: "consumer")
    }

    /// Two years, both kinds, two currencies:
    ///
    ///   rwd-1-referrer  A   cash 5000 USD        issued 2025-03-01 10:00; rejected (billing 03-02 09:00), retried 03-03,
    ///                                            applied (billing 03-04 12:00)
    ///   rwd-1-friend    F1  bill_credit 2500 USD issued 2025-03-01 10:00; billing applied 2000 first (mismatch, 11:00),
    ///                                            then 2500 (12:00)
    ///   rwd-2-referrer  A   cash 5000 USD        issued 2025-12-31 23:30, reversed 2026-01-10 (in 2025's totals)
    ///   rwd-3-referrer  A   cash 7000 EUR        issued 2026-01-01 00:00 (the first instant of 2026)
    ///   rwd-3-friend    F3  bill_credit 1500 EUR issued 2026-01-01 00:00, rejected for good (billing 01-02);
    ///                                            its account id holds a comma and quotes (CSV quoting)
    static let f3 = "acct-F3,\"x\""
    static let r1 = grant("ref-1", .referrer, "acct-A", .cash, 5000, "USD")
    static let f1 = grant("ref-1", .friend, "acct-F1", .billCredit, 2500, "USD")
    static let r2 = grant("ref-2", .referrer, "acct-A", .cash, 5000, "USD")
    static let r3 = grant("ref-3", .referrer, "acct-A", .cash, 7000, "EUR")
    static let ff3 = grant("ref-3", .friend, f3, .billCredit, 1500, "EUR")

    static func load(_ db: PostgresConnection) async throws {
        try await db.run { c in
            try c.executeScript(
                """
                INSERT INTO program_versions (program_id, version, canonical, program) VALUES ('consumer', 1, 'c', '{}');
                INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version, stage) VALUES
                    ('ref-1', 'lead-1', 'CODE-A', 'acct-A', 'consumer', 1, 'rewarded'),
                    ('ref-2', 'lead-2', 'CODE-A', 'acct-A', 'consumer', 1, 'reversed'),
                    ('ref-3', 'lead-3', 'CODE-A', 'acct-A', 'consumer', 1, 'rewarded');
                INSERT INTO facts (kind, at, account_id, reward_id, amount_minor, currency, reason) VALUES
                    ('credit_rejected', '2025-03-02T09:00:00Z', NULL, 'rwd-1-referrer', NULL, NULL, 'account on hold'),
                    ('credit_applied', '2025-03-04T12:00:00Z', 'acct-A', 'rwd-1-referrer', 5000, 'USD', NULL),
                    ('credit_applied', '2025-03-01T11:00:00Z', 'acct-F1', 'rwd-1-friend', 2000, 'USD', NULL),
                    ('credit_applied', '2025-03-01T12:00:00Z', 'acct-F1', 'rwd-1-friend', 2500, 'USD', NULL),
                    ('credit_rejected', '2026-01-02T00:00:00Z', NULL, 'rwd-3-friend', NULL, NULL, 'closed');
                """)
            let rewards: [(RewardGrant, String, String)] = [
                (r1, "applied", "2025-03-01T10:00:00Z"), (f1, "applied", "2025-03-01T10:00:00Z"),
                (r2, "reversed", "2025-12-31T23:30:00Z"), (r3, "issued", "2026-01-01T00:00:00Z"),
                (ff3, "failed", "2026-01-01T00:00:00Z"),
            ]
            for (g, state, issued) in rewards {
                try c.execute(
                    """
                    INSERT INTO rewards (reward_id, referral_id, beneficiary, account_id, kind, amount_minor, currency, program_id,
                                         state, issued_at, updated_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, 'consumer', $8, $9::timestamptz, $9::timestamptz)
                    """,
                    [
                        .text(g.rewardId), .text(g.referralId), .text(g.beneficiary.rawValue), .text(g.accountId),
                        .text(g.kind.rawValue), .int(g.amountMinor), .text(g.currency), .text(state), .text(issued),
                    ])
            }
            let effects: [(Effect, String)] = [
                (
                    .friendOfferGranted(
                        referralId: "ref-1", leadId: "lead-1", code: "CODE-A", priorityInstall: false,
                        kind: .billCredit,
                        amountMinor: 2500, currency: "USD"), "2025-02-01T00:00:00Z"
                ),
                (.rewardIssued(r1), "2025-03-01T10:00:00Z"),
                (.rewardIssued(f1), "2025-03-01T10:00:00Z"),
                (
                    .rewardMismatch(rewardId: f1.rewardId, accountId: "acct-F1", amountMinor: 2000, currency: "USD"),
                    "2025-03-01T11:00:01Z"
                ),
                (.rewardApplied(rewardId: f1.rewardId), "2025-03-01T12:00:01Z"),
                (
                    .rewardFailed(rewardId: r1.rewardId, failure: 1, reason: "account on hold", final: false),
                    "2025-03-02T09:00:05Z"
                ),
                (.rewardRetried(r1, attempt: 1), "2025-03-03T09:00:00Z"),
                (.rewardApplied(rewardId: r1.rewardId), "2025-03-04T12:00:05Z"),
                (.rewardIssued(r2), "2025-12-31T23:30:00Z"),
                (
                    .rewardReversed(
                        Reversal(
                            rewardId: r2.rewardId, referralId: "ref-2", accountId: "acct-A", amountMinor: 5000,
                            currency: "USD", reason: "friend_cancelled")), "2026-01-10T08:00:00Z"
                ),
                (.rewardIssued(r3), "2026-01-01T00:00:00Z"),
                (.rewardIssued(ff3), "2026-01-01T00:00:00Z"),
                (
                    .rewardFailed(rewardId: ff3.rewardId, failure: 1, reason: "closed", final: true),
                    "2026-01-02T00:00:01Z"
                ),
            ]
            for (n, (effect, at)) in effects.enumerated() {
                try c.execute(
                    """
                    INSERT INTO effects (effect_key, referral_id, account_id, kind, effect, recorded_at)
                    VALUES ($1, $2, NULL, $3, $4::jsonb, $5::timestamptz)
                    """,
                    [
                        .text("k\(n)"), PostgresValue(effect.referralId), .text(kind(effect)),
                        .text(String(decoding: effect.storedJSON(), as: UTF8.self)), .text(at),
                    ])
            }
        }
    }

    static func kind(_ e: Effect) -> String {
        switch e {
        case .rewardIssued: "reward_issued"
        case .rewardRetried: "reward_retried"
        case .rewardApplied: "reward_applied"
        case .rewardFailed: "reward_failed"
        case .rewardReversed: "reward_reversed"
        case .rewardMismatch: "reward_mismatch"
        case .friendOfferGranted: "friend_offer_granted"
        default: "other"
        }
    }

    /// Collects the exporter's output. `@unchecked Sendable`: `bytes` is only touched under `lock`.
    final class Sink: @unchecked Sendable {
        private let lock = NSLock()
        private var bytes: [UInt8] = []
        func append(_ b: [UInt8]) { lock.withLock { bytes += b } }
        var text: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
    }

    static func export(_ db: PostgresConnection, from: String? = nil, to: String? = nil, _ format: Ledger.Format)
        async throws -> (Int, String)
    {
        let sink = Sink()
        let n = try await Ledger.export(Database(db), from: from.map(t), to: to.map(t), format: format) {
            sink.append($0)
        }
        return (n, sink.text)
    }

    static func totals(
        _ db: PostgresConnection, _ year: Int, kind: RewardKind? = nil, min: Int64? = nil,
        _ format: Ledger.Format = .csv
    ) async throws -> String {
        let sink = Sink()
        _ = try await Ledger.totals(Database(db), year: year, kind: kind, minNetMinor: min, format: format) {
            sink.append($0)
        }
        return sink.text
    }

    static let header =
        "reward_id,referral_id,beneficiary,account_id,kind,amount_minor,currency,program_id,state,issued_at,applied_at,billing_applied_at,failures,reversed_at,history"
    static let csvRows = [
        "rwd-1-friend,ref-1,friend,acct-F1,bill_credit,2500,USD,consumer,applied,2025-03-01T10:00:00Z,2025-03-01T12:00:01Z,2025-03-01T12:00:00Z,0,,"
            + "issued@2025-03-01T10:00:00Z;mismatch@2025-03-01T11:00:01Z(billing 2025-03-01T11:00:00Z: 2000 USD to acct-F1);"
            + "applied@2025-03-01T12:00:01Z(billing 2025-03-01T12:00:00Z)",
        "rwd-1-referrer,ref-1,referrer,acct-A,cash,5000,USD,consumer,applied,2025-03-01T10:00:00Z,2025-03-04T12:00:05Z,2025-03-04T12:00:00Z,1,,"
            + "issued@2025-03-01T10:00:00Z;failed#1@2025-03-02T09:00:05Z(billing 2025-03-02T09:00:00Z);retried#1@2025-03-03T09:00:00Z;"
            + "applied@2025-03-04T12:00:05Z(billing 2025-03-04T12:00:00Z)",
        "rwd-2-referrer,ref-2,referrer,acct-A,cash,5000,USD,consumer,reversed,2025-12-31T23:30:00Z,,,0,2026-01-10T08:00:00Z,"
            + "issued@2025-12-31T23:30:00Z;reversed@2026-01-10T08:00:00Z(friend_cancelled)",
        "rwd-3-friend,ref-3,friend,\"acct-F3,\"\"x\"\"\",bill_credit,1500,EUR,consumer,failed,2026-01-01T00:00:00Z,,,1,,"
            + "issued@2026-01-01T00:00:00Z;failed#1!@2026-01-02T00:00:01Z(billing 2026-01-02T00:00:00Z)",
        "rwd-3-referrer,ref-3,referrer,acct-A,cash,7000,EUR,consumer,issued,2026-01-01T00:00:00Z,,,0,,issued@2026-01-01T00:00:00Z",
    ]

    @Test func exportListsEveryRewardWithItsHistoryInCSVAndJSON() async throws {
        let bed = try await TestBed.make()
        try await Self.load(bed.db)
        let (n, csv) = try await Self.export(bed.db, .csv)
        #expect(n == 5)
        #expect(csv == ([Self.header] + Self.csvRows).map { $0 + "\r\n" }.joined())

        let (m, json) = try await Self.export(bed.db, .json)
        #expect(m == 5)
        let lines = json.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == 6 && lines.last == "")
        #expect(
            lines[0] == """
                {"reward_id":"rwd-1-friend","referral_id":"ref-1","beneficiary":"friend","account_id":"acct-F1","kind":"bill_credit",\
                "amount_minor":2500,"currency":"USD","program_id":"consumer","state":"applied","issued_at":"2025-03-01T10:00:00Z",\
                "history":[{"event":"issued","at":"2025-03-01T10:00:00Z"},\
                {"event":"mismatch","at":"2025-03-01T11:00:01Z","billing_at":"2025-03-01T11:00:00Z",\
                "billed":{"account_id":"acct-F1","amount_minor":2000,"currency":"USD"}},\
                {"event":"applied","at":"2025-03-01T12:00:01Z","billing_at":"2025-03-01T12:00:00Z"}]}
                """)
        #expect(
            lines[1] == """
                {"reward_id":"rwd-1-referrer","referral_id":"ref-1","beneficiary":"referrer","account_id":"acct-A","kind":"cash",\
                "amount_minor":5000,"currency":"USD","program_id":"consumer","state":"applied","issued_at":"2025-03-01T10:00:00Z",\
                "history":[{"event":"issued","at":"2025-03-01T10:00:00Z"},\
                {"event":"failed","at":"2025-03-02T09:00:05Z","billing_at":"2025-03-02T09:00:00Z","failure":1,"final":false},\
                {"event":"retried","at":"2025-03-03T09:00:00Z","attempt":1},\
                {"event":"applied","at":"2025-03-04T12:00:05Z","billing_at":"2025-03-04T12:00:00Z"}]}
                """)
        #expect(
            lines[2] == """
                {"reward_id":"rwd-2-referrer","referral_id":"ref-2","beneficiary":"referrer","account_id":"acct-A","kind":"cash",\
                "amount_minor":5000,"currency":"USD","program_id":"consumer","state":"reversed","issued_at":"2025-12-31T23:30:00Z",\
                "history":[{"event":"issued","at":"2025-12-31T23:30:00Z"},\
                {"event":"reversed","at":"2026-01-10T08:00:00Z","reason":"friend_cancelled"}]}
                """)
        #expect(
            lines[3] == """
                {"reward_id":"rwd-3-friend","referral_id":"ref-3","beneficiary":"friend","account_id":"acct-F3,\\"x\\"","kind":"bill_credit",\
                "amount_minor":1500,"currency":"EUR","program_id":"consumer","state":"failed","issued_at":"2026-01-01T00:00:00Z",\
                "history":[{"event":"issued","at":"2026-01-01T00:00:00Z"},\
                {"event":"failed","at":"2026-01-02T00:00:01Z","billing_at":"2026-01-02T00:00:00Z","failure":1,"final":true}]}
                """)
        // Every line is one JSON object, as a JSON Lines reader takes it.
        for line in lines.dropLast() { #expect(try JSONValue.parse(Array(line.utf8)).objectValue != nil) }
    }

    @Test func periodIsHalfOpenOnIssueTimeAndPagesJoinSeamlessly() async throws {
        let bed = try await TestBed.make()
        try await Self.load(bed.db)
        // [from, to): 23:30 is in, 2026-01-01T00:00 (the two ref-3 rewards) is not.
        let (n, csv) = try await Self.export(bed.db, from: "2025-12-31T23:30:00Z", to: "2026-01-01T00:00:00Z", .csv)
        #expect(n == 1)
        #expect(csv == Self.header + "\r\n" + Self.csvRows[2] + "\r\n")
        let (m, later) = try await Self.export(bed.db, from: "2026-01-01T00:00:00Z", .csv)
        #expect(m == 2)
        #expect(later == ([Self.header] + Self.csvRows[3...]).map { $0 + "\r\n" }.joined())
        let (k, earlier) = try await Self.export(bed.db, to: "2025-12-31T23:30:00Z", .csv)
        #expect(k == 2)
        #expect(earlier == ([Self.header] + Self.csvRows[..<2]).map { $0 + "\r\n" }.joined())

        // Pages of 2 (one referral's two rewards split across pages) give the same rewards.
        let pages = try await bed.db.transaction(.readOnlySnapshot) { c in
            var small: [[LedgerReward]] = []
            var whole: [LedgerReward] = []
            try LedgerStore.rewards(c, from: nil, to: nil, pageSize: 2) { small.append($0) }
            try LedgerStore.rewards(c, from: nil, to: nil) { whole += $0 }
            return (small, whole)
        }
        #expect(pages.0.map(\.count) == [2, 2, 1])
        #expect(pages.0.flatMap { $0 } == pages.1)
    }

    @Test func totalsPerAccountAndCurrencyByUTCYearWithFilters() async throws {
        let bed = try await TestBed.make()
        try await Self.load(bed.db)
        let head = "account_id,currency,rewards,issued_minor,reversed_minor,net_minor,failed_minor\r\n"
        // 2025: rwd-2 (issued 12-31 23:30 UTC, reversed in 2026) counts in 2025, reversed.
        #expect(
            try await Self.totals(bed.db, 2025) == head
                + "acct-A,USD,2,10000,5000,5000,0\r\nacct-F1,USD,1,2500,0,2500,0\r\n")
        #expect(
            try await Self.totals(bed.db, 2026) == head
                + "acct-A,EUR,1,7000,0,7000,0\r\n\"acct-F3,\"\"x\"\"\",EUR,1,1500,0,1500,1500\r\n")
        #expect(try await Self.totals(bed.db, 2024) == head)
        #expect(try await Self.totals(bed.db, 2025, kind: .cash) == head + "acct-A,USD,2,10000,5000,5000,0\r\n")
        #expect(try await Self.totals(bed.db, 2025, kind: .billCredit) == head + "acct-F1,USD,1,2500,0,2500,0\r\n")
        // --min-amount compares the net (5000), not the issued amount (10000).
        #expect(
            try await Self.totals(bed.db, 2025, kind: .cash, min: 5000) == head + "acct-A,USD,2,10000,5000,5000,0\r\n")
        #expect(try await Self.totals(bed.db, 2025, kind: .cash, min: 5001) == head)
        #expect(try await Self.totals(bed.db, 2025, min: 2501) == head + "acct-A,USD,2,10000,5000,5000,0\r\n")
        #expect(
            try await Self.totals(bed.db, 2026, .json) == """
                {"account_id":"acct-A","currency":"EUR","rewards":1,"issued_minor":7000,"reversed_minor":0,"net_minor":7000,"failed_minor":0}
                {"account_id":"acct-F3,\\"x\\"","currency":"EUR","rewards":1,"issued_minor":1500,"reversed_minor":0,"net_minor":1500,"failed_minor":1500}

                """)
    }

    @Test func bothCommandsWriteNothing() async throws {
        let bed = try await TestBed.make()
        try await Self.load(bed.db)
        // Every row of every table, as text: any insert, update or delete changes it.
        func dump() async throws -> [String: String] {
            try await bed.db.run { c in
                var out: [String: String] = [:]
                for table in try c.query(
                    """
                    SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename
                    """
                ).map({ try $0.decode("tablename", as: String.self) }) {
                    out[table] = try c.query(
                        "SELECT coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '') AS d FROM \"\(table)\" x")[0]
                        .decode("d", as: String.self)
                }
                return out
            }
        }
        let before = try await dump()
        #expect(before["rewards"]?.isEmpty == false)
        _ = try await Self.export(bed.db, .csv)
        _ = try await Self.export(bed.db, from: "2025-01-01T00:00:00Z", .json)
        _ = try await Self.totals(bed.db, 2025, kind: .cash, min: 1)
        _ = try await Self.totals(bed.db, 2026, .json)
        #expect(try await dump() == before)
        // And no temporary table or cursor outlives the commands on the session.
        let leftovers = try await bed.db.query(
            """
            SELECT (SELECT count(*) FROM pg_cursors WHERE name LIKE 'ledger%')::int8 AS cursors,
                   (SELECT count(*) FROM pg_class WHERE relpersistence = 't')::int8 AS temps
            """)[0]
        #expect(try leftovers.decode("cursors", as: Int64.self) == 0)
        #expect(try leftovers.decode("temps", as: Int64.self) == 0)
    }
}
