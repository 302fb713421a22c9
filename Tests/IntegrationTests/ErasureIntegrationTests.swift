import Foundation
import Postgres
import ReferralCore
import ReferralStore
import ReferralWorker
import Testing

/// `crm.customer.erased` through the real worker, broker and database: afterwards nothing of the
/// customer is left in any column of any table, and the reward ledger is intact.
@Suite(.serialized, .tearsDownTestBeds) struct ErasureIntegrationTests {
    /// A clock that starts at a fixed instant and runs with real time, so holds and timers pass
    /// during the test while nothing depends on today's date.
    struct ShiftedClock: ReferralCore.Clock {
        let base = Instant(microseconds: 1_898_553_600_000_000)  // 2030-03-01T00:00:00Z
        let started = ContinuousClock.now
        func now() -> Instant {
            base + Span(microseconds: Int64((ContinuousClock.now - started).inSeconds * 1_000_000))
        }
        func at(_ seconds: Double) -> String { (now() + Span(microseconds: Int64(seconds * 1_000_000))).rfc3339 }
    }

    struct Sender {
        let bed: TestBed
        var n = 0
        /// Publishes a body written by hand: the test needs members no JSON library writes
        /// (`1e1000000`, `\u0000`).
        mutating func send(_ type: String, _ data: String, time: String, extra: String = "") async throws {
            n += 1
            let source = String(type.split(separator: ".")[0])
            let body =
                #"{"specversion":"1.0","id":"\#(bed.name)-\#(n)","source":"\#(source)","type":"\#(type)","#
                + #""time":"\#(time)","datacontenttype":"application/json"\#(extra),"data":\#(data)}"#
            try await bed.publish(Array(body.utf8), type: type)
        }
    }

    func startWorker(_ bed: TestBed, clock: ShiftedClock) throws -> Task<Void, any Error> {
        let settings = bed.settings
        let programs = try bed.programs()
        return bed.own(
            Task {
                try await Worker(
                    settings: settings, programs: programs, logger: TestServices.logger, clock: clock,
                    instanceName: "referrald-test"
                ).run()
            })
    }

    /// Every row of every table of the schema as text, bytea columns decoded (`escape`), so a
    /// string in a stored body is found as it was sent.
    static func dump(_ db: PostgresConnection) async throws -> String {
        try await db.run { c in
            var columns: [String: [String]] = [:]
            for row in try c.query(
                """
                SELECT table_name::text AS t, column_name::text AS col, data_type::text AS ty FROM information_schema.columns
                WHERE table_schema = 'public' ORDER BY table_name, ordinal_position
                """)
            {
                let col = "\"\(try row.decode("col", as: String.self))\""
                let expr =
                    try row.decode("ty", as: String.self) == "bytea" ? "encode(\(col), 'escape')" : "\(col)::text"
                columns[try row.decode("t", as: String.self), default: []].append(expr)
            }
            var out = ""
            for (table, exprs) in columns.sorted(by: { $0.key < $1.key }) {
                for row in try c.query(
                    "SELECT concat_ws(' | ', \(exprs.joined(separator: ", "))) AS line FROM \"\(table)\"")
                {
                    out += "\(table): \(try row.decode("line", as: String.self))\n"
                }
            }
            return out
        }
    }

