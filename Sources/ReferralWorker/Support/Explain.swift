import Logging
import ReferralCore
import ReferralStore

/// `referrald explain`: for support staff, each referral's history and the rule, inputs and
/// times that decided it — "why didn't I get my reward?" answered from the same decision
/// function the worker runs, over the same stored facts.
public enum Explain {
    public static func run(settings: Settings, id: String, now: Instant, logger: Logger) async throws -> String {
        let db = try await settings.connectDatabase(name: "referrald explain", logger: logger)
        defer { Task { await db.close() } }
        return try await render(db, id: id, now: now)
    }

    public static func render(_ db: Database, id: String, now: Instant) async throws -> String {
        let (views, history, actions) = try await db.explain(id, now: now)
        if views.isEmpty {
            return "no referral found for \(id) (a referral id, or an account that referred or was referred)\n"
        }
        return views.map { view in
            text(
                view, history: history.filter { $0.1.referralId == view.referralId },
                actions: actions[view.referralId] ?? [])
        }.joined(separator: "\n")
    }

    static func text(_ v: ReferralView, history: [(Instant, Effect)], actions: [OperatorAction] = []) -> String {
        var out = "referral \(v.referralId): \(v.stage.rawValue)\(v.reason.map { " (\($0))" } ?? "")\n"
        out +=
            "  referrer \(v.referrerAccountId), friend \(v.friendAccountId ?? "not yet an account"), lead \(v.leadId)\n"
        out += "  program \(v.programId) version \(v.programVersion)\n"
        out += "  decided by \(v.rule): \(v.explanation)\n"
        if let q = v.qualifiedAt { out += "  qualified at \(q.rfc3339)\n" }
        if !v.inputs.isEmpty {
            out += "  inputs:\n"
            for i in v.inputs { out += "    \(i.name): \(i.value)\n" }
        }
        if !v.rewards.isEmpty {
            out += "  rewards:\n"
            for r in v.rewards {
                out +=
                    "    \(r.rewardId)  \(r.beneficiary.rawValue) \(r.accountId)  \(r.amountMinor) \(r.currency)  \(r.status.rawValue)"
                out += (r.note.map { "  (\($0))" } ?? "") + "\n"
            }
        }
        if !history.isEmpty {
            out += "  history:\n"
            for (at, effect) in history { out += "    \(at.rfc3339)  \(describe(effect))\n" }
        }
        if !actions.isEmpty {
            out += "  operator actions:\n"
            for a in actions {
                out += "    \(a.at.rfc3339)  \(a.actor): \(a.action) \(a.target): \(a.reason) (\(a.result))\n"
            }
        }
        return out
    }

    static func describe(_ e: Effect) -> String {
        switch e {
        case .codeIssued(let a, let code, _): return "code \(code) issued to \(a)"
        case .friendOfferGranted(_, _, _, let priority, let kind, let amount, let currency):
            return "friend offer granted: \(amount) \(currency) \(kind.rawValue)\(priority ? ", priority install" : "")"
        case .statusChanged(let s):
            return "stage \(s.from?.rawValue ?? "(new)") -> \(s.to.rawValue)\(s.reason.map { " (\($0))" } ?? "")"
        case .rewardIssued(let g):
            return
                "reward \(g.rewardId) issued: \(g.amountMinor) \(g.currency) to \(g.beneficiary.rawValue) \(g.accountId)"
        case .rewardRetried(let g, let n): return "reward \(g.rewardId) re-issued (attempt \(n + 1))"
        case .rewardReversed(let r): return "reward \(r.rewardId) reversed: \(r.reason)"
        case .rewardApplied(let id): return "reward \(id) applied by billing"
        case .rewardMismatch(let id, let a, let m, let c):
            return "reward \(id): billing applied \(m) \(c) to \(a), which differs: not applied"
        case .rewardFailed(let id, let n, let reason, let final):
            return "reward \(id) rejected by billing (\(n)): \(reason)\(final ? ", no more retries" : "")"
        }
    }
}
