import Foundation
import Logging
import ReferralCore
import ReferralStore

/// `referrald enroll --csv FILE`: issues codes to customers who were customers before the
/// program existed, and spreads their first ask over a period so that a million customers are
/// not asked in the same minute. Idempotent: a re-run of the same file enrols nobody twice.
public enum Enroll {
    public struct Summary: Sendable, CustomStringConvertible {
        public var rows = 0
        public var enrolled = 0
        public var alreadyEnrolled = 0
        public var badRows: [EnrolmentError] = []
        public var codesIssued = 0
        public var seconds = 0.0

        public var description: String {
            var out =
                "enrolled \(enrolled) of \(rows) rows (\(alreadyEnrolled) already enrolled, \(badRows.count) bad rows skipped), "
                + "\(codesIssued) codes issued, in \(String(format: "%.1f", seconds)) s"
            if seconds > 0 { out += " (\(Int(Double(rows) / seconds)) rows/s)" }
            return out
        }
    }

    /// Rows per transaction: large enough for set-based statements to pay off, small enough
    /// that a failure re-does little and other instances' locks wait briefly.
    static let batchSize = 1000

    public static func run(
        settings: Settings, csvPath: String, start: Instant, span: Span, programs: ProgramBook,
        logger: Logger, progress: (@Sendable (Int, Int) -> Void)? = nil
    ) async throws -> Summary {
        let began = ContinuousClock.now
        let text: String
        do {
            text = try String(contentsOfFile: csvPath, encoding: .utf8)
        } catch {
            throw EnrollError(message: "\(csvPath): cannot read the file (\(error.localizedDescription))")
        }
        let (rows, errors) = Enrolment.parseCSV(text)
        var summary = Summary(rows: rows.count + errors.count, badRows: errors)
        for e in errors {
            logger.warning("enrolment row skipped", metadata: ["csv.file": "\(csvPath)", "csv.error": "\(e)"])
        }
        let db = try await settings.connectDatabase(name: "referrald enroll", logger: logger)
        let context = try await DecisionContext.registering(
            programs, on: db, settings: settings, now: SystemClock().now())
        var done = 0
        for chunk in stride(from: 0, to: rows.count, by: batchSize).map({
            Array(rows[$0..<min($0 + batchSize, rows.count)])
        }) {
            let result = try await DecisionStore(db).enroll(chunk, start: start, span: span, context: context)
            summary.enrolled += result.enrolled
            summary.alreadyEnrolled += chunk.count - result.enrolled
            summary.codesIssued += result.published.filter { $0.type == .codeIssued }.count
            done += chunk.count
            progress?(done, rows.count)
        }
        await db.close()
        summary.seconds = (ContinuousClock.now - began).inSeconds
        return summary
    }
}

public struct EnrollError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
