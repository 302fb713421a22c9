import Logging
import ReferralCore
import ReferralStore

/// `referrald ledger export` and `referrald ledger totals`: the reward ledger for billing's
/// reconciliation and for yearly tax reports.
///
/// Each command reads one read-only snapshot: a reward applied or
/// reversed while the export runs is in the output as it was when the export began, or not at
/// all, never half. Rows go to `write` a page at a time as the cursor yields them, so a million
/// rewards never sit in memory at once. Nothing is written to the database (the server refuses
/// it in that mode).
public enum Ledger {
    public enum Format: String, Sendable, CaseIterable {
        /// RFC 4180: a header, CRLF line ends, fields quoted when they hold `,`, `"`, CR or LF.
        case csv
        /// JSON Lines: one object per line, so a consumer can stream it as it is written.
        case json
    }

    public struct OptionError: Error, CustomStringConvertible {
        public var description: String
    }

    static let exportColumns = [
        "reward_id", "referral_id", "beneficiary", "account_id", "kind", "amount_minor", "currency",
        "program_id", "state", "issued_at", "applied_at", "billing_applied_at", "failures",
        "reversed_at", "history",
    ]
    static let totalColumns = [
        "account_id", "currency", "rewards", "issued_minor", "reversed_minor", "net_minor", "failed_minor",
    ]

    // MARK: entry points with the command line's options

    /// `--from`/`--to` as YYYY-MM-DD (UTC midnight) or RFC 3339: rewards issued in [from, to).
    public static func export(
        settings: Settings, from: String?, to: String?, format: Format, logger: Logger,
        write: @escaping @Sendable ([UInt8]) -> Void
    ) async throws -> Int {
        let start = try from.map { try ReportCommands.time($0, "--from") }
        let end = try to.map { try ReportCommands.time($0, "--to") }
        if let start, let end, start >= end { throw OptionError(description: "--from must be before --to") }
        let db = try await connect(settings, logger: logger)
        defer { Task { await db.close() } }
        return try await export(db, from: start, to: end, format: format, write: write)
    }

    /// `--year` by the UTC calendar year of issue; `--kind` a `RewardKind`; `--min-amount` a net
    /// in minor units.
    public static func totals(
        settings: Settings, year: Int, kind: String?, minAmount: Int64?, format: Format,
        logger: Logger, write: @escaping @Sendable ([UInt8]) -> Void
    ) async throws -> Int {
        guard (1...9998).contains(year) else {
            throw OptionError(description: "--year must be a year from 1 to 9998, got \(year)")
        }
        let rewardKind = try kind.map { text in
            guard let k = RewardKind(rawValue: text) else {
                throw OptionError(
                    description:
                        "--kind must be one of \(RewardKind.allCases.map(\.rawValue).joined(separator: ", ")), got \(text)"
                )
            }
            return k
        }
        let db = try await connect(settings, logger: logger)
        defer { Task { await db.close() } }
        return try await totals(db, year: year, kind: rewardKind, minNetMinor: minAmount, format: format, write: write)
    }

    static func connect(_ settings: Settings, logger: Logger) async throws -> Database {
        try await settings.connectDatabase(name: "referrald ledger", logger: logger)
    }

    // MARK: the commands over a connection

    /// Writes the header (CSV) and every reward issued in [from, to); returns how many.
    public static func export(
        _ db: Database, from: Instant?, to: Instant?, format: Format,
        write: @escaping @Sendable ([UInt8]) -> Void
    ) async throws -> Int {
        if format == .csv { write(csvLine(exportColumns)) }
        return try await db.ledgerRewards(from: from, to: to) { page in
            var out: [UInt8] = []
            out.reserveCapacity(page.count * 320)
            for reward in page { out += format == .csv ? csvLine(csvFields(reward)) : jsonLine(reward) }
            write(out)
        }
    }

    /// Writes the header (CSV) and the totals of `year` (UTC); returns how many rows.
    public static func totals(
        _ db: Database, year: Int, kind: RewardKind?, minNetMinor: Int64?, format: Format,
        write: @escaping @Sendable ([UInt8]) -> Void
    ) async throws -> Int {
        guard let from = Instant(rfc3339: "\(pad4(year))-01-01T00:00:00Z"),
            let to = Instant(rfc3339: "\(pad4(year + 1))-01-01T00:00:00Z")
        else { throw OptionError(description: "--year \(year) is out of range") }
        if format == .csv { write(csvLine(totalColumns)) }
        return try await db.ledgerTotals(from: from, to: to, kind: kind?.rawValue, minNetMinor: minNetMinor) { page in
            var out: [UInt8] = []
            for t in page {
                out +=
                    format == .csv
                    ? csvLine([
                        t.accountId, t.currency, "\(t.rewards)", "\(t.issuedMinor)", "\(t.reversedMinor)",
                        "\(t.netMinor)", "\(t.failedMinor)",
                    ])
                    : JSONValue.object([
                        "account_id": .string(t.accountId), "currency": .string(t.currency),
                        "rewards": .integer(t.rewards),
                        "issued_minor": .integer(t.issuedMinor), "reversed_minor": .integer(t.reversedMinor),
                        "net_minor": .integer(t.netMinor), "failed_minor": .integer(t.failedMinor),
                    ]).encoded() + [10]
            }
            write(out)
        }
    }

