import Postgres
import ReferralCore

/// One operator action as recorded in `operator_actions`.
public struct OperatorAction: Sendable, Equatable {
    public var at: Instant
    public var actor: String
    /// `code_block`, `code_unblock`, `referral_reject`, `reward_reverse`, `rewards_pause`, `rewards_resume`.
    public var action: String
    /// The code, referral id, reward id or program id (`*`: every program) acted on.
    public var target: String
    public var reason: String
    /// What came of it: `applied`, or `no-op: ...` saying why nothing changed.
    public var result: String

    public init(at: Instant, actor: String, action: String, target: String, reason: String, result: String) {
        self.at = at
        self.actor = actor
        self.action = action
        self.target = target
        self.reason = reason
        self.result = result
    }
}

/// The state operators change (blocked codes, paused programs) and their audit trail.
public enum OperatorStore {
    public static func recordOperatorAction(_ c: isolated PostgresConnection, _ a: OperatorAction) throws {
        try c.execute(
            """
            INSERT INTO operator_actions (at, actor, action, target, reason, result) VALUES ($1, $2, $3, $4, $5, $6)
            """,
            [.text(a.at.rfc3339), .text(a.actor), .text(a.action), .text(a.target), .text(a.reason), .text(a.result)])
    }

    /// The actions on any of these targets, oldest first (`explain`).
    public static func actions(_ c: isolated PostgresConnection, targets: [String]) throws -> [OperatorAction] {
        try c.query(
            """
            SELECT at, actor, action, target, reason, result FROM operator_actions
            WHERE target = ANY($1::text[]) ORDER BY at, id
            """, [.textArray(targets)]
        ).map {
            OperatorAction(
                at: try instant($0, "at"), actor: try $0.decode("actor", as: String.self),
                action: try $0.decode("action", as: String.self), target: try $0.decode("target", as: String.self),
                reason: try $0.decode("reason", as: String.self), result: try $0.decode("result", as: String.self))
        }
    }

