/// The stored form of an effect (`effects.effect`): the shape Swift's synthesized `Codable`
/// gives it (`{"statusChanged":{"_0":{...}}}`), written and read by our own JSON code, so that
/// the hundreds of effects of a batch do not go through `JSONEncoder`'s and `JSONDecoder`'s
/// generic machinery on the hot path (figures in BENCHMARKS.md).
extension Effect {
    public func storedJSON() -> [UInt8] { JSONValue.object(storedValue).encoded() }

    var storedValue: JSONObject {
        func s(_ v: String) -> JSONValue { .string(v) }
        func n(_ v: Int64) -> JSONValue { .number(JSONNumber(v)) }
        switch self {
        case .codeIssued(let a, let c, let p):
            return ["codeIssued": .object(["accountId": s(a), "code": s(c), "programId": s(p)])]
        case .friendOfferGranted(let r, let l, let c, let priority, let kind, let amount, let currency):
            return [
                "friendOfferGranted": .object([
                    "amountMinor": n(amount), "code": s(c), "currency": s(currency), "kind": s(kind.rawValue),
                    "leadId": s(l), "priorityInstall": .bool(priority), "referralId": s(r),
                ])
            ]
        case .statusChanged(let c):
            var members: [(String, JSONValue)] = []
            if let f = c.friendAccountId { members.append(("friendAccountId", s(f))) }
            if let from = c.from { members.append(("from", s(from.rawValue))) }
            members.append(("leadId", s(c.leadId)))
            if let reason = c.reason { members.append(("reason", s(reason))) }
            members += [
                ("referralId", s(c.referralId)), ("referrerAccountId", s(c.referrerAccountId)),
                ("sequence", n(Int64(c.sequence))), ("to", s(c.to.rawValue)),
            ]
            return ["statusChanged": .object(["_0": .object(JSONObject(members))])]
        case .rewardIssued(let g):
            return ["rewardIssued": .object(["_0": .object(Self.grant(g))])]
        case .rewardRetried(let g, let attempt):
            return ["rewardRetried": .object(["_0": .object(Self.grant(g)), "attempt": n(Int64(attempt))])]
        case .rewardReversed(let r):
            return [
                "rewardReversed": .object([
                    "_0": .object([
                        "accountId": s(r.accountId), "amountMinor": n(r.amountMinor), "currency": s(r.currency),
                        "reason": s(r.reason), "referralId": s(r.referralId), "rewardId": s(r.rewardId),
                    ])
                ])
            ]
        case .rewardApplied(let r):
            return ["rewardApplied": .object(["rewardId": s(r)])]
        case .rewardMismatch(let r, let a, let amount, let currency):
            return [
                "rewardMismatch": .object([
                    "accountId": s(a), "amountMinor": n(amount), "currency": s(currency), "rewardId": s(r),
                ])
            ]
        case .rewardFailed(let r, let failure, let reason, let final):
            return [
                "rewardFailed": .object([
                    "failure": n(Int64(failure)), "final": .bool(final), "reason": s(reason), "rewardId": s(r),
                ])
            ]
        }
    }

    private static func grant(_ g: RewardGrant) -> JSONObject {
        [
            "accountId": .string(g.accountId), "amountMinor": .number(JSONNumber(g.amountMinor)),
            "beneficiary": .string(g.beneficiary.rawValue), "currency": .string(g.currency),
            "kind": .string(g.kind.rawValue),
            "programId": .string(g.programId), "referralId": .string(g.referralId), "rewardId": .string(g.rewardId),
        ]
    }
}

/// A stored effect that cannot be read back: what is wrong and where, never the values (they
/// name customers).
public struct StoredEffectError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

