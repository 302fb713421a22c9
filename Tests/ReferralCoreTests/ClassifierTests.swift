import Foundation
import Testing

@testable import ReferralCore

@Suite struct ClassifierTests {
    @Test(arguments: ConsumedType.allCases)
    func everyOwnValidFixtureClassifiesAsItsType(type: ConsumedType) throws {
        let event = try classify(body: Fixtures.consumed(type)).get()
        #expect(event.type == type)
        #expect(event.source.isEmpty == false)
    }

    @Test func everyOwnInvalidFixtureGetsItsCodeAndNamesItsField() throws {
        let manifest = try Fixtures.invalidManifest()
        #expect(manifest.count >= 50)
        #expect(
            Set(manifest.map(\.code)) == Set(BadInputCode.allCases.map(\.rawValue)).subtracting(["processing_failed"]))
        for entry in manifest {
            let result = classify(body: try Fixtures.bytes("invalid/\(entry.name)"))
            guard case .failure(let bad) = result else {
                Issue.record("\(entry.name): accepted")
                continue
            }
            #expect(bad.code.rawValue == entry.code, "\(entry.name): \(bad)")
            if let field = entry.field {
                #expect(bad.detail.hasPrefix(field + ": "), "\(entry.name): \(bad.detail)")
            }
            #expect(isHeaderSafe(bad.detail), "\(entry.name): \(bad.detail)")
        }
    }

    /// Details read as the contract's README asks: `<field>: <reason>`, or the size or parse error.
    @Test(arguments: [
        ("invalid_data-amount-fraction.json", "data.amount_minor: expected an integer, got a number"),
        ("invalid_data-amount-null.json", "data.amount_minor: expected an integer, got null"),
        (
            "invalid_data-amount-over-2-53.json",
            "data.amount_minor: 9007199254740992 is above the maximum 9007199254740991"
        ),
        ("invalid_data-amount-huge.json", "data.amount_minor: 1e30 is out of range"),
        (
            "invalid_data-currency-newline.json",
            "data.currency: \"EUR\\u{A}\" is not an upper-case ISO 4217 code ([A-Z]{3})"
        ),
        ("invalid_data-id-129.json", "id: 129 characters, longer than 128"),
        ("invalid_data-id-tab.json", "id: character 4 is \"\\u{9}\", outside U+0020-U+007E"),
        ("invalid_data-source-space.json", "source: character 8 is \" \", outside U+0021-U+007E"),
        ("invalid_data-time-feb-30.json", "time: \"2027-02-30T06:00:00Z\" is not an RFC 3339 date-time with an offset"),
        ("invalid_data-subject-null.json", "subject: expected a string, got null"),
        ("invalid_data-no-data.json", "data: missing"),
        ("invalid_data-data-array.json", "data: expected an object, got an array"),
        ("invalid_data-segment.json", "data.segment: \"enterprise\" is not one of consumer, business"),
        (
            "invalid_data-household-non-ascii.json",
            "data.household_id: character 5 is \"\\u{E9}\", outside U+0020-U+007E"
        ),
        ("invalid_data-csat-6.json", "data.csat: 6 is above the maximum 5"),
        ("invalid_data-plan-zero.json", "data.plan_down_mbps: 0 is not above 0.0"),
        ("invalid_data-measured-infinite.json", "data.measured_down_mbps: 1e400 is out of range"),
        ("not_cloudevent-string.json", "(root): expected a JSON object, got a string"),
        ("not_cloudevent-no-specversion.json", "specversion: missing"),
        ("not_cloudevent-id-number.json", "id: expected a non-empty string, got an integer"),
        ("not_cloudevent-empty-source.json", "source: empty string"),
        ("unsupported_specversion-1.1.json", "specversion: expected \"1.0\", got \"1.1\""),
        ("unsupported_specversion-number.json", "specversion: expected \"1.0\", got an integer"),
        ("unknown_type-voided.json", "type: \"billing.invoice.voided\" is not a consumed type"),
        ("not_json-nan.json", "'N' where a value was expected at byte 304"),
        ("not_json-bom.json", "byte-order mark before the JSON value at byte 0"),
        ("not_json-whitespace-only.json", "no JSON value, only whitespace at byte 4"),
        ("not_json-duplicate-key.json", "duplicate object key \"currency\" at byte 349"),
        ("not_json-nesting-65.json", "nesting deeper than 64 levels at byte 447"),
    ])
    func detailsNameTheFieldAndTheReason(file: String, detail: String) throws {
        let result = classify(body: try Fixtures.bytes("invalid/\(file)"))
        #expect(result.failure?.detail == detail)
    }

    /// The contract's "Bad input": `too_large` is the size check alone. A ticket whose
    /// description fills the body up to the limit is an event; one byte more is `too_large`.
    @Test func aLongFreeTextIsAnEventUpToTheSizeLimit() throws {
        let tooLarge = try Fixtures.bytes("invalid/too_large-long-description.json")
        #expect(tooLarge.count == 262_145)
        #expect(classify(body: tooLarge).failure?.code == .tooLarge)
        // The same event one byte shorter: 262,144 bytes, a 262 KB string in one member.
        var atLimit = tooLarge
        atLimit.remove(at: atLimit.firstIndex(of: UInt8(ascii: "x"))!)
        #expect((try? classify(body: atLimit).get())?.type == .ticketOpened)
    }

    /// Values that are valid JSON and valid for the contract but that PostgreSQL cannot hold:
    /// each failed its batch on every delivery until it was dead-lettered `processing_failed`.
    @Test func valuesTheStoreCannotHoldAreMendedOrRefusedOnce() throws {
        func event(_ type: String, _ data: String, time: String = "2027-04-22T06:00:01Z") -> [UInt8] {
            Array(
                #"{"specversion":"1.0","id":"e-1","source":"billing","type":"\#(type)","time":"\#(time)","data":{\#(data)}}"#
                    .utf8)
        }
        // Free text: the NUL is replaced, the event kept (a cancellation must never be lost).
        let rejected = try classify(
            body: event("billing.credit.rejected", #""reward_id":"rwd-1-friend","reason":"closed\u0000account""#)
        ).get()
        guard case .creditRejected(let r) = rejected.payload else {
            Issue.record("\(rejected.payload)")
            return
        }
        #expect(r.reason == "closed\u{FFFD}account")
        let cancelled = try classify(
            body: event(
                "provisioning.service.cancelled",
                #""account_id":"a-1","cancelled_at":"2027-04-22T06:00:00Z","reason":"\u0000""#)
        ).get()
        guard case .serviceCancelled(let c) = cancelled.payload else {
            Issue.record("\(cancelled.payload)")
            return
        }
        #expect(c.reason == "\u{FFFD}")
        // A sequence past int4 is an invoice like any other.
        let paid = try classify(
            body: event(
                "billing.invoice.paid",
                #""account_id":"a-1","invoice_id":"i-1","amount_minor":100,"currency":"USD","sequence":3000000000"#)
        ).get()
        guard case .invoicePaid(let p) = paid.payload else {
            Issue.record("\(paid.payload)")
            return
        }
        #expect(p.sequence == 3_000_000_000)
        // Year 0000 is RFC 3339 but no store holds it: refused once, with the reason.
        let year0 = classify(
            body: event("provisioning.service.cancelled", #""account_id":"a-1","cancelled_at":"0000-06-01T00:00:00Z""#))
        #expect(
            year0.failure
                == BadInput(
                    code: .invalidData,
                    detail:
                        "data.cancelled_at: \"0000-06-01T00:00:00Z\" is before 0001-01-01T00:00:00Z, the earliest time that can be stored"
                ))
        #expect(
            classify(
                body: event(
                    "provisioning.service.cancelled", #""account_id":"a-1","cancelled_at":"2027-01-01T00:00:00Z""#,
                    time: "0001-01-01T00:30:00+01:00")
            ).failure?.code == .invalidData)
    }

    @Test func emptyAndOversizedBodies() {
        #expect(classify(body: []).failure == BadInput(code: .notJSON, detail: "empty document at byte 0"))
        // Size is checked first: an oversized body of garbage is too_large, not not_json.
        let big = [UInt8](repeating: 0xFF, count: 262_145)
        #expect(
            classify(body: big).failure
                == BadInput(code: .tooLarge, detail: "body is 262145 bytes, over the limit of 262144"))
        #expect(classify(body: [UInt8](repeating: 0x20, count: 262_144)).failure?.code == .notJSON)
        #expect(classify(body: Array("{}".utf8), limits: InputLimits(maxBodyBytes: 1)).failure?.code == .tooLarge)
    }

    @Test func typedValuesOfTheOwnFixtures() throws {
        let lead = try classify(body: Fixtures.consumed(.leadCreated)).get()
        #expect(lead.id == "lead-evt-0001")
        #expect(lead.time == Instant(rfc3339: "2027-03-01T08:00:00Z"))
        #expect(lead.subject == "lead-7001")
        guard case .leadCreated(let l) = lead.payload else {
            Issue.record("payload \(lead.payload)")
            return
        }
        #expect(
            l
                == LeadCreated(
                    leadId: "lead-7001", referralCode: " 9xr4 tlnb 3 ", householdId: nil,
                    contactHash: "h:ab12", segment: .business, channel: .fieldSales))
        #expect(l.code?.canonical == "9XR4-T1NB-3")

        let scheduled = try classify(body: Fixtures.consumed(.installScheduled)).get()
        #expect(scheduled.subject == nil)
        #expect(
            scheduled.payload
                == .installScheduled(
                    InstallScheduled(
                        accountId: "acct-7002", scheduledFor: try #require(Instant(rfc3339: "2027-03-10T07:00:00Z")))))

        let paid = try classify(body: Fixtures.consumed(.invoicePaid)).get()
        #expect(
            paid.payload
                == .invoicePaid(
                    InvoicePaid(
                        accountId: "acct-7002", invoiceId: "inv-7002-03",
                        amountMinor: 9_007_199_254_740_991, currency: "EUR", sequence: 1, creditsMinor: nil)))

        let speed = try classify(body: Fixtures.consumed(.speedtestCompleted)).get()
        #expect(
            speed.payload
                == .speedtestCompleted(
                    SpeedtestCompleted(accountId: "acct-7002", measuredDownMbps: 0, planDownMbps: 150)))

        let cancelled = try classify(body: Fixtures.consumed(.serviceCancelled)).get()
        guard case .serviceCancelled(let c) = cancelled.payload else {
            Issue.record("payload")
            return
        }
        #expect(c.reason == "déménagement à Montréal")
        #expect(c.cancelledAt.rfc3339 == "2027-04-01T00:29:59Z")

        let resolved = try classify(body: Fixtures.consumed(.ticketResolved)).get()
        #expect(
            resolved.payload == .ticketResolved(TicketResolved(accountId: "acct-7002", ticketId: "T 9001", csat: nil)))
    }

    /// JSON Schema's `integer` is a mathematical integer: `5e3` and `5000.0` are 5000.
    @Test(arguments: ["5000", "5e3", "5000.0", "0.5e4"])
    func integersMaySpellAnExponentOrAZeroFraction(amount: String) throws {
        let body = try Fixtures.consumed(.creditApplied)
        let text = String(decoding: body, as: UTF8.self).replacingOccurrences(
            of: "\"amount_minor\": 0", with: "\"amount_minor\": \(amount)")
        let event = try classify(body: Array(text.utf8)).get()
        guard case .creditApplied(let credit) = event.payload else {
            Issue.record("payload")
            return
        }
        #expect(credit.amountMinor == 5000)
    }

    @Test func detailsAreCutToOneSafeLine() {
        let long = String(repeating: "é\n", count: 600)
        let bad = BadInput(code: .invalidData, detail: "data.x: " + long)
        #expect(isHeaderSafe(bad.detail))
        #expect(bad.detail.hasSuffix("..."))
        #expect(bad.detail.utf8.count <= 1024)
        #expect(bad.detail.hasPrefix("data.x: \\u{E9}\\u{A}\\u{E9}"))
        // The cut falls between escapes, never inside one.
        #expect(bad.detail.dropLast(3).hasSuffix("}"))
        let exact = String(repeating: "a", count: 1024)
        #expect(BadInput(code: .notJSON, detail: exact).detail == exact)
        #expect(BadInput(code: .notJSON, detail: exact + "a").detail == String(repeating: "a", count: 1021) + "...")
    }

    @Test func userTextInDetailsIsShort() throws {
        // A 10 KiB type name is not echoed back whole.
        let body = Array(
            #"{"specversion":"1.0","id":"x","source":"s","type":"\#(String(repeating: "t", count: 10_000))"}"#.utf8)
        let bad = try #require(classify(body: body).failure)
        #expect(bad.code == .unknownType)
        #expect(bad.detail.utf8.count < 100)
    }
}
