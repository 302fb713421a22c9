import Testing

@testable import ReferralCore

@Suite("Enrolment")
struct AskEnrolmentTests {
    let start = at("2027-02-01T00:00:00Z")
    let span = Span.days(30)

    @Test("the first ask is deterministic and inside the period")
    func deterministic() {
        for i in 0..<1000 {
            let id = "acct-\(i)"
            let t = Enrolment.firstAskInstant(accountId: id, start: start, span: span)
            #expect(t == Enrolment.firstAskInstant(accountId: id, start: start, span: span))
            #expect(t >= start && t < start + span)
        }
        #expect(Enrolment.firstAskInstant(accountId: "acct-1", start: start, span: .seconds(0)) == start)
        // Pinned (computed independently), so that a change of hash, which would move every
        // enrolled customer's schedule and ask keys on a re-run, is noticed.
        #expect(Enrolment.stableHash("acct-1002") == 0x9A79_3BB1_0168_E0C6)
        #expect(
            Enrolment.firstAskInstant(accountId: "acct-1002", start: start, span: span)
                == at("2027-02-19T02:27:24.866572Z"))
        #expect(
            Enrolment.firstAskInstant(accountId: "acct-1002", start: start, span: span)
                != Enrolment.firstAskInstant(accountId: "acct-1003", start: start, span: span))
    }

    @Test("100,000 sequential ids spread uniformly over the period")
    func uniform() {
        let buckets = 100
        var counts = [Int](repeating: 0, count: buckets)
        let n = 100_000
        for i in 0..<n {
            let t = Enrolment.firstAskInstant(accountId: "acct-\(1_000_000 + i)", start: start, span: span)
            counts[Int((t - start).microseconds * Int64(buckets) / span.microseconds)] += 1
        }
        // Expected 1,000 per bucket, standard deviation about 31: ±15 % is about five of them.
        let expected = n / buckets
        #expect(counts.allSatisfy { abs($0 - expected) <= expected * 15 / 100 }, "\(counts.min()!)...\(counts.max()!)")
        // And no minute holds a crowd: the busiest minute of a 30-day spread has a handful.
        var perMinute: [Int64: Int] = [:]
        for i in 0..<n {
            let t = Enrolment.firstAskInstant(accountId: "acct-\(1_000_000 + i)", start: start, span: span)
            perMinute[(t - start).microseconds / 60_000_000, default: 0] += 1
        }
        #expect(perMinute.values.max()! <= 12)
    }

    @Test("enrolment facts: the periodic ask starts at the spread instant, not a year-old activation's grid")
    func enrolledFirstAsk() {
        let row = EnrolmentRow(
            line: 2, accountId: "acct-42", segment: .consumer, activatedAt: at("2024-05-01T00:00:00Z"),
            householdId: nil, contactHash: nil)
        let facts = row.askFacts(start: start, span: span)
        #expect(facts == row.askFacts(start: start, span: span), "a re-run stores the same facts")
        let first = Enrolment.firstAskInstant(accountId: "acct-42", start: start, span: span)
        var engine = askEngine(askProgram(), start: start)
        engine.receive(facts, at: start)
        engine.advance(to: start + .days(40))
        #expect(engine.asks("acct-42").map(\.sentAt) == [first])
        #expect(engine.asks("acct-42").map(\.moment) == [.periodic])
    }

    @Test("a valid file, columns in any order, quotes and empty optional fields")
    func parsesGoodFile() throws {
        let csv =
            "segment,account_id,activated_at,household_id,contact_hash\r\n"
            + "consumer,acct-1,2026-11-23T10:31:07Z,hh-1,sha256:ab\r\n"
            + "business,\"acct,2\",2026-11-23T10:31:07-05:00,,\r\n"
            + "\n"
            + "consumer,\"a \"\"quoted\"\" id\",2026-01-01T00:00:00Z,,c-3\n"
        let (rows, errors) = Enrolment.parseCSV(csv)
        #expect(errors.isEmpty)
        #expect(rows.map(\.accountId) == ["acct-1", "acct,2", "a \"quoted\" id"])
        #expect(rows.map(\.line) == [2, 3, 5])
        #expect(rows[1].segment == .business)
        #expect(rows[1].activatedAt == at("2026-11-23T15:31:07Z"))
        #expect(rows[1].householdId == nil)
        #expect(rows[2].contactHash == "c-3")
        #expect(
            rows[0].fact
                == .serviceActivated(
                    accountId: "acct-1", at: at("2026-11-23T10:31:07Z"), householdId: "hh-1",
                    contactHash: "sha256:ab", segment: .consumer))
    }

    @Test("bad rows are reported with line and field and never half applied")
    func reportsBadRows() {
        let csv = """
            account_id,segment,activated_at,contact_hash
            acct-1,consumer,2026-11-23T10:31:07Z,c-1
            acct-2,Consumer,2026-11-23T10:31:07Z,c-2
            acct-3,consumer,2026-11-23 10:31:07,c-3
            acct-4,consumer,2026-11-23T10:31:07Z,c-4\u{7}
            ,consumer,2026-11-23T10:31:07Z,
            acct-6,consumer,2026-11-23T10:31:07Z
            acct-1,business,2026-11-24T10:31:07Z,
            "acct-8,consumer,2026-11-23T10:31:07Z,
            acct-9 ,consumer,2026-11-23T10:31:07Z,
            acct-10,consumer,2026-11-23T10:31:07Z,
            """
        let (rows, errors) = Enrolment.parseCSV(csv)
        #expect(rows.map(\.accountId) == ["acct-1", "acct-10"])
        #expect(errors.map(\.line) == [3, 4, 5, 6, 7, 8, 9, 10])
        #expect(
            errors.map(\.field) == [
                "segment", "activated_at", "contact_hash", "account_id", nil, "account_id", nil, "account_id",
            ])
        #expect(errors[5].description == "line 8, account_id: account already listed on line 2")
        #expect(errors[6].reason == "unterminated quote")
        #expect(errors[1].description.hasPrefix("line 4, activated_at: "))
    }

    @Test(
        "header problems: missing, unknown or repeated columns, empty file",
        arguments: [
            ("account_id,segment\nacct-1,consumer\n", "activated_at", "required column missing from the header"),
            ("account_id,segment,activated_at,contact_hsh\n", "contact_hsh", "unknown column"),
            ("account_id,segment,activated_at,segment\n", "segment", "column listed twice"),
            ("acct-1,consumer,2026-11-23T10:31:07Z\n", "acct-1", "unknown column"),
        ])
    func headerErrors(csv: String, field: String, reason: String) {
        let (rows, errors) = Enrolment.parseCSV(csv)
        #expect(rows.isEmpty)
        #expect(errors == [EnrolmentError(line: 1, field: field, reason: reason)])
    }

    @Test("an empty file has no header")
    func emptyFile() {
        #expect(Enrolment.parseCSV("").errors.map(\.line) == [1])
    }
}
