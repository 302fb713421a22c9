import ReferralCore
import ReferralStore

extension DecisionContext {
    /// The context of a command that decides referrals beside the daemons (`enroll`,
    /// `reconcile`, the operator commands): the programs file registered first, refused when older
    /// than the database's unless the settings allow it, as a daemon's start does.
    static func registering(
        _ programs: ProgramBook, on db: Database, settings: Settings,
        now: Instant
    ) async throws -> DecisionContext {
        let (list, file, allowOlder) = (programs.programs, programs.file, settings.allowOlderPrograms)
        _ = try await db.registerPrograms(list, file: file, allowOlder: allowOlder)
        return DecisionContext(programs: programs, policy: settings.lifecyclePolicy, now: now)
    }
}
