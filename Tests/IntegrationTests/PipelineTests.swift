import AMQP
import Foundation
import Postgres
import ReferralCore
import ReferralWorker
import Testing

/// The walking skeleton end to end: real RabbitMQ, real PostgreSQL, the real worker.
@Suite(.serialized, .tearsDownTestBeds) struct PipelineTests {
    /// Dated now by default: an ask not sent within 7 days of its moment is skipped as stale, so
    /// a fixed date silently stopped these activations from earning their post_activation ask
    /// once the calendar passed it (and failed the stop-under-load test, which counts asks).
    static func activation(id: String, account: String, at: String = Scenario.time()) -> [UInt8] {
        Array(
            """
            {"specversion":"1.0","id":"\(id)","source":"provisioning","type":"provisioning.service.activated",
             "time":"\(at)","subject":"\(account)","datacontenttype":"application/json",
             "data":{"account_id":"\(account)","activated_at":"\(at)","household_id":"hh-1","segment":"consumer","plan_id":"fiber-1000"}}
            """.utf8)
    }

    static func data(_ d: Delivery) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(d.body)) as? [String: Any]
        return try #require(object?["data"] as? [String: Any])
    }

    @Test func activationIssuesOneCodeEvenWhenDeliveredTwice() async throws {
        let bed = try await TestBed.make()
        let worker = bed.startWorker()
        let body = Self.activation(id: "act-1", account: "acct-7001")
        try await bed.publish(body, type: "provisioning.service.activated")
        try await bed.publish(body, type: "provisioning.service.activated")
        // A reactivation of the same account, another event: still no second code.
        try await bed.publish(
            Self.activation(id: "act-2", account: "acct-7001", at: Scenario.time(3_600)),
            type: "provisioning.service.activated")
        // The activation also earns the new customer a post_activation ask: count codes only.
        let observed = try await bed.take(from: bed.observerQueue, count: 2).filter {
            $0.routingKey == "referral.code.issued"
        }
        #expect(observed.count == 1)
        let d = try #require(observed.first)
        #expect(d.routingKey == "referral.code.issued")
        let data = try Self.data(d)
        #expect(data["account_id"] as? String == "acct-7001")
        let code = try #require(data["code"] as? String)
        #expect(ReferralCode.parse(code)?.canonical == code)
        #expect(data["share_url"] as? String == "https://example.net/r/\(code)")
        #expect(data["program_id"] as? String == "consumer")
        // All three deliveries handled: the inbox is empty and acked, and nothing more was published.
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.inboxQueue) == 0 })
        #expect(try await bed.count("SELECT count(*) FROM inbox") == 2)
        // A row is marked published after its confirm, which may follow the delivery seen above.
        #expect(
            try await bed.eventually {
                try await bed.count("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
            })
        // Nothing more for acct-7001: another account's activation, sent after it, publishes its
        // code and ask behind anything the duplicates could still have published, so the next
        // two publications are that account's and no other.
        try await bed.publish(
            Self.activation(id: "act-3", account: "acct-7002"), type: "provisioning.service.activated")
        let later = try await bed.take(from: bed.observerQueue, count: 2)
        #expect(later.count == 2)
        #expect(try later.map { try Self.data($0)["account_id"] as? String } == ["acct-7002", "acct-7002"])
        worker.cancel()
        _ = await worker.result
    }

    @Test(.enabled(if: Contract.available, Contract.skipNote))
    func contractActivationExampleYieldsSchemaValidCode() async throws {
        let bed = try await TestBed.make()
        let worker = bed.startWorker()
        let body = try Contract.example("consumed/provisioning.service.activated.json")
        try await bed.publish(body, type: "provisioning.service.activated")
        try await bed.publish(body, type: "provisioning.service.activated")
        let observed = try await bed.take(from: bed.observerQueue, count: 3, timeout: .seconds(5))
            .filter { $0.routingKey == "referral.code.issued" }
        #expect(observed.count == 1)
        let d = try #require(observed.first)
        #expect(try await Contract.schemaError(of: d.body, type: "referral.code.issued") == nil)
        #expect(try Self.data(d)["account_id"] as? String == "acct-1002")
        worker.cancel()
        _ = await worker.result
    }

    @Test(.enabled(if: Contract.available, Contract.skipNote))
    func everyContractInvalidExampleIsDeadLetteredUnchanged() async throws {
        let bed = try await TestBed.make()
        let worker = bed.startWorker()
        let manifest = try Contract.invalidManifest()
        var sent: [String: [UInt8]] = [:]
        for (file, _) in manifest.sorted(by: { $0.key < $1.key }) {
            let body = try Contract.example("invalid/" + file)
            sent[file] = body
            // Routed as what it claims to be; bodies without a usable type go as install events.
            try await bed.publish(body, type: "provisioning.install.completed")
        }
        // The worker keeps consuming afterwards: a valid event still gets its effect.
        try await bed.publish(
            Self.activation(id: "after-bad", account: "acct-7002"), type: "provisioning.service.activated")
        let dead = try await bed.take(from: bed.settings.deadLetterQueue, count: manifest.count)
        #expect(dead.count == manifest.count)
        for d in dead {
            guard let file = sent.first(where: { $0.value == d.body })?.key else {
                Issue.record("a dead letter's body matches no sent body (changed in transit?)")
                continue
            }
            #expect(d.headers["x-referrald-error"] == .string(manifest[file]!), "\(file)")
            if case .string(let detail)? = d.headers["x-referrald-detail"] {
                #expect(!detail.isEmpty && !detail.contains("\n") && detail.count <= 1024, "\(file)")
            } else {
                Issue.record("\(file): no x-referrald-detail header")
            }
        }
        let codes = try await bed.take(from: bed.observerQueue, count: 2).filter {
            $0.routingKey == "referral.code.issued"
        }
        #expect(codes.map(\.routingKey) == ["referral.code.issued"])
        #expect(try await bed.count("SELECT count(*) FROM inbox") == 1)
        worker.cancel()
        _ = await worker.result
    }

    /// A NUL in free text and an invoice sequence past int4 are valid input: stored, not
    /// failed on every delivery until dead-lettered as `processing_failed`.
    @Test func aNulInFreeTextAndALargeSequenceAreStored() async throws {
        let bed = try await TestBed.make()
        let worker = bed.startWorker()
        let at = Scenario.time()
        func event(_ id: String, _ type: String, _ data: String) -> [UInt8] {
            Array(
                #"{"specversion":"1.0","id":"\#(id)","source":"billing","type":"\#(type)","time":"\#(at)","data":{\#(data)}}"#
                    .utf8)
        }
        try await bed.publish(
            event(
                "nul-1", "billing.credit.rejected", #""reward_id":"rwd-ref-1-friend","reason":"closed\u0000account""#),
            type: "billing.credit.rejected")
        try await bed.publish(
            event(
                "seq-1", "billing.invoice.paid",
                #""account_id":"acct-big","invoice_id":"i-1","amount_minor":100,"currency":"USD","sequence":3000000000"#
            ),
            type: "billing.invoice.paid")
        try await bed.publish(
            event(
                "nul-2", "provisioning.service.cancelled",
                #""account_id":"acct-big","cancelled_at":"\#(at)","reason":"moving\u0000out""#),
            type: "provisioning.service.cancelled")
        #expect(try await bed.eventually { try await bed.count("SELECT count(*) FROM inbox") == 3 })
        #expect(try await bed.count("SELECT count(*) FROM facts WHERE kind = 'paid' AND sequence = 3000000000") == 1)
        #expect(
            try await bed.count(
                "SELECT count(*) FROM facts WHERE kind = 'credit_rejected' AND reason = 'closed\u{FFFD}account'") == 1)
        #expect(
            try await bed.count("SELECT count(*) FROM facts WHERE kind = 'cancelled' AND account_id = 'acct-big'") == 1)
        #expect(try await bed.queueDepth(bed.settings.deadLetterQueue) == 0)
        worker.cancel()
        _ = await worker.result
    }

    @Test func hostileBodiesAreDeadLetteredWithTheirCodes() async throws {
        let bed = try await TestBed.make()
        let worker = bed.startWorker()
        let cases: [(String, [UInt8])] = [
            ("not_json", Array("{\"specversion\":\"1.0\",".utf8)),
            ("not_json", [0xEF, 0xBB, 0xBF] + Array("{}".utf8)),
            ("not_cloudevent", Array("[1,2]".utf8)),
            ("unsupported_specversion", Array(#"{"specversion":"2.0","id":"x","source":"s","type":"t"}"#.utf8)),
            (
                "unknown_type",
                Array(
                    #"{"specversion":"1.0","id":"x","source":"s","type":"provisioning.modem.rebooted","time":"2026-11-23T10:00:00Z","data":{}}"#
                        .utf8)
            ),
            (
                "invalid_data",
                Array(
                    #"{"specversion":"1.0","id":"x","source":"s","type":"provisioning.service.activated","time":"2026-11-23T10:00:00Z","data":{"account_id":"a"}}"#
                        .utf8)
            ),
            ("too_large", Array(repeating: UInt8(ascii: " "), count: 300_000)),
            ("not_json", Array(repeating: UInt8(ascii: "["), count: 10_000)),  // nesting past the depth limit
        ]
        for (_, body) in cases { try await bed.publish(body, type: "provisioning.service.activated") }
        let dead = try await bed.take(from: bed.settings.deadLetterQueue, count: cases.count)
        #expect(dead.count == cases.count)
        for (expected, body) in cases {
            let match = dead.first { $0.body == body }
            #expect(match?.headers["x-referrald-error"] == .string(expected), "\(expected)")
        }
        #expect(try await bed.count("SELECT count(*) FROM inbox") == 0)
        worker.cancel()
        _ = await worker.result
    }
}
