import Testing

@testable import ReferralCore

@Suite struct InstantTests {
    @Test func parsesAndFormatsUTC() throws {
        let t = try #require(Instant(rfc3339: "2026-11-23T10:31:07Z"))
        #expect(t.microseconds == 1_795_429_867_000_000)
        #expect(t.rfc3339 == "2026-11-23T10:31:07Z")
    }

    @Test func offsetsAreNormalisedToUTC() throws {
        let local = try #require(Instant(rfc3339: "2026-12-03T11:20:00-05:00"))
        #expect(local.rfc3339 == "2026-12-03T16:20:00Z")
    }

    @Test func fractionsKeepMicroseconds() throws {
        let t = try #require(Instant(rfc3339: "2026-11-23T10:31:07.1234567z"))
        #expect(t.microseconds % 1_000_000 == 123_456)
        #expect(t.rfc3339 == "2026-11-23T10:31:07.123456Z")
    }

    /// Formatting writes its digits by position: small fields and fractions keep their leading
    /// zeros, and every instant from year 1 to 9999 reads back as itself.
    @Test func formatsEveryFieldWithItsZerosAndReadsBack() throws {
        let early = try #require(Instant(rfc3339: "0001-01-01T00:00:00.000001Z"))
        #expect(early.rfc3339 == "0001-01-01T00:00:00.000001Z")
        #expect(Instant.earliestStorable.rfc3339 == "0001-01-01T00:00:00Z")
        var rng = SystemRandomNumberGenerator()
        let last = try #require(Instant(rfc3339: "9999-12-31T23:59:59.999999Z")).microseconds
        for _ in 0..<2_000 {
            let t = Instant(microseconds: Int64.random(in: Instant.earliestStorable.microseconds...last, using: &rng))
            let text = t.rfc3339
            #expect(text.utf8.count == (t.microseconds % 1_000_000 == 0 ? 20 : 27))
            #expect(Instant(rfc3339: text) == t, "\(text)")
        }
    }

    @Test(arguments: [
        "2026-11-23 10:31:07", "2026-02-30T00:00:00Z", "2026-11-23T24:00:00Z",
        "2026-11-23T10:31:07", "2026-11-23T10:31:07.Z", "2026-11-23T10:31:07Z ", "",
    ])
    func rejectsMalformed(_ text: String) {
        #expect(Instant(rfc3339: text) == nil)
    }

    @Test func spansNeedAUnit() {
        #expect(Span("45s") == .seconds(45))
        #expect(Span("10m") == .minutes(10))
        #expect(Span("36h") == .hours(36))
        #expect(Span("30d") == .days(30))
        #expect(Span("30") == nil)
        #expect(Span("-1d") == nil)
        #expect(Span("3w") == nil)
        #expect(Span.days(30).description == "30d")
        #expect(Span.seconds(90).description == "90s")
    }
}
