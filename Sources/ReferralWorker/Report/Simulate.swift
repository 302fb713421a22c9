import Foundation
import ReferralCore

/// `referrald simulate`: replays recorded contract events through the pure core under two sets of
/// programs and compares the outcomes. Nothing touches the database or the broker: the input is
/// a file written by `referrald export-events`.
///
/// The file is NDJSON: `referrald.code.snapshot` lines (the codes issued, see `ExportEvents`)
/// followed by the inbox bodies in received order. Both runs replay the same lines in the same
/// order, so the engine numbers referrals identically and per-referral differences line up.
public enum Simulate {
    public static let snapshotType = "referrald.code.snapshot"

    public struct Money: Codable, Sendable, Equatable {
        public var count: Int64 = 0
        public var amountMinor: Int64 = 0
    }

    /// What one replay ended with.
    public struct Outcome: Codable, Sendable, Equatable {
        public var referrals = 0
        public var qualified = 0
        /// By currency.
        public var referrerRewards: [String: Money] = [:]
        public var friendRewards: [String: Money] = [:]
        public var reversed: [String: Money] = [:]
        /// Issued minus reversed, by currency.
        public var netCostMinor: [String: Int64] = [:]
        /// Issued minus reversed by the friend's plan (of their first activation; "none"), then
        /// by currency: what a change of `by_plan` moves.
        public var netCostByPlan: [String: [String: Int64]] = [:]
        public var rejections: [String: Int] = [:]
        public var stages: [String: Int] = [:]
        /// Referral id → qualification time.
        public var qualifiedAt: [String: String] = [:]
    }

    public struct Change: Codable, Sendable, Equatable {
        public var referralId: String
        public var current: String?
        public var candidate: String?
    }

    public struct Comparison: Codable, Sendable, Equatable {
        public var events: Int
        public var replayedUntil: String
        public var current: Outcome
        public var candidate: Outcome
        /// Referrals that qualify under the candidate earlier than under the current programs,
        /// or only under the candidate.
        public var qualifyEarlier: [Change]
        /// Referrals that qualify later, or only under the current programs.
        public var qualifyLater: [Change]
        /// Whether a program pays `by_plan` differently in the candidate: the table then shows
        /// the net cost of each plan under both.
        public var byPlanChanged: Bool
    }

    public struct InputError: Error, CustomStringConvertible {
        public var line: Int
        public var message: String
        public var description: String { "events file line \(line): \(message)" }
    }

    /// A parsed events file: the code snapshot and the events, in file order.
    public struct Stream: Sendable {
        public var codes: [(accountId: String, code: String, programId: String)] = []
        public var events: [InboundEvent] = []

