import Foundation
import Postgres
import ReferralCore

/// Program versions: what every instance binds leads to, registered from the programs file.
public enum ProgramStore {
    /// Registers the loaded programs (`ProgramVersions.registration` decides: a program whose
    /// canonical form is new gets the next version, in force from its `effective_from` or from
    /// now; an unchanged one keeps its version and its effective time). Throws a `ProgramError`
    /// for a file older than the database (unless `allowOlder`) or an effective time taken by
    /// other rules. Returns the version of each program of the file.
    public static func registerPrograms(
        _ c: isolated PostgresConnection, _ programs: [Program],
        file: String = "programs file", allowOlder: Bool = false
    ) throws -> [String: Int] {
        var registered: [String: Int] = [:]
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Two instances starting together with different files would each decide on the versions
        // stored before either wrote: both could register a version at the same effective time,
        // or the older file slip in after the newer. Registrations take turns (one lock for all
        // ids: per-id locks taken in two files' orders could deadlock; registering is rare).
        _ = try c.query("SELECT pg_advisory_xact_lock(3, 0)")
        let now = try instant(c.query("SELECT now() AS now")[0], "now")
        for (index, p) in programs.enumerated() {
            let stored = try versions(c, programId: p.id)
            switch try ProgramVersions.registration(
                of: p, index: index, file: file, stored: stored, now: now, allowOlder: allowOlder)
            {
            case .known(let version):
                registered[p.id] = version
            case .new(let effectiveFrom):
                let json = String(decoding: try encoder.encode(p), as: UTF8.self)
                let version = (stored.map(\.version).max() ?? 0) + 1
                try c.execute(
                    """
                    INSERT INTO program_versions (program_id, version, canonical, program, loaded_at, effective_from)
                    VALUES ($1, $2, $3, $4::jsonb, $5::timestamptz, $6::timestamptz)
                    """,
                    [
                        .text(p.id), .int(Int64(version)), .text(p.canonicalForm), .text(json), .text(now.rfc3339),
                        .text(effectiveFrom.rfc3339),
                    ])
                registered[p.id] = version
            }
        }
        return registered
    }

    /// Every stored version of a program, by version.
    public static func versions(_ c: isolated PostgresConnection, programId: String) throws
        -> [StoredProgramVersion]
    {
        try c.query(
            """
            SELECT version::int8 AS version, canonical, effective_from, loaded_at FROM program_versions
            WHERE program_id = $1 ORDER BY version
            """, [.text(programId)]
        ).map { row in
            StoredProgramVersion(
                version: Int(try row.decode("version", as: Int64.self)),
                canonical: try row.decode("canonical", as: String.self),
                effectiveFrom: try instant(row, "effective_from"), registeredAt: try instant(row, "loaded_at"))
        }
    }

    /// The program ids that have versions.
    public static func ids(_ c: isolated PostgresConnection) throws -> [String] {
        try c.query("SELECT DISTINCT program_id FROM program_versions ORDER BY program_id").map {
            try $0.decode("program_id", as: String.self)
        }
    }
}

extension Database {
    /// Registers the programs of a file in one transaction (`ProgramStore.registerPrograms`).
    public func registerPrograms(_ programs: [Program], file: String, allowOlder: Bool) async throws -> [String: Int] {
        try await transaction { c in try ProgramStore.registerPrograms(c, programs, file: file, allowOlder: allowOlder)
        }
    }

    /// The database's clock and every stored version of each program, by program id: what
    /// `programs list` shows and what `check` compares a file with.
    public func programVersions() async throws -> (
        now: Instant, versions: [(programId: String, [StoredProgramVersion])]
    ) {
        try await run { c in
            let now = try instant(c.query("SELECT now() AS now")[0], "now")
            return (
                now,
                try ProgramStore.ids(c).map { id in (id, try ProgramStore.versions(c, programId: id)) }
            )
        }
    }
}