    private static func pad4(_ year: Int) -> String {
        String(repeating: "0", count: max(0, 4 - "\(year)".count)) + "\(year)"
    }

    // MARK: formats

    /// The export's CSV fields: the history's milestones in columns of their own for a
    /// spreadsheet (the last application and reversal, the number of rejections), and the
    /// whole history in one field (`historyText`).
    static func csvFields(_ r: LedgerReward) -> [String] {
        let applied = r.history.last { $0.event == .applied }
        let reversed = r.history.last { $0.event == .reversed }
        return [
            r.rewardId, r.referralId, r.beneficiary, r.accountId, r.kind, "\(r.amountMinor)", r.currency, r.programId,
            r.state, r.issuedAt.rfc3339, applied?.recordedAt.rfc3339 ?? "", applied?.billingAt?.rfc3339 ?? "",
            "\(r.history.filter { $0.event == .failed }.count)", reversed?.recordedAt.rfc3339 ?? "",
            historyText(r.history),
        ]
    }

    /// `event@recorded` entries joined by `;`, with details in parentheses, e.g.
    /// `issued@2025-03-01T10:00:00Z;failed#1@…(billing …);retried#1@…;applied@…(billing …)`;
    /// `failed#2!` marks a final failure, `reversed@…(reason)`, and
    /// `mismatch@…(billing …: 4000 EUR to acct-9)` what billing applied instead.
    static func historyText(_ history: [LedgerChange]) -> String {
        history.map { h in
            var s = h.event.rawValue
            if let n = h.number { s += "#\(n)" }
            if h.final == true { s += "!" }
            s += "@" + h.recordedAt.rfc3339
            var details: [String] = []
            if h.event == .applied || h.event == .failed || h.event == .mismatch {
                var billing = "billing " + (h.billingAt?.rfc3339 ?? "unknown")
                if let b = h.billed { billing += ": \(b.amountMinor) \(b.currency) to \(b.accountId)" }
                details.append(billing)
            }
            if let reason = h.reason { details.append(reason) }
            return details.isEmpty ? s : s + "(" + details.joined(separator: ", ") + ")"
        }.joined(separator: ";")
    }

    /// RFC 4180: a field holding a comma, a quote, CR or LF is quoted and its quotes doubled;
    /// the record ends with CRLF.
    static func csvLine(_ fields: [String]) -> [UInt8] {
        var out: [UInt8] = []
        for (i, field) in fields.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            let bytes = Array(field.utf8)
            if bytes.contains(where: { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "\"") || $0 == 13 || $0 == 10 }) {
                out.append(UInt8(ascii: "\""))
                for b in bytes {
                    if b == UInt8(ascii: "\"") { out.append(b) }
                    out.append(b)
                }
                out.append(UInt8(ascii: "\""))
            } else {
                out += bytes
            }
        }
        return out + [13, 10]
    }

    /// One JSON Lines record: the reward and its history as an array of changes. `billing_at`
    /// is present (null when billing's fact is gone) exactly on the changes billing caused.
    static func jsonLine(_ r: LedgerReward) -> [UInt8] {
        let history: [JSONValue] = r.history.map { h in
            var m: [(String, JSONValue)] = [
                ("event", .string(h.event.rawValue)), ("at", .string(h.recordedAt.rfc3339)),
            ]
            if h.event == .applied || h.event == .failed || h.event == .mismatch {
                m.append(("billing_at", h.billingAt.map { .string($0.rfc3339) } ?? .null))
            }
            if let n = h.number { m.append((h.event == .failed ? "failure" : "attempt", .integer(Int64(n)))) }
            if let f = h.final { m.append(("final", .bool(f))) }
            if let reason = h.reason { m.append(("reason", .string(reason))) }
            if let b = h.billed {
                m.append(
                    (
                        "billed",
                        .object([
                            "account_id": .string(b.accountId), "amount_minor": .integer(b.amountMinor),
                            "currency": .string(b.currency),
                        ])
                    ))
            }
            return .object(JSONObject(m))
        }
        return JSONValue.object([
            "reward_id": .string(r.rewardId), "referral_id": .string(r.referralId),
            "beneficiary": .string(r.beneficiary),
            "account_id": .string(r.accountId), "kind": .string(r.kind), "amount_minor": .integer(r.amountMinor),
            "currency": .string(r.currency), "program_id": .string(r.programId), "state": .string(r.state),
            "issued_at": .string(r.issuedAt.rfc3339), "history": .array(history),
        ]).encoded() + [10]
    }
}
