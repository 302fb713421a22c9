import Foundation
import Logging
import ReferralCore
import ReferralStore

/// `referrald programs list` and the programs part of `referrald check`: the versions every
/// instance binds leads to, read from the database (not from a file, which may differ by instance).
public enum ProgramVersionsListing {
    public struct Row: Hashable, Sendable {
        public var programId: String
        public var version: StoredProgramVersion
        /// The version that binds a lead dated now.
        public var inForce: Bool
    }

    public static func rows(settings: Settings, now: Instant, logger: Logger) async throws -> [Row] {
        let db = try await settings.connectDatabase(name: "referrald programs", logger: logger)
        defer { Task { await db.close() } }
        return try await db.programVersions().versions.flatMap { id, versions in
            let current = ProgramVersions.inForce(versions, at: now)?.version
            return versions.map { Row(programId: id, version: $0, inForce: $0.version == current) }
        }
    }

    /// One line per version, the one in force now marked.
    public static func table(_ rows: [Row]) -> String {
        if rows.isEmpty { return "no program versions registered yet (`referrald run` registers the programs file)\n" }
        let header = ["program", "version", "effective_from", "registered", "in force now"]
        let cells = rows.map { r in
            [
                r.programId, String(r.version.version), r.version.effectiveFrom.rfc3339, r.version.registeredAt.rfc3339,
                r.inForce ? "yes" : "",
            ]
        }
        let widths = header.indices.map { i in ([header[i]] + cells.map { $0[i] }).map(\.count).max()! }
        // The last column unpadded: no line ends in spaces.
        func line(_ c: [String]) -> String {
            (c.indices.dropLast().map { c[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) } + [
                c[c.count - 1]
            ])
            .joined(separator: "  ")
        }
        return ([line(header)] + cells.map(line)).joined(separator: "\n") + "\n"
    }

    /// What `run` would register for each program of the file, without writing: throws the
    /// `ProgramError` that `run` would exit 78 with (an older file, a clashing effective time).
    public static func check(settings: Settings, programs: ProgramBook, logger: Logger) async throws -> [String] {
        let db = try await settings.connectDatabase(name: "referrald check", logger: logger)
        defer { Task { await db.close() } }
        let allowOlder = settings.allowOlderPrograms
        let (now, versions) = try await db.programVersions()
        let stored = Dictionary(uniqueKeysWithValues: versions)
        return try programs.programs.enumerated().map { index, p in
            switch try ProgramVersions.registration(
                of: p, index: index, file: programs.file, stored: stored[p.id] ?? [], now: now, allowOlder: allowOlder)
            {
            case .known(let version): return "program \(p.id): version \(version) in the database"
            case .new(let at):
                return "program \(p.id): a new version, in force from \(at.rfc3339), once `run` registers it"
            }
        }
    }
}
