import Foundation
import Postgres
import ReferralCore
import ReferralStore
import Testing

@testable import ReferralWorker

/// Lead channels and activation plans: stored by the worker beside their facts, and filled in
/// by migration 17 (`FactBackfill.backfillPlansAndChannels`) for facts stored before, from the inbox.
@Suite(.serialized, .tearsDownTestBeds) struct FactBackfillTests {
    static let t0 = Instant(rfc3339: "2026-03-02T10:00:00Z")!

    static func body(_ id: String, _ type: String, time: Instant, _ data: [String: Any]) -> [UInt8] {
        let event: [String: Any] = [
            "specversion": "1.0", "id": id, "source": String(type.split(separator: ".")[0]),
            "type": type, "time": time.rfc3339, "data": data,
        ]
        return Array(try! JSONSerialization.data(withJSONObject: event, options: .sortedKeys))
    }

    /// Six leads (two by phone, one by web, one in a store, two without a channel), four
    /// activations (two plans at one instant for acct-2, none named for acct-3, a later plan
    /// for acct-1 that is not its first) and an order, applied as the worker applies a batch.
    static func events() -> [ReceivedEvent] {
        var bodies: [[UInt8]] = []
        func lead(_ n: Int, _ channel: String?) {
            var data: [String: Any] = ["lead_id": "lead-\(n)", "segment": "consumer"]
            if let channel { data["channel"] = channel }
            bodies.append(body("l\(n)", "provisioning.lead.created", time: t0 + .hours(Int64(n)), data))
        }
        func activation(_ id: String, _ account: String, at: Instant, plan: String?) {
            var data: [String: Any] = ["account_id": account, "activated_at": at.rfc3339, "segment": "consumer"]
            if let plan { data["plan_id"] = plan }
            bodies.append(body(id, "provisioning.service.activated", time: at, data))
        }
        lead(1, "phone")
        lead(2, "phone")
        lead(3, "web")
        lead(4, "retail")
        lead(5, nil)
        lead(6, nil)
        activation("a1", "acct-1", at: t0, plan: "fiber-500")
        activation("a2", "acct-2", at: t0 + .days(1), plan: "fiber-1000")
        activation("a3", "acct-2", at: t0 + .days(1), plan: "fiber-500")
        activation("a4", "acct-3", at: t0 + .days(2), plan: nil)
        activation("a5", "acct-1", at: t0 + .days(3), plan: "fiber-1000")
        bodies.append(
            body("o1", "provisioning.order.placed", time: t0 + .days(4), ["lead_id": "lead-1", "account_id": "acct-1"]))
        return bodies.map { b in
            guard case .success(let e) = classify(body: b) else { fatalError("test event does not classify") }
            return ReceivedEvent(event: e, body: b)
        }
    }

    static func apply(_ bed: TestBed, _ events: [ReceivedEvent]) async throws {
        let programs = try bed.programs()
        let list = programs.programs
        _ = try await bed.db.transaction { c in try ProgramStore.registerPrograms(c, list) }
        let context = DecisionContext(
            programs: programs, policy: bed.settings.lifecyclePolicy,
            now: t0 + .days(5))
        _ = try await DecisionStore(bed.database).applyBatch(events, published: [], context: context)
    }

    static func channels(_ db: PostgresConnection) async throws -> [String: String] {
        try await db.run { c in
            var out: [String: String] = [:]
            for row in try c.query(
                "SELECT lead_id, coalesce(channel, 'null') AS channel FROM facts WHERE kind = 'lead'")
            {
                out[try row.decode("lead_id", as: String.self)] = try row.decode("channel", as: String.self)
            }
            return out
        }
    }

    static func plans(_ db: PostgresConnection) async throws -> [String] {
        try await db.run { c in
            try c.query(
                """
                SELECT account_id || ' ' || to_char(at AT TIME ZONE 'UTC', 'MM-DD') || ' ' || plan_id AS p
                FROM facts WHERE kind = 'plan' ORDER BY 1
                """
            ).map { try $0.decode("p", as: String.self) }
        }
    }

    static let expectedChannels = [
        "lead-1": "phone", "lead-2": "phone", "lead-3": "web", "lead-4": "retail",
        "lead-5": "null", "lead-6": "null",
    ]
    static let expectedPlans = [
        "acct-1 03-02 fiber-500", "acct-1 03-05 fiber-1000",
        "acct-2 03-03 fiber-1000", "acct-2 03-03 fiber-500",
    ]

    @Test func theWorkerStoresALeadsChannelBesideItsFact() async throws {
        let bed = try await TestBed.make()
        try await Self.apply(bed, Self.events())
        #expect(try await Self.channels(bed.db) == Self.expectedChannels)
        #expect(try await Self.plans(bed.db) == Self.expectedPlans)
    }

    @Test func factsStoredWithoutPlansAndChannelsGetThemFromTheInboxOnce() async throws {
        let bed = try await TestBed.make()
        try await Self.apply(bed, Self.events())
        // What a release before version 6 (plans) and 17 (channels) left: the same facts without
        // them; acct-9 was enrolled (an activation fact without an inbox body); lead-4's body was
        // emptied by retention; lead-2's is cut short, for a body the classifier cannot read (a
        // release before may have stored what this one refuses): skipped, not an error.
        try await bed.db.run { c in
            try c.executeScript(
                """
                DELETE FROM facts WHERE kind = 'plan';
                UPDATE facts SET channel = NULL;
                INSERT INTO facts (kind, at, account_id) VALUES ('activated', '2026-03-01T00:00:00Z', 'acct-9');
                UPDATE inbox SET body = '' WHERE event_id = 'l4';
                UPDATE inbox SET body = convert_to('{"specversion":"1.0"', 'UTF8') WHERE event_id = 'l2';
                """)
        }
        #expect(try await Self.plans(bed.db).isEmpty)
        // Two inbox rows a transaction: the keyset paging crosses pages, and a page ending on
        // an unreadable body goes on.
        let filled = try await FactBackfill.backfillPlansAndChannels(bed.db, chunk: 2, logger: TestServices.logger)
        #expect(filled.plans == 4 && filled.channels == 2)
        var want = Self.expectedChannels
        want["lead-2"] = "null"
        want["lead-4"] = "null"
        #expect(try await Self.channels(bed.db) == want)
        #expect(try await Self.plans(bed.db) == Self.expectedPlans)

        // A migrate interrupted and run again, or run over facts the worker already completed,
        // adds nothing.
        let again = try await FactBackfill.backfillPlansAndChannels(bed.db, logger: TestServices.logger)
        #expect(again.plans == 0 && again.channels == 0)
        #expect(try await Self.plans(bed.db) == Self.expectedPlans)
    }
}