        public init(ndjson text: String) throws {
            for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                if trimmed.isEmpty { continue }
                let bytes = Array(trimmed.utf8)
                guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
                    throw InputError(line: n + 1, message: "not a JSON object")
                }
                if object["type"] as? String == Simulate.snapshotType {
                    guard let a = object["account_id"] as? String, let c = object["code"] as? String,
                        let p = object["program_id"] as? String
                    else {
                        throw InputError(line: n + 1, message: "a code snapshot needs account_id, code and program_id")
                    }
                    codes.append((a, c, p))
                    continue
                }
                switch classify(body: bytes) {
                case .success(let event): events.append(event)
                case .failure(let bad): throw InputError(line: n + 1, message: bad.description)
                }
            }
        }
    }

    /// Replays `stream` under `programs` up to `until` (default: the last event's time); the
    /// events after it are left out.
    ///
    /// The replay clock is the latest envelope time seen so far: the file does not carry arrival
    /// times, and a clock that never runs backwards is what the engine's timers need.
    public static func replay(_ stream: Stream, programs: [Program], until: Instant?) -> Outcome {
        let snapshot = Dictionary(stream.codes.map { ($0.accountId, $0.code) }, uniquingKeysWith: { a, _ in a })
        let start = stream.events.map(\.time).min() ?? Instant(microseconds: 0)
        var engine = ReferralEngine(programs: programs, start: start) { account in
            // An account the snapshot does not know never had a code in production: a code that
            // no lead can carry keeps it from binding anything, as it was.
            snapshot[account] ?? "SIM-\(account)"
        }
        // Codes of accounts whose activation is outside the file are seeded; the others are
        // issued by the engine at their activation, with the production code, as they were.
        let activated = Set(
            stream.events.compactMap { e -> String? in
                if case .serviceActivated(let p) = e.payload { p.accountId } else { nil }
            })
        for c in stream.codes where !activated.contains(c.accountId) {
            engine.seedCode(accountId: c.accountId, code: c.code, programId: c.programId)
        }
        var clock = start
        var plans = FirstPlans()
        for event in stream.events {
            // Replaying "until" a time means the world as it stood then: later events have not
            // happened yet (feeding them would also push the clock past `until`).
            if let until, event.time > until { break }
            clock = max(clock, event.time)
            let facts = event.lifecycleFacts
            plans.add(facts)
            engine.receive(batch: facts, at: clock)
        }
        engine.advance(to: until ?? clock)
        return outcome(engine, plans: plans)
    }

    /// The plan of each account's first activation, as rewards `by_plan` read it (the first by
    /// name when one activation named two).
    struct FirstPlans {
        private var first: [String: (at: Instant, plans: Set<String>)] = [:]

        mutating func add(_ facts: [Fact]) {
            for fact in facts {
                switch fact {
                case .serviceActivated(let a, let at, _, _, _):
                    if first[a].map({ at < $0.at }) ?? true { first[a] = (at, []) }
                case .planChosen(let a, let plan, let at):
                    // A plan fact comes beside its activation, so the activation is known here.
                    if first[a]?.at == at { first[a]?.plans.insert(plan) }
                default:
                    break
                }
            }
        }

        func of(_ account: String?) -> String { account.flatMap { first[$0]?.plans.min() } ?? "none" }
    }

    static func outcome(_ engine: ReferralEngine, plans: FirstPlans) -> Outcome {
        var o = Outcome()
        let views = engine.state().referrals
        let friends = Dictionary(views.map { ($0.referralId, $0.friendAccountId) }, uniquingKeysWith: { a, _ in a })
        func plan(_ referral: String) -> String { plans.of(friends[referral] ?? nil) }
        for p in engine.log {
            switch p.effect {
            case .rewardIssued(let g):
                o.netCostByPlan[plan(g.referralId), default: [:]][g.currency, default: 0] += g.amountMinor
                let key = g.currency
                if g.beneficiary == .referrer {
                    o.referrerRewards[key, default: Money()].count += 1
                    o.referrerRewards[key, default: Money()].amountMinor += g.amountMinor
                } else {
                    o.friendRewards[key, default: Money()].count += 1
                    o.friendRewards[key, default: Money()].amountMinor += g.amountMinor
                }
                o.netCostMinor[key, default: 0] += g.amountMinor
            case .rewardReversed(let r):
                o.reversed[r.currency, default: Money()].count += 1
                o.reversed[r.currency, default: Money()].amountMinor += r.amountMinor
                o.netCostMinor[r.currency, default: 0] -= r.amountMinor
                o.netCostByPlan[plan(r.referralId), default: [:]][r.currency, default: 0] -= r.amountMinor
            default:
                break
            }
        }
        for v in views {
            o.referrals += 1
            o.stages[v.stage.rawValue, default: 0] += 1
            if v.stage == .rejected { o.rejections[v.reason ?? "unspecified", default: 0] += 1 }
            if let q = v.qualifiedAt {
                o.qualified += 1
                o.qualifiedAt[v.referralId] = q.rfc3339
            }
        }
        return o
    }

    public static func compare(_ stream: Stream, current: [Program], candidate: [Program], until: Instant?)
        -> Comparison
    {
        let end = until ?? stream.events.map(\.time).max() ?? Instant(microseconds: 0)
        let a = replay(stream, programs: current, until: end)
        let b = replay(stream, programs: candidate, until: end)
        var earlier: [Change] = []
        var later: [Change] = []
        for id in Set(a.qualifiedAt.keys).union(b.qualifiedAt.keys).sorted(by: referralOrder) {
            let x = a.qualifiedAt[id].flatMap { Instant(rfc3339: $0) }
            let y = b.qualifiedAt[id].flatMap { Instant(rfc3339: $0) }
            let change = Change(referralId: id, current: a.qualifiedAt[id], candidate: b.qualifiedAt[id])
            switch (x, y) {
            case (nil, .some): earlier.append(change)
            case (.some, nil): later.append(change)
            case (let x?, let y?) where y < x: earlier.append(change)
            case (let x?, let y?) where y > x: later.append(change)
            default: break
            }
        }
        let byPlan = { (programs: [Program]) in
            Dictionary(
                programs.map { ($0.id, [$0.referrerReward.byPlan, $0.friendReward.byPlan]) },
                uniquingKeysWith: { a, _ in a })
        }
        return Comparison(
            events: stream.events.count, replayedUntil: end.rfc3339, current: a, candidate: b,
            qualifyEarlier: earlier, qualifyLater: later, byPlanChanged: byPlan(current) != byPlan(candidate))
    }

    /// ref-998 before ref-1001: by number, not by text.
    static func referralOrder(_ a: String, _ b: String) -> Bool {
        let na = Int(a.drop { !$0.isNumber })
        let nb = Int(b.drop { !$0.isNumber })
        return (na ?? 0, a) < (nb ?? 0, b)
    }

    public static func json(_ c: Comparison) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return String(decoding: try! encoder.encode(c), as: UTF8.self) + "\n"
    }

    public static func table(_ c: Comparison) -> String {
        var rows: [[String]] = [["", "current", "candidate", "difference"]]
        func row(_ name: String, _ a: Int64, _ b: Int64, money: Bool = false) {
            let f: (Int64) -> String = money ? { ReportTable.money($0) } : { "\($0)" }
            rows.append([name, f(a), f(b), (b - a > 0 ? "+" : "") + f(b - a)])
        }
        row("referrals", Int64(c.current.referrals), Int64(c.candidate.referrals))
        row("qualified", Int64(c.current.qualified), Int64(c.candidate.qualified))
        let currencies = Set(c.current.netCostMinor.keys).union(c.candidate.netCostMinor.keys).sorted()
        for cur in currencies {
            let (a, b) = (c.current, c.candidate)
            row("referrer rewards", a.referrerRewards[cur]?.count ?? 0, b.referrerRewards[cur]?.count ?? 0)
            row(
                "referrer reward cost \(cur)", a.referrerRewards[cur]?.amountMinor ?? 0,
                b.referrerRewards[cur]?.amountMinor ?? 0, money: true)
            row("friend rewards", a.friendRewards[cur]?.count ?? 0, b.friendRewards[cur]?.count ?? 0)
            row(
                "friend reward cost \(cur)", a.friendRewards[cur]?.amountMinor ?? 0,
                b.friendRewards[cur]?.amountMinor ?? 0, money: true)
            row("reversed \(cur)", a.reversed[cur]?.amountMinor ?? 0, b.reversed[cur]?.amountMinor ?? 0, money: true)
            row("net cost \(cur)", a.netCostMinor[cur] ?? 0, b.netCostMinor[cur] ?? 0, money: true)
        }
        if c.byPlanChanged {
            for plan in Set(c.current.netCostByPlan.keys).union(c.candidate.netCostByPlan.keys).sorted() {
                let (a, b) = (c.current.netCostByPlan[plan] ?? [:], c.candidate.netCostByPlan[plan] ?? [:])
                for cur in Set(a.keys).union(b.keys).sorted() {
                    row("net cost, plan \(plan) \(cur)", a[cur] ?? 0, b[cur] ?? 0, money: true)
                }
            }
        }
        for reason in Set(c.current.rejections.keys).union(c.candidate.rejections.keys).sorted() {
            row(
                "rejected: \(reason)", Int64(c.current.rejections[reason] ?? 0),
                Int64(c.candidate.rejections[reason] ?? 0))
        }
        var out = "Replayed \(c.events) events until \(c.replayedUntil)\n" + ReportTable.rows(rows)
        func list(_ title: String, _ changes: [Change]) {
            guard !changes.isEmpty else { return }
            out += "\n\(title) (\(changes.count))\n"
            out += ReportTable.rows(
                [["referral", "current", "candidate"]]
                    + changes.map { [$0.referralId, $0.current ?? "not qualified", $0.candidate ?? "not qualified"] })
        }
        list("Qualify earlier under the candidate", c.qualifyEarlier)
        list("Qualify later under the candidate", c.qualifyLater)
        return out
    }
}
