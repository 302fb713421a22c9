/// A program version as the store keeps it (`program_versions`): what binding and registration
/// decide on.
public struct StoredProgramVersion: Hashable, Sendable {
    public var version: Int
    /// `Program.canonicalForm` of the version: its identity.
    public var canonical: String
    /// The file's `effective_from`, or the instant it was first registered when the file gave none.
    public var effectiveFrom: Instant
    public var registeredAt: Instant

    public init(version: Int, canonical: String, effectiveFrom: Instant, registeredAt: Instant) {
        self.version = version
        self.canonical = canonical
        self.effectiveFrom = effectiveFrom
        self.registeredAt = registeredAt
    }
}

/// The rules that make every instance agree on program versions, whatever file each one started
/// with: a lead is bound by its own time to the versions the database knows (not to the file of
/// the instance that happens to take it), and a file older than the database is refused.
public enum ProgramVersions {
    /// The version in force at `at`: the greatest `effectiveFrom` not after it (the greatest
    /// version number among equals, which registration never lets differ in content). A time
    /// before every version's gets the earliest version: a lead dated before the first version
    /// (a late or back-dated event) is still a referral under the only rules there were.
    /// `BindingStore.bindLeads` writes the same choice in SQL.
    public static func inForce(_ versions: [StoredProgramVersion], at: Instant) -> StoredProgramVersion? {
        let order: (StoredProgramVersion, StoredProgramVersion) -> Bool = {
            ($0.effectiveFrom, $0.version) < ($1.effectiveFrom, $1.version)
        }
        return versions.filter { $0.effectiveFrom <= at }.max(by: order) ?? versions.min(by: order)
    }

    /// What registering a program of the file does.
    public enum Registration: Hashable, Sendable {
        /// The database has this version (same canonical form): nothing is written, and its
        /// effective time stays where it was, so a restart with an unchanged file changes nothing.
        case known(version: Int)
        /// A new version, in force from this instant.
        case new(effectiveFrom: Instant)
    }

    /// Decides how `program` (at `index` of `file`) is registered against the versions stored
    /// for its id, `now` being the registering transaction's time. Refuses (with the file, the
    /// program and `effective_from` named):
    /// - a version whose effective time is that of a stored version with other rules: which of the
    ///   two binds a lead at that time would depend on version numbers, not on the file;
    /// - unless `allowOlder`, a file whose version is older than the newest stored one. Without
    ///   this, an instance restarted with an old file (a rollback of the host, a stale config
    ///   management run) would quietly register the old rules as the newest version and bind
    ///   every later lead to them. With it allowed, the file's version is registered at its own
    ///   time and the newer stored version still governs from its own.
    public static func registration(
        of program: Program, index: Int, file: String, stored: [StoredProgramVersion],
        now: Instant, allowOlder: Bool
    ) throws -> Registration {
        let field = "programs[\(index)].effective_from"
        let known = stored.first { $0.canonical == program.canonicalForm }
        if known == nil, let at = program.effectiveFrom, let clash = stored.first(where: { $0.effectiveFrom == at }) {
            throw ProgramError(
                file: file, program: program.id, field: field,
                message:
                    "\(at.rfc3339) is already the effective time of version \(clash.version) in the database, with other rules: give this version another effective_from"
            )
        }
        let effective = known?.effectiveFrom ?? program.effectiveFrom ?? now
        if !allowOlder,
            let newest = stored.max(by: { ($0.effectiveFrom, $0.version) < ($1.effectiveFrom, $1.version) }),
            effective < newest.effectiveFrom
        {
            throw ProgramError(
                file: file, program: program.id, field: field,
                message:
                    "this file's version (effective from \(effective.rfc3339)) is older than version \(newest.version) in the database (effective from \(newest.effectiveFrom.rfc3339)): deploy the newer file, or pass --allow-older to start with this one (leads after \(newest.effectiveFrom.rfc3339) stay bound to version \(newest.version))"
            )
        }
        if let known { return .known(version: known.version) }
        return .new(effectiveFrom: effective)
    }
}
