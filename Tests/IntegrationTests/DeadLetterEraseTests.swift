import AMQP
import Foundation
import ReferralWorker
import Testing

/// `referrald dlq erase --account ID` against the real broker and database: the erased
/// account's dead letters lose their personal data (or go, when unreadable), everyone else's
/// stay exactly as they were.
@Suite(.tearsDownTestBeds) struct DeadLetterEraseTests {
    static func event(_ type: String, id: String, _ data: String, extra: String = "") -> [UInt8] {
        Array(
            (#"{"specversion":"1.0","id":"\#(id)","source":"test","type":"\#(type)","time":"2030-03-01T00:00:00Z""#
                + #"\#(extra),"data":\#(data)}"#).utf8)
    }

    struct Letter {
        var body: [UInt8]
        var headers: [String: AMQPFieldValue]
    }

    @Test func eraseScrubsOrDropsTheAccountsDeadLettersAndKeepsTheRest() async throws {
        let bed = try await TestBed.make()
        // The database links lead-X1 to the account (its order): the lead's own dead letter
        // does not name the account.
        try await bed.db.run { c in
            _ = try c.execute(
                "INSERT INTO facts (kind, at, lead_id, account_id) VALUES ('order', now(), 'lead-X1', 'acct-X')")
        }
        func dlq(_ code: String, _ detail: String) -> [String: AMQPFieldValue] {
            [
                "x-referrald-error": .string(code), "x-referrald-detail": .string(detail),
                "x-referrald-original-exchange": .string("upstream"), "x-referrald-original-routing-key": .string("k"),
            ]
        }
        let erased: [Letter] = [
            Letter(
                body: Self.event(
                    "provisioning.service.activated", id: "x1",
                    #"{"account_id":"acct-X","activated_at":"2030-03-01T00:00:00Z","household_id":"hh-Xsecret\u00e9","crm_note":"Xavier"}"#
                ),
                headers: dlq("invalid_data", #"data.household_id: "hh-Xsecretxé" is not printable ASCII"#)),
            Letter(
                body: Self.event(
                    "provisioning.lead.created", id: "x2",
                    #"{"lead_id":"lead-X1","household_id":"hh-Xsecret2","contact_hash":"ct-Xsecret"}"#,
                    extra: #","subject":"Xavier Secretson""#),
                headers: dlq("processing_failed", "lead.created: 23505")),
            Letter(
                body: Self.event(
                    "provisioning.service.cancelled", id: "x3",
                    #"{"account_id":"acct-X","cancelled_at":"2030-03-01","reason":"Xavier moved abroad"}"#),
                headers: dlq(
                    "invalid_data", #"data.cancelled_at: "2030-03-01" is not an RFC 3339 date-time with an offset"#)),
        ]
        let unreadable = Letter(
            body: Array(#"{"account_id":"acct-X","household_id":"hh-Xsecret3""#.utf8),
            headers: dlq("not_json", "offset 49: unexpected end"))
        let others: [Letter] = [
            Letter(
                body: Self.event(
                    "provisioning.service.activated", id: "y1",
                    #"{"account_id":"acct-XY","activated_at":"2030-03-01T00:00:00Z","household_id":"hh-Y\u00e9"}"#),
                headers: dlq("invalid_data", #"data.household_id: "hh-Yé" is not printable ASCII"#)),
            Letter(body: Array(#"{"account_id":"acct-XY" broken"#.utf8), headers: dlq("not_json", "offset 24")),
        ]
        for letter in erased + [unreadable] + others {
            let outcome = try await bed.amqp.publish([
                OutgoingMessage(
                    exchange: "", routingKey: bed.settings.deadLetterQueue, body: letter.body, headers: letter.headers,
                    contentType: "application/cloudevents+json", persistent: true, mandatory: true)
            ])
            #expect(outcome == [.confirmed])
        }
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.deadLetterQueue) == 6 })
        // The DLQ holds what the erasure must remove: without the command this test fails.
        #expect(
            erased.allSatisfy {
                String(decoding: $0.body, as: UTF8.self).contains("Xsecret")
                    || String(decoding: $0.body, as: UTF8.self).contains("Xavier")
            })

        let first = try await DeadLetterErase.run(
            settings: bed.settings, account: "acct-X", logger: TestServices.logger)
        #expect(first == .init(scanned: 6, scrubbed: 3, dropped: 1, kept: 2))
        // A second run finds the scrubbed copies as they must stay.
        let second = try await DeadLetterErase.run(
            settings: bed.settings, account: "acct-X", logger: TestServices.logger)
        #expect(second == .init(scanned: 5, scrubbed: 0, dropped: 0, kept: 5))

        let left = try await bed.take(from: bed.settings.deadLetterQueue, count: 5, timeout: .seconds(5))
        #expect(left.count == 5)
        for d in left {
            let text =
                String(decoding: d.body, as: UTF8.self) + " "
                + d.headers.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            for secret in ["Xsecret", "Xavier"] { #expect(!text.contains(secret), "\(secret) left in \(text)") }
        }
        // Other customers' dead letters: the same bytes and the same headers (but the broker's
        // own delivery count, raised for what it pushed past the end of the scan).
        for other in others {
            let found = left.filter { $0.body == other.body }
            #expect(found.count == 1)
            #expect(found.first?.headers.filter { $0.key != "x-delivery-count" } == other.headers)
        }
        // The scrubbed copies keep what a replay needs: ids, times, the diagnosis code.
        let copies = left.filter { $0.headers["x-referrald-erased"] != nil }
        #expect(copies.count == 3)
        #expect(
            Set(copies.compactMap { if case .string(let c)? = $0.headers["x-referrald-error"] { c } else { nil } })
                == ["invalid_data", "processing_failed"])
        #expect(copies.contains { String(decoding: $0.body, as: UTF8.self).contains(#""lead_id":"lead-X1""#) })
        #expect(copies.contains { String(decoding: $0.body, as: UTF8.self).contains(#""reason":"[erased]""#) })
    }

    /// The command, as an operator runs it: passes until one finds nothing of the account, each
    /// pass's summary on its own line, exit 0.
    @Test func theCommandPassesUntilNothingOfTheAccountIsLeft() async throws {
        let bed = try await TestBed.make()
        let letters = (0..<3).map { i in
            Self.event(
                "provisioning.service.activated", id: "z\(i)",
                #"{"account_id":"acct-Z","activated_at":"2030-03-01T00:00:00Z","household_id":"hh-Zsecret\u00e9"}"#)
        }
        let outcome = try await bed.amqp.publish(
            letters.map { body in
                OutgoingMessage(
                    exchange: "", routingKey: bed.settings.deadLetterQueue, body: body,
                    headers: ["x-referrald-error": .string("invalid_data")],
                    contentType: "application/cloudevents+json", persistent: true, mandatory: true)
            })
        #expect(outcome.allSatisfy { $0 == .confirmed })
        let (status, out, err) = try await Ops.runBinary(
            ["dlq", "erase", "--account", "acct-Z"], environment: bed.environment)
        let lines = out.split(separator: "\n").map(String.init)
        #expect(status == 0, "\(err)")
        #expect(lines.first == "pass 1: scanned 3, scrubbed 3, dropped 0, kept 0", "\(out)")
        #expect(lines.last?.hasSuffix("scrubbed 0, dropped 0, kept 3") == true, "\(out)")
        let left = try await bed.take(from: bed.settings.deadLetterQueue, count: 3, timeout: .seconds(5))
        #expect(left.count == 3 && left.allSatisfy { !String(decoding: $0.body, as: UTF8.self).contains("Zsecret") })
    }
}
