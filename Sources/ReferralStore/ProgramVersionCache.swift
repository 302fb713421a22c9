import Foundation
import ReferralCore
import Synchronization

/// Decoded program versions by program id and version, for a connection's decisions.
///
/// A row of `program_versions` never changes once written, yet every binding read joined it
/// and carried the whole program (about 1 KB of JSON) per referral row: the server turned it
/// into text and the worker into a string for each of the tens of thousands of referrals a
/// drain decides. A version is now read once, when first met. Emptied on every new database
/// connection, as `EffectCache` is: after a restore, a version number may name other rules.
public final class ProgramVersionCache: Sendable {
    private let programs = Mutex<[String: Program]>([:])

    public init() {}

    public func removeAll() { programs.withLock { $0.removeAll() } }

    static func key(_ programId: String, _ version: Int) -> String { "\(programId)@\(version)" }

    func program(_ programId: String, version: Int) -> Program? {
        programs.withLock { $0[Self.key(programId, version)] }
    }

    func insert(_ program: Program, programId: String, version: Int) {
        programs.withLock { $0[Self.key(programId, version)] = program }
    }
}
