import Foundation
import Logging
import ReferralCore
import ReferralStore

/// `referrald reconcile [--referrer ID | --all]`: the repair tool beside the incremental state.
/// For each referral it re-derives the standing from the stored facts (as the oracle does) and
/// compares it with the stored one, then decides the referral as the worker does, which issues
/// a reward that should stand and is missing and reverses one that must not stand. It never
/// edits a published effect: it can only add one, with the keys that make a second one
/// impossible. Safe while daemons run: a chunk of referrals per transaction, locked in the
/// worker's order, so no lock is held longer than one of the worker's batches holds it.
public enum Reconcile {
    public enum Scope: Sendable {
        case referrer(String)
        case all
    }

    public struct Summary: Sendable, CustomStringConvertible {
        public var referrals = 0
        /// Referrals whose stored standing differed from their facts (then fixed).
        public var standingsFixed: [String] = []
        /// Events published to repair what was missing, by type.
        public var events: [String: Int] = [:]
        public var seconds = 0.0

        public var fixes: Int { standingsFixed.count + events.values.reduce(0, +) }

        public var description: String {
            var out = "checked \(referrals) referrals in \(String(format: "%.1f", seconds)) s: "
            if fixes == 0 { return out + "nothing to fix" }
            out += "\(standingsFixed.count) standings fixed"
            if !standingsFixed.isEmpty {
                out +=
                    " (\(standingsFixed.prefix(10).joined(separator: ", "))\(standingsFixed.count > 10 ? ", ..." : ""))"
            }
            let published = events.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
            return out + "; events published: " + (published.isEmpty ? "none" : published)
        }
    }

    /// Referrals per transaction.
    static let chunk = 200

    public static func run(
        settings: Settings, scope: Scope, programs: ProgramBook, now: Instant? = nil,
        logger: Logger
    ) async throws -> Summary {
        let began = ContinuousClock.now
        let db = try await settings.connectDatabase(name: "referrald reconcile", logger: logger)
        defer { Task { await db.close() } }
        let context = try await DecisionContext.registering(
            programs, on: db, settings: settings, now: now ?? SystemClock().now())
        var summary = Summary()
        var after = ""
        while true {
            let cursor = after
            let ids = try await db.referralPage(referrer: scope.referrer, after: cursor, limit: chunk)
            guard let last = ids.last else { break }
            after = last
            let result = try await DecisionStore(db).reconcile(ids, context: context)
            summary.referrals += ids.count
            summary.standingsFixed += result.standingsFixed
            for e in result.published { summary.events[e.type.rawValue, default: 0] += 1 }
            for id in result.standingsFixed {
                logger.warning("standing differed from the facts; fixed", metadata: ["referral.id": "\(id)"])
            }
        }
        summary.seconds = (ContinuousClock.now - began).inSeconds
        return summary
    }
}

extension Reconcile.Scope {
    var referrer: String? {
        if case .referrer(let id) = self { return id }
        return nil
    }
}
