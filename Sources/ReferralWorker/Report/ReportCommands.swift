import Foundation
import Logging
import ReferralCore
import ReferralStore

/// The command line's entry points for `report`, `simulate` and `export-events`, taking the
/// options as typed: the CLI stays a thin layer over them.
public enum ReportCommands {
    public struct OptionError: Error, CustomStringConvertible {
        public var description: String
    }

    public static func report(
        settings: Settings, from: String?, to: String?, program: String?, format: String,
        logger: Logger
    ) async throws -> String {
        guard let format = ProgramReport.Format(rawValue: format) else {
            throw OptionError(description: "--format must be table, json or html")
        }
        let now = SystemClock().now()
        let end = try to.map { try time($0, "--to") } ?? now
        let start = try from.map { try time($0, "--from") } ?? end - .days(90)
        guard start < end else { throw OptionError(description: "--from must be before --to") }
        let report = try await ProgramReport.run(
            settings: settings, scope: ReportScope(from: start, to: end, programId: program),
            now: now, logger: logger)
        return report.render(format)
    }

    public static func simulate(
        currentPrograms: String, candidatePrograms: String, events: String, until: String?,
        format: String
    ) throws -> String {
        guard format == "table" || format == "json" else {
            throw OptionError(description: "--format must be table or json")
        }
        let current = try ProgramBook.load(path: currentPrograms).programs
        let candidate = try ProgramBook.load(path: candidatePrograms).programs
        let stream = try Simulate.Stream(ndjson: try String(contentsOfFile: events, encoding: .utf8))
        let comparison = Simulate.compare(
            stream, current: current, candidate: candidate, until: try until.map { try time($0, "--until") })
        return format == "json" ? Simulate.json(comparison) : Simulate.table(comparison)
    }

    public static func exportEvents(
        settings: Settings, from: String?, to: String?, logger: Logger,
        write: @escaping @Sendable ([UInt8]) -> Void
    ) async throws {
        _ = try await ExportEvents.run(
            settings: settings, from: try from.map { try time($0, "--from") },
            to: try to.map { try time($0, "--to") }, logger: logger, write: write)
    }

    static func time(_ text: String, _ option: String) throws -> Instant {
        guard let t = ProgramReport.parseTime(text) else {
            throw OptionError(description: "\(option): expected YYYY-MM-DD or an RFC 3339 time, got \(text)")
        }
        return t
    }
}
