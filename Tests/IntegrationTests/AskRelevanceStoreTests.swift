import Postgres
import ReferralCore
import ReferralStore
import ReferralTestKit
import Testing

/// `AskStore.loadRelevantAskFacts` selects exactly the facts `ReferralAsks.relevantFacts` keeps
/// (whose equivalence with all facts the core's AskRelevanceTests check), on three-year
/// histories, and in year three reads a small share of the account's facts.
@Suite(.tearsDownTestBeds) struct AskRelevanceStoreTests {
    static let base = Instant(rfc3339: "2029-01-01T00:00:00Z")!

    static func history(_ id: String, daily: Bool, _ rng: inout SeededGenerator) -> [AskFact] {
        var facts: [AskFact] = []
        func add(_ t: Instant, _ kind: AskFact.Kind) { facts.append(AskFact(accountId: id, at: t, kind: kind)) }
        add(base, .serviceActivated(segment: .consumer))
        add(base - .days(1), .installCompleted)
        var t = base
        while t < base + .days(1095) {
            t = t + (daily ? .days(1) : rng.days(3, 30))
            add(t, .speedTest(measuredDownMbps: Double.random(in: 380...520, using: &rng), planDownMbps: 500))
        }
        for month in 0..<36 {
            let due = base + .days(Int64(month) * 30)
            if rng.chance(0.15) {
                add(due, .invoiceOverdue(invoiceId: "inv-\(month)"))
                if rng.chance(0.3) { continue }
            }
            add(
                due + rng.days(0, 25),
                .invoicePaid(invoiceId: "inv-\(month)", creditsMinor: rng.chance(0.2) ? 500 : nil))
        }
        for k in 0..<8 {
            let opened = base + rng.days(0, 1095)
            add(opened, .ticketOpened(ticketId: "tkt-\(k)"))
            if rng.chance(0.8) {
                add(opened + rng.days(0, 20), .ticketResolved(ticketId: "tkt-\(k)", csat: rng.chance(0.5) ? 5 : 2))
            }
        }
        for _ in 0..<5 { add(base + rng.days(0, 1095), .preferencesChanged(referralPrompts: rng.chance(0.5))) }
        return facts
    }

    static func sorted(_ facts: [AskFact]) -> [String] { facts.map { "\($0.at.rfc3339) \($0.kind)" }.sorted() }

    @Test func selectsWhatTheCoreKeepsAndNoOldSpeedTests() async throws {
        let bed = try await TestBed.make()
        var rng = SeededGenerator(state: 2026)
        let accounts = (0..<12).map { "acct-rel-\($0)" }
        let histories = Dictionary(
            uniqueKeysWithValues: accounts.enumerated().map { i, id in
                (id, Self.history(id, daily: i % 2 == 0, &rng))
            })
        try await bed.db.transaction { c in try AskStore.insertAskFacts(c, histories.values.flatMap { $0 }) }
        let freshness = AskPolicy().freshness
        var read = 0
        var stored = 0
        // Moments across the three years (the selection must match the core's anywhere), the
        // read share counted at the last ones only, in year three, when all history lies behind.
        for i in 0..<14 {
            let late = i >= 10
            let now = Self.base + (late ? rng.days(1090, 1100) : rng.days(0, 1100))
            let windowed = try await bed.db.run { c in
                try AskStore.loadRelevantAskFacts(c, accounts: accounts, now: now, freshness: freshness)
            }
            for id in accounts {
                let expected = ReferralAsks.relevantFacts(histories[id]!, now: now, freshness: freshness)
                #expect(Self.sorted(windowed[id] ?? []) == Self.sorted(expected), "\(id) at \(now.rfc3339)")
                if late {
                    read += windowed[id]?.count ?? 0
                    stored += histories[id]!.count
                }
            }
        }
        print(
            "ask facts in year three: \(read) of \(stored) read (4 moments, 12 accounts, 6 of them with a daily speed test)"
        )
        #expect(read * 10 < stored)
    }
}

extension SeededGenerator {
    fileprivate mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
    fileprivate mutating func days(_ lo: Int64, _ hi: Int64) -> Span {
        Span(microseconds: Int64.random(in: lo * 86_400_000_000...hi * 86_400_000_000, using: &self))
    }
}
