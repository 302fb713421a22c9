import Foundation
import Logging
import ReferralCore
import ReferralStore

/// `referrald export-events`: the stored events as NDJSON, the input of `referrald simulate`.
///
/// First one `referrald.code.snapshot` line per issued code: codes are drawn at random when an
/// account first activates and the draw is not in the inbox, so without them a replay could not
/// tell whose code a lead carries. Then every inbox body in received order, one per line.
public enum ExportEvents {
    public static func run(
        settings: Settings, from: Instant?, to: Instant?, logger: Logger,
        write: @escaping @Sendable ([UInt8]) -> Void
    ) async throws -> Int {
        let db = try await settings.connectDatabase(name: "referrald export-events", logger: logger)
        defer { Task { await db.close() } }
        return try await export(db, from: from, to: to, write: write)
    }

    /// Writes the lines through `write`; returns the number of events (snapshot lines aside).
    public static func export(
        _ db: Database, from: Instant?, to: Instant?,
        write: @escaping @Sendable ([UInt8]) -> Void
    ) async throws -> Int {
        try await db.exportEvents(from: from, to: to) { codes in
            for code in codes {
                let line: [String: String] = [
                    "type": Simulate.snapshotType, "account_id": code.accountId, "code": code.code,
                    "program_id": code.programId, "issued_at": code.issuedAt.rfc3339,
                ]
                write(
                    Array(
                        try JSONSerialization.data(
                            withJSONObject: line, options: [.sortedKeys, .withoutEscapingSlashes])) + [10])
            }
        } each: { event in
            write(oneLine(event.body) + [10])
        }
    }

    /// A stored body is valid JSON, where a raw line feed or carriage return can only be
    /// whitespace between tokens (inside strings they must be escaped): turning them into spaces
    /// keeps the event identical and makes it one NDJSON line.
    static func oneLine(_ body: [UInt8]) -> [UInt8] {
        body.map { $0 == 10 || $0 == 13 ? 32 : $0 }
    }
}