    @Test func erasureLeavesNoPersonalDataAndKeepsTheLedger() async throws {
        let bed = try await TestBed.make([
            "REFERRALD_PROGRAMS_FILE": try Scenario.fastPrograms(hold: "1s"),
            "REFERRALD_REWARD_RETRY_BACKOFF": "1h",
        ])
        let clock = ShiftedClock()
        let worker = try startWorker(bed, clock: clock)
        var s = Sender(bed: bed)
        let scenario = Scenario(bed: bed)
        var seen: [Scenario.Published] = []

        try await s.send(
            "provisioning.service.activated",
            #"{"account_id":"acct-R","activated_at":"\#(clock.at(-86_400))","household_id":"hh-R","segment":"consumer"}"#,
            time: clock.at(0))
        try await scenario.collect(into: &seen) { $0.of("referral.code.issued").count == 1 }
        let code = try #require(seen.of("referral.code.issued").first?.data["code"] as? String)

        // The friend's story: a lead with household, contact and a producer's extra members; its
        // order; an activation carrying a number jsonb cannot hold; rewards after the hold.
        try await s.send(
            "provisioning.lead.created",
            #"{"lead_id":"lead-X1","referral_code":"\#(code)","household_id":"hh-Xsecret","contact_hash":"ct-Xsecret","#
                + #""segment":"consumer","channel":"web","crm_note":"Xavier likes fibre"}"#,
            time: clock.at(-60), extra: #","subject":"Xavier Secretson","x-trace":"Xavier-trace""#)
        try await s.send(
            "provisioning.order.placed", #"{"lead_id":"lead-X1","account_id":"acct-X"}"#, time: clock.at(-50))
        try await s.send(
            "provisioning.service.activated",
            #"{"account_id":"acct-X","activated_at":"\#(clock.at(-40))","household_id":"hh-Xsecret","#
                + #""contact_hash":"ct-Xsecret","segment":"consumer","crm_score":1e1000000}"#, time: clock.at(-40))
        try await scenario.collect(into: &seen) { $0.of("referral.reward.issued").count >= 2 }
        let referral = try #require(seen.of("referral.friend_offer.granted").first?.data["referral_id"] as? String)
        let n = referral.dropFirst(4)

        // Free text: billing's rejection of the friend's credit, a cancellation's reason; a NUL in
        // a ticket's extra member.
        try await s.send(
            "billing.credit.rejected", #"{"reward_id":"rwd-\#(n)-friend","reason":"Xavier's card declined"}"#,
            time: clock.at(0))
        try await s.send(
            "crm.ticket.opened", #"{"account_id":"acct-X","ticket_id":"t-1","note":"Xavier\u0000 called"}"#,
            time: clock.at(0))
        try await s.send(
            "provisioning.service.cancelled",
            #"{"account_id":"acct-X","cancelled_at":"\#(clock.at(0))","reason":"Xavier moved abroad"}"#,
            time: clock.at(0))
        // A second lead's order arrives before the lead itself.
        try await s.send(
            "provisioning.order.placed", #"{"lead_id":"lead-X2","account_id":"acct-X"}"#, time: clock.at(0))
        #expect(
            try await bed.eventually {
                let noted = try await bed.count(
                    "SELECT count(*) FROM rewards WHERE reward_id = 'rwd-\(n)-friend' AND note IS NOT NULL")
                let cancelled = try await bed.count("SELECT count(*) FROM facts WHERE kind = 'cancelled'")
                let ordered = try await bed.count("SELECT count(*) FROM facts WHERE lead_id = 'lead-X2'")
                return noted == 1 && cancelled == 1 && ordered == 1
            })
        let ledger =
            "SELECT string_agg(reward_id || ' ' || amount_minor || ' ' || issued_at, ', ' ORDER BY reward_id) FROM rewards"
        let before = try await bed.db.run { c in try c.query(ledger).first?.decode(0, as: String.self) }
        let events = try await bed.count("SELECT count(*) FROM inbox")
        // The dump sees what the erasure must remove: without the scrub this test fails.
        let stored = try await Self.dump(bed.db)
        for secret in ["Xsecret", "Xavier", "1e1000000", "\\u0000"] {
            #expect(stored.contains(secret), "\(secret) not stored")
        }

        try await s.send("crm.customer.erased", #"{"account_id":"acct-X"}"#, time: clock.at(0))
        // The late lead: after the erasure and after its own order, which linked it to acct-X.
        try await s.send(
            "provisioning.lead.created",
            #"{"lead_id":"lead-X2","referral_code":"\#(code)","household_id":"hh-Xsecret2","contact_hash":"ct-Xsecret2"}"#,
            time: clock.at(-30))
        #expect(
            try await bed.eventually {
                let stored = try await bed.count("SELECT count(*) FROM inbox")
                let pending = try await bed.count("SELECT count(*) FROM erasure_scrubs")
                let left = try await bed.count(
                    """
                    SELECT count(*) FROM inbox WHERE NOT scrubbed AND (account_id = 'acct-X' OR lead_id LIKE 'lead-X%')
                    """)
                return stored == events + 2 && pending == 0 && left == 0
            })

        let dump = try await Self.dump(bed.db)
        for secret in ["Xsecret", "Xavier", "1e1000000", "\\u0000"] {
            let lines = dump.split(separator: "\n").filter { $0.contains(secret) }
            #expect(lines.isEmpty, "\(secret) left in:\n\(lines.joined(separator: "\n"))")
        }
        // The ledger: the same rewards, ids, amounts and times; the erasure itself was applied.
        #expect(try await bed.db.run { c in try c.query(ledger).first?.decode(0, as: String.self) } == before)
        #expect(try await bed.count("SELECT count(*) FROM rewards WHERE referral_id = '\(referral)'") == 2)
        #expect(try await bed.count("SELECT count(*) FROM facts WHERE kind = 'erased' AND account_id = 'acct-X'") == 1)
        #expect(try await bed.count("SELECT count(*) FROM rewards WHERE note LIKE '%[erased]'") == 1)
        #expect(try await bed.queueDepth(bed.settings.deadLetterQueue) == 0)
        worker.cancel()
        _ = await worker.result
    }

    /// The reported failure: an extra member `1e1000000` made the SQL scrub's `::jsonb` cast fail
    /// (22003) on every delivery, and the erasure was dead-lettered as `processing_failed`.
    @Test func hugeNumberNoLongerStopsTheErasure() async throws {
        let bed = try await TestBed.make()
        let clock = ShiftedClock()
        let worker = try startWorker(bed, clock: clock)
        var s = Sender(bed: bed)
        try await s.send(
            "provisioning.service.activated",
            #"{"account_id":"acct-N","activated_at":"\#(clock.at(0))","household_id":"hh-N","crm_score":1e1000000}"#,
            time: clock.at(0))
        try await s.send("crm.customer.erased", #"{"account_id":"acct-N"}"#, time: clock.at(0))
        #expect(
            try await bed.eventually {
                let erased = try await bed.count(
                    "SELECT count(*) FROM facts WHERE kind = 'erased' AND account_id = 'acct-N'")
                let pending = try await bed.count("SELECT count(*) FROM erasure_scrubs")
                return erased == 1 && pending == 0
            })
        #expect(
            try await bed.count("SELECT count(*) FROM inbox WHERE position('1e1000000' in encode(body, 'escape')) > 0")
                == 0)
        #expect(try await bed.count("SELECT count(*) FROM facts WHERE household_id IS NOT NULL") == 0)
        #expect(try await bed.queueDepth(bed.settings.deadLetterQueue) == 0)
        worker.cancel()
        _ = await worker.result
    }
}
