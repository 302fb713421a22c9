/// The stored form of an effect (`effects.effect`): the shape Swift's synthesized `Codable`
/// gives it (`{"statusChanged":{"_0":{...}}}`), which `JSONDecoder` reads back, written by our
/// own writer. `JSONEncoder` took 6 % of the daemon's time for the 450 effects of a batch.
extension Effect {
    public func storedJSON() -> [UInt8] { JSONValue.object(storedValue).encoded() }

    var storedValue: JSONObject {
        func s(_ v: String) -> JSONValue { .string(v) }
        func n(_ v: Int64) -> JSONValue { .number(JSONNumber(v)) }
        switch self {
        case .codeIssued(let a, let c, let p):
            return ["codeIssued": .object(["accountId": s(a), "code": s(c), "programId": s(p)])]
        case .friendOfferGranted(let r, let l, let c, let priority, let kind, let amount, let currency):
            return ["friendOfferGranted": .object([
                "amountMinor": n(amount), "code": s(c), "currency": s(currency), "kind": s(kind.rawValue),
                "leadId": s(l), "priorityInstall": .bool(priority), "referralId": s(r)])]
        case .statusChanged(let c):
            var members: [(String, JSONValue)] = []
            if let f = c.friendAccountId { members.append(("friendAccountId", s(f))) }
            if let from = c.from { members.append(("from", s(from.rawValue))) }
            members.append(("leadId", s(c.leadId)))
            if let reason = c.reason { members.append(("reason", s(reason))) }
            members += [("referralId", s(c.referralId)), ("referrerAccountId", s(c.referrerAccountId)),
                        ("sequence", n(Int64(c.sequence))), ("to", s(c.to.rawValue))]
            return ["statusChanged": .object(["_0": .object(JSONObject(members))])]
        case .rewardIssued(let g):
            return ["rewardIssued": .object(["_0": .object(Self.grant(g))])]
        case .rewardRetried(let g, let attempt):
            return ["rewardRetried": .object(["_0": .object(Self.grant(g)), "attempt": n(Int64(attempt))])]
        case .rewardReversed(let r):
            return ["rewardReversed": .object(["_0": .object([
                "accountId": s(r.accountId), "amountMinor": n(r.amountMinor), "currency": s(r.currency),
                "reason": s(r.reason), "referralId": s(r.referralId), "rewardId": s(r.rewardId)])])]
        case .rewardApplied(let r):
            return ["rewardApplied": .object(["rewardId": s(r)])]
        case .rewardMismatch(let r, let a, let amount, let currency):
            return ["rewardMismatch": .object([
                "accountId": s(a), "amountMinor": n(amount), "currency": s(currency), "rewardId": s(r)])]
        case .rewardFailed(let r, let failure, let reason, let final):
            return ["rewardFailed": .object([
                "failure": n(Int64(failure)), "final": .bool(final), "reason": s(reason), "rewardId": s(r)])]
        }
    }

    private static func grant(_ g: RewardGrant) -> JSONObject {
        ["accountId": .string(g.accountId), "amountMinor": .number(JSONNumber(g.amountMinor)),
         "beneficiary": .string(g.beneficiary.rawValue), "currency": .string(g.currency), "kind": .string(g.kind.rawValue),
         "programId": .string(g.programId), "referralId": .string(g.referralId), "rewardId": .string(g.rewardId)]
    }
}