extension Effect {
    /// Reads the stored form back: what `storedJSON` writes, and rows of the same shape written
    /// by `JSONEncoder` (PostgreSQL's `jsonb` output only changes the spacing). Our parser
    /// instead of `JSONDecoder`: every decision reads its referrals' recorded effects, and the
    /// generic decoder would dominate loading them.
    public init(storedJSON bytes: [UInt8]) throws {
        let parsed: JSONValue
        do { parsed = try JSONValue.parse(bytes) } catch {
            throw StoredEffectError(description: "stored effect: \(error)")
        }
        guard let outer = parsed.objectValue, outer.count == 1, let member = outer.members.first,
            let body = member.value.objectValue
        else { throw StoredEffectError(description: "stored effect: not an object with one case") }
        let v = StoredMembers(object: body, path: member.key)
        switch member.key {
        case "codeIssued":
            self = .codeIssued(
                accountId: try v.string("accountId"), code: try v.string("code"), programId: try v.string("programId"))
        case "friendOfferGranted":
            self = .friendOfferGranted(
                referralId: try v.string("referralId"), leadId: try v.string("leadId"),
                code: try v.string("code"), priorityInstall: try v.bool("priorityInstall"),
                kind: try v.raw("kind"), amountMinor: try v.int("amountMinor"),
                currency: try v.string("currency"))
        case "statusChanged":
            let s = try v.object("_0")
            self = .statusChanged(
                StatusChange(
                    referralId: try s.string("referralId"), referrerAccountId: try s.string("referrerAccountId"),
                    leadId: try s.string("leadId"), friendAccountId: try s.optionalString("friendAccountId"),
                    from: try s.optionalString("from").map { try s.rawValue($0, "from") }, to: try s.raw("to"),
                    reason: try s.optionalString("reason"), sequence: Int(try s.int("sequence"))))
        case "rewardIssued":
            self = .rewardIssued(try Self.grant(v.object("_0")))
        case "rewardRetried":
            self = .rewardRetried(try Self.grant(v.object("_0")), attempt: Int(try v.int("attempt")))
        case "rewardReversed":
            let r = try v.object("_0")
            self = .rewardReversed(
                Reversal(
                    rewardId: try r.string("rewardId"), referralId: try r.string("referralId"),
                    accountId: try r.string("accountId"), amountMinor: try r.int("amountMinor"),
                    currency: try r.string("currency"), reason: try r.string("reason")))
        case "rewardApplied":
            self = .rewardApplied(rewardId: try v.string("rewardId"))
        case "rewardMismatch":
            self = .rewardMismatch(
                rewardId: try v.string("rewardId"), accountId: try v.string("accountId"),
                amountMinor: try v.int("amountMinor"), currency: try v.string("currency"))
        case "rewardFailed":
            self = .rewardFailed(
                rewardId: try v.string("rewardId"), failure: Int(try v.int("failure")),
                reason: try v.string("reason"), final: try v.bool("final"))
        default:
            throw StoredEffectError(description: "stored effect: unknown case \(member.key)")
        }
    }

    private static func grant(_ g: StoredMembers) throws -> RewardGrant {
        RewardGrant(
            rewardId: try g.string("rewardId"), referralId: try g.string("referralId"),
            accountId: try g.string("accountId"), beneficiary: try g.raw("beneficiary"), kind: try g.raw("kind"),
            amountMinor: try g.int("amountMinor"), currency: try g.string("currency"),
            programId: try g.string("programId"))
    }
}

/// The members of one object of a stored effect; errors name the path of the member.
private struct StoredMembers {
    let object: JSONObject
    let path: String

    private func missing(_ key: String, _ expected: String) -> StoredEffectError {
        StoredEffectError(description: "stored effect: \(path).\(key) is not \(expected)")
    }

    func string(_ key: String) throws -> String {
        guard let s = object[key]?.stringValue else { throw missing(key, "a string") }
        return s
    }

    /// Absent or null is nil, as the synthesized decoder's `decodeIfPresent` reads it.
    func optionalString(_ key: String) throws -> String? {
        switch object[key] {
        case nil, .null?: return nil
        case .string(let s)?: return s
        default: throw missing(key, "a string or null")
        }
    }

    func int(_ key: String) throws -> Int64 {
        guard case .number(let n)? = object[key], let value = n.int64 else { throw missing(key, "an integer") }
        return value
    }

    func bool(_ key: String) throws -> Bool {
        guard case .bool(let b)? = object[key] else { throw missing(key, "a boolean") }
        return b
    }

    func object(_ key: String) throws -> StoredMembers {
        guard let o = object[key]?.objectValue else { throw missing(key, "an object") }
        return StoredMembers(object: o, path: "\(path).\(key)")
    }

    func raw<T: RawRepresentable>(_ key: String) throws -> T where T.RawValue == String {
        try rawValue(try string(key), key)
    }

    func rawValue<T: RawRepresentable>(_ value: String, _ key: String) throws -> T where T.RawValue == String {
        guard let v = T(rawValue: value) else { throw missing(key, "a known \(T.self)") }
        return v
    }
}
