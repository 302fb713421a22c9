import Foundation
import Logging
import ReferralCore
import ReferralStore

/// The operator's controls: block a leaked code, reject a referral or reverse a reward by hand,
/// pause and resume payouts. Each is one transaction that is safe while daemons run (the worker's
/// lock order, facts like any other, effects that can be recorded only once), is idempotent (a
/// second run is a recorded no-op) and is written to `operator_actions` with who, when, why and
/// what came of it. `--dry-run` runs the same transaction and rolls it back.
public enum OperatorCommands {
    public struct Who: Sendable {
        public var actor: String
        public var reason: String
        public var dryRun: Bool
        public init(actor: String, reason: String, dryRun: Bool) {
            self.actor = actor
            self.reason = reason
            self.dryRun = dryRun
        }
    }

    public struct Outcome: Sendable, CustomStringConvertible {
        public var action: String
        public var target: String
        public var result: String
        /// Events enqueued for the daemons' relay, by type.
        public var events: [String: Int] = [:]
        public var dryRun: Bool

        public var applied: Bool { result == "applied" }
        public var description: String {
            var out = "\(dryRun ? "dry run: would be " : "")\(action) \(target): \(result)"
            if !events.isEmpty {
                out +=
                    "; events: "
                    + events.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
            }
            return out
        }
    }

    public struct UsageError: Error, CustomStringConvertible {
        public var description: String
    }

    /// The same rejection an operator can read in `explain`: the reason text is theirs.
    static let rejectionReason = "operator"

    public static func blockCode(settings: Settings, code text: String, who: Who, now: Instant, logger: Logger)
        async throws -> Outcome
    {
        let code = try canonical(text)
        return try await run(
            settings: settings, programs: nil, action: "code_block", target: code, who: who, now: now,
            logger: logger, check: .blockCode(code))
    }

    public static func unblockCode(settings: Settings, code text: String, who: Who, now: Instant, logger: Logger)
        async throws -> Outcome
    {
        let code = try canonical(text)
        return try await run(
            settings: settings, programs: nil, action: "code_unblock", target: code, who: who, now: now,
            logger: logger, check: .unblockCode(code))
    }

    public static func rejectReferral(
        settings: Settings, programs: ProgramBook, referralId: String, who: Who, now: Instant,
        logger: Logger
    ) async throws -> Outcome {
        try await run(
            settings: settings, programs: programs, action: "referral_reject", target: referralId, who: who, now: now,
            logger: logger, check: .rejectReferral(referralId))
    }

    public static func reverseReward(
        settings: Settings, programs: ProgramBook, rewardId: String, who: Who, now: Instant,
        logger: Logger
    ) async throws -> Outcome {
        try await run(
            settings: settings, programs: programs, action: "reward_reverse", target: rewardId, who: who, now: now,
            logger: logger, check: .reverseReward(rewardId))
    }

    /// `program` nil: every program (`*`).
    public static func pauseRewards(settings: Settings, program: String?, who: Who, now: Instant, logger: Logger)
        async throws -> Outcome
    {
        let target = program ?? "*"
        return try await run(
            settings: settings, programs: nil, action: "rewards_pause", target: target, who: who, now: now,
            logger: logger, check: .pauseRewards(program: target))
    }

    /// Lifts the pause, then re-decides the referrals it held at `qualified`, a chunk per
    /// transaction: their rewards are issued under the ids they would have had. A second run
    /// (or a crash midway) finds the rest still at `qualified` and issues those.
    public static func resumeRewards(
        settings: Settings, programs: ProgramBook, program: String?, who: Who, now: Instant,
        logger: Logger
    ) async throws -> Outcome {
        let target = program ?? "*"
        var outcome = try await run(
            settings: settings, programs: nil, action: "rewards_resume", target: target, who: who,
            now: now, logger: logger, check: .resumeRewards(program: target))
        if who.dryRun { return outcome }
        let db = try await settings.connectDatabase(name: "referrald rewards resume", logger: logger)
        defer { Task { await db.close() } }
        let context = try await DecisionContext.registering(programs, on: db, settings: settings, now: now)
        var after = ""
        while true {
            let cursor = after
            let ids = try await db.qualifiedReferrals(program: target, after: cursor, limit: 200)
            guard let last = ids.last else { break }
            after = last
            for e in try await DecisionStore(db).reconcile(ids, context: context).published {
                outcome.events[e.type.rawValue, default: 0] += 1
            }
        }
        return outcome
    }

    static func canonical(_ text: String) throws -> String {
        guard let code = ReferralCode.parse(text) else {
            throw UsageError(description: "\"\(text)\" is not a referral code")
        }
        return code.canonical
    }

    static func run(
        settings: Settings, programs: ProgramBook?, action: String, target: String, who: Who, now: Instant,
        logger: Logger, check: OperatorCheck
    ) async throws -> Outcome {
        let reason = who.reason.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !reason.isEmpty else {
            throw UsageError(description: "--reason must say why (it is recorded and shown in explain)")
        }
        let db = try await settings.connectDatabase(name: "referrald \(action)", logger: logger)
        defer { Task { await db.close() } }
        // Actions that decide no referral (codes, pauses) need no programs file.
        let context =
            if let programs {
                try await DecisionContext.registering(programs, on: db, settings: settings, now: now)
            } else {
                DecisionContext(
                    programs: ProgramBook(file: "", programs: []), policy: settings.lifecyclePolicy, now: now)
            }
        let record = OperatorAction(
            at: now, actor: who.actor, action: action, target: target, reason: reason, result: "")
        let (result, published) = try await DecisionStore(db).operatorAction(
            record, context: context, dryRun: who.dryRun, check: check)
        var outcome = Outcome(action: action, target: target, result: result, dryRun: who.dryRun)
        for e in published { outcome.events[e.type.rawValue, default: 0] += 1 }
        // The reason is the operator's own text: it goes to the log as they wrote it, which is
        // where the journal of who did what to a customer's referral is read.
        logger.notice(
            "operator action",
            metadata: [
                "action": "\(action)", "target": "\(target)", "actor": "\(who.actor)", "reason": "\(reason)",
                "result": "\(result)", "dry_run": "\(who.dryRun)",
            ])
        return outcome
    }
}
