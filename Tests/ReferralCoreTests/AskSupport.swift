import Testing

@testable import ReferralCore

/// The README's consumer program with its `asks:` section replaced by the one under test.
func askProgram(
    segment: Segment = .consumer, moments: [AskMoment] = AskMoment.allCases, delay: Span = .days(1),
    minGap: Span = .days(30), maxPerYear: Int = 4, periodic: Span = .days(90)
) -> Program {
    var p = consumerProgram(id: segment.rawValue, segment: segment)
    p.asks = .init(
        moments: moments, delayAfterInstall: delay, minGap: minGap, maxPerYear: maxPerYear, periodicEvery: periodic)
    return p
}

/// A valid code per account, derived from its id.
@Sendable func askCode(_ account: String) -> ReferralCode { ReferralCode(randomBits: Enrolment.stableHash(account)) }

func askFact(_ at: Instant, _ kind: AskFact.Kind, account: String = "acct-1") -> AskFact {
    AskFact(accountId: account, at: at, kind: kind)
}

/// An engine for one program, its clock at `start`.
func askEngine(
    _ program: Program = askProgram(), start: Instant = at("2027-01-01T00:00:00Z"),
    freshness: Span = .days(7)
) -> AskEngine {
    AskEngine(programs: [program], start: start, policy: AskPolicy(freshness: freshness), codeFor: askCode)
}

extension AskEngine {
    /// Delivers each fact as it happens (arrival = fact time), in time order, then runs the
    /// clock to `until`.
    mutating func play(_ facts: [AskFact], until end: Instant) {
        for f in facts.sorted(by: { $0.at < $1.at }) { receive(f, at: f.at) }
        advance(to: end)
    }

    func asks(_ account: String = "acct-1") -> [SentAsk] { sent(to: account) }
}