    /// Blocks a code; false when it was blocked already.
    public static func blockCode(_ c: isolated PostgresConnection, _ code: String, at: Instant) throws -> Bool {
        try c.execute(
            "INSERT INTO blocked_codes (code, blocked_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [.text(code), .text(at.rfc3339)]) == 1
    }

    /// Unblocks a code; false when it was not blocked.
    public static func unblockCode(_ c: isolated PostgresConnection, _ code: String) throws -> Bool {
        try c.execute("DELETE FROM blocked_codes WHERE code = $1", [.text(code)]) == 1
    }

    public static func codeExists(_ c: isolated PostgresConnection, _ code: String) throws -> Bool {
        try !c.query("SELECT 1 FROM referral_codes WHERE code = $1", [.text(code)]).isEmpty
    }

    /// The codes among these that are blocked.
    static func blockedCodes(_ c: isolated PostgresConnection, _ codes: [String]) throws -> Set<String> {
        Set(
            try c.query("SELECT code FROM blocked_codes WHERE code = ANY($1::text[])", [.textArray(codes)])
                .map { try $0.decode("code", as: String.self) })
    }

    /// Pauses a program's rewards (`*`: all); false when it was paused already. The INSERT
    /// waits for the decisions in flight, which hold `reward_pauses` in SHARE mode.
    public static func pauseRewards(_ c: isolated PostgresConnection, program: String, at: Instant) throws -> Bool {
        try c.execute(
            "INSERT INTO reward_pauses (program_id, paused_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [.text(program), .text(at.rfc3339)]) == 1
    }

    /// Resumes a program's rewards; false when it was not paused.
    public static func resumeRewards(_ c: isolated PostgresConnection, program: String) throws -> Bool {
        try c.execute("DELETE FROM reward_pauses WHERE program_id = $1", [.text(program)]) == 1
    }

    /// The paused programs, read by every decision under a SHARE lock on the table: a pause
    /// committing meanwhile waits for this transaction, so a reward issued here was issued
    /// before the pause took effect, never after `rewards pause` returned.
    static func pausedPrograms(_ c: isolated PostgresConnection) throws -> Set<String> {
        try c.executeDeferred("LOCK TABLE reward_pauses IN SHARE MODE")
        return Set(
            try c.query("SELECT program_id FROM reward_pauses").map { try $0.decode("program_id", as: String.self) })
    }

    /// Every pause with its start, for the metric and `rewards pause`'s report.
    public static func rewardPauses(_ c: isolated PostgresConnection) throws -> [(programId: String, since: Instant)] {
        try c.query("SELECT program_id, paused_at FROM reward_pauses ORDER BY program_id").map {
            (try $0.decode("program_id", as: String.self), try instant($0, "paused_at"))
        }
    }

    /// A referral's lead, program and published stage, for the operator commands' checks.
    public static func referralForOperator(_ c: isolated PostgresConnection, _ referralId: String)
        throws -> (leadId: String, programId: String, stage: String, rewards: [String])?
    {
        guard
            let row = try c.query(
                "SELECT lead_id, program_id, stage FROM referrals WHERE referral_id = $1",
                [.text(referralId)]
            ).first
        else { return nil }
        let rewards = try c.query(
            "SELECT reward_id FROM rewards WHERE referral_id = $1 ORDER BY reward_id", [.text(referralId)]
        )
        .map { try $0.decode("reward_id", as: String.self) }
        return (
            try row.decode("lead_id", as: String.self), try row.decode("program_id", as: String.self),
            try row.decode("stage", as: String.self), rewards
        )
    }

    /// A reward's referral and ledger state (`issued`, `applied`, `failed`, `reversed`).
    public static func rewardForOperator(_ c: isolated PostgresConnection, _ rewardId: String)
        throws -> (referralId: String, state: String)?
    {
        try c.query("SELECT referral_id, state FROM rewards WHERE reward_id = $1", [.text(rewardId)]).first.map {
            (try $0.decode("referral_id", as: String.self), try $0.decode("state", as: String.self))
        }
    }

    /// Referrals waiting at `qualified` (rewards held by a pause) of a program (`*`: any),
    /// after `after` in id order: what `rewards resume` re-decides.
    public static func qualifiedReferrals(
        _ c: isolated PostgresConnection, program: String, after: String,
        limit: Int
    ) throws -> [String] {
        try c.query(
            """
            SELECT referral_id FROM referrals
            WHERE stage = 'qualified' AND ($1 = '*' OR program_id = $1) AND referral_id > $2
            ORDER BY referral_id LIMIT $3
            """, [.text(program), .text(after), .int(Int64(limit))]
        ).map { try $0.decode("referral_id", as: String.self) }
    }
}

/// What an operator action reads before it acts, inside the action's transaction: whether there
/// is anything to do (a second run is a recorded no-op), and which facts and referrals to decide.
public enum OperatorCheck: Sendable {
    case blockCode(String)
    case unblockCode(String)
    case rejectReferral(String)
    case reverseReward(String)
    /// `*`: every program.
    case pauseRewards(program: String)
    case resumeRewards(program: String)

    func plan(_ c: isolated PostgresConnection, now: Instant) throws -> OperatorPlan {
        switch self {
        case .blockCode(let code):
            guard try OperatorStore.codeExists(c, code) else {
                return OperatorPlan(result: "no-op: no such code was issued")
            }
            return OperatorPlan(
                result: try OperatorStore.blockCode(c, code, at: now) ? "applied" : "no-op: already blocked")
        case .unblockCode(let code):
            return OperatorPlan(result: try OperatorStore.unblockCode(c, code) ? "applied" : "no-op: not blocked")
        case .rejectReferral(let referralId):
            guard let r = try OperatorStore.referralForOperator(c, referralId) else {
                return OperatorPlan(result: "no-op: no such referral")
            }
            if let stage = Stage(rawValue: r.stage), stage.isEnd {
                return OperatorPlan(result: "no-op: already ended (\(stage.rawValue))")
            }
            return OperatorPlan(
                result: "applied", facts: [.operatorRejected(leadId: r.leadId, at: now)], referrals: [referralId])
        case .reverseReward(let rewardId):
            guard let w = try OperatorStore.rewardForOperator(c, rewardId) else {
                return OperatorPlan(
                    result: "no-op: no such reward issued (one not issued yet is stopped with `referral reject`)")
            }
            if w.state == "reversed" { return OperatorPlan(result: "no-op: already reversed") }
            return OperatorPlan(
                result: "applied", facts: [.operatorReversed(rewardId: rewardId, at: now)], referrals: [w.referralId])
        case .pauseRewards(let program):
            return OperatorPlan(
                result: try OperatorStore.pauseRewards(c, program: program, at: now)
                    ? "applied" : "no-op: already paused")
        case .resumeRewards(let program):
            return OperatorPlan(
                result: try OperatorStore.resumeRewards(c, program: program) ? "applied" : "no-op: not paused")
        }
    }
}

extension Database {
    /// Referrals of `program` (`*`: any) held at `qualified`, after `after` in id order, for
    /// `rewards resume` to re-decide a chunk at a time.
    public func qualifiedReferrals(program: String, after: String, limit: Int) async throws -> [String] {
        try await run { c in try OperatorStore.qualifiedReferrals(c, program: program, after: after, limit: limit) }
    }
}
