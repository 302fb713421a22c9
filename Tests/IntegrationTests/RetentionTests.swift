import Foundation
import Postgres
import ReferralCore
import ReferralStore
import ReferralWorker
import Testing

/// `referrald prune` with an injected "now" (2031-06-01, never today's date): old inbox bodies
/// and keys, and long-ended referrals, go; recent ones, the ledger and deduplication stay.
@Suite(.tearsDownTestBeds) struct RetentionTests {
    static let now = Instant(rfc3339: "2031-06-01T00:00:00Z")!

    static func ticket(_ bed: TestBed, _ id: String) -> [UInt8] {
        Array(
            #"{"specversion":"1.0","id":"\#(bed.name)-\#(id)","source":"crm","type":"crm.ticket.opened","time":"2031-05-01T00:00:00Z","data":{"account_id":"acct-Z","ticket_id":"\#(id)"}}"#
                .utf8)
    }

    @Test func pruneDropsWhatIsOldAndKeepsTheLedgerAndDeduplication() async throws {
        let bed = try await TestBed.make([
            "REFERRALD_RETENTION_INBOX_BODY_DAYS": "30", "REFERRALD_RETENTION_INBOX_KEY_DAYS": "400",
            "REFERRALD_RETENTION_REFERRAL_DAYS": "365", "REFERRALD_RETENTION_LEDGER_DAYS": "3650",
        ])
        let worker = bed.startWorker()
        // Three real events through the worker, then aged: one past the key retention, one past
        // the body retention, one recent.
        for id in ["e-ancient", "e-old", "e-recent"] {
            try await bed.publish(Self.ticket(bed, id), type: "crm.ticket.opened")
        }
        #expect(try await bed.eventually { try await bed.count("SELECT count(*) FROM inbox") == 3 })
        let now = Self.now.rfc3339
        try await bed.db.run { c in
            for (id, days) in [("e-ancient", 500), ("e-old", 100), ("e-recent", 1)] {
                _ = try c.execute(
                    "UPDATE inbox SET received_at = $1::timestamptz - make_interval(days => $2::int4) WHERE event_id = $3",
                    [.text(now), .int(Int64(days)), .text("\(bed.name)-\(id)")])
            }
            // Referrals, written as the worker would have left them. `updated_at` is when the
            // stage last changed.
            let program = try c.query("SELECT program_id, version::int8 AS v FROM program_versions LIMIT 1").first!
            let pid = try program.decode("program_id", as: String.self)
            let pv = try program.decode("v", as: Int64.self)
            let rows: [(id: String, stage: String, endedDaysAgo: Int, friend: String)] = [
                ("ref-old", "rejected", 1000, "acct-F1"),  // goes
                ("ref-paid", "reversed", 1000, "acct-F2"),  // has a reward within the ledger's 10 years: stays
                ("ref-recent", "expired", 10, "acct-F3"),  // ended recently: stays
                ("ref-blocked", "expired", 1000, "acct-F4"),  // shares its friend with an active referral: stays
                ("ref-active", "activated", 1000, "acct-F4"),
            ]
            for (n, r) in rows.enumerated() {
                _ = try c.execute(
                    """
                    INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version,
                                           friend_account_id, stage, updated_at, lead_at, lead_code)
                    VALUES ($1, $2, 'CODE\(n)', 'acct-R\(n)', $3, $4::int4, $5, $6,
                            $7::timestamptz - make_interval(days => $8::int4), $7::timestamptz - make_interval(days => $8::int4 + 30), 'CODE\(n)')
                    """,
                    [
                        .text(r.id), .text("lead-\(r.id)"), .text(pid), .int(pv), .text(r.friend), .text(r.stage),
                        .text(now),
                        .int(Int64(r.endedDaysAgo)),
                    ])
                _ = try c.execute(
                    """
                    INSERT INTO facts (kind, at, lead_id, household_id) VALUES ('lead', $1::timestamptz - interval '2000 days', $2, 'hh-1');
                    """, [.text(now), .text("lead-\(r.id)")])
                _ = try c.execute(
                    "INSERT INTO referral_links (referral_id, link) VALUES ($1, $2)",
                    [.text(r.id), .text("a:\(r.friend)")])
                _ = try c.execute(
                    """
                    INSERT INTO effects (effect_key, referral_id, kind, effect, recorded_at)
                    VALUES ($1, $2, 'status_changed', '{}'::jsonb, $3::timestamptz - interval '2000 days')
                    """, [.text("k-\(r.id)"), .text(r.id), .text(now)])
                _ = try c.execute(
                    """
                    INSERT INTO followups (followup_key, referral_id, stage, stalled_since, sent_at)
                    VALUES ($1, $2, 'lead', $3::timestamptz - interval '2000 days', $3::timestamptz - interval '2000 days')
                    """, [.text("f-\(r.id)"), .text(r.id), .text(now)])
            }
            _ = try c.execute(
                """
                INSERT INTO rewards (reward_id, referral_id, beneficiary, account_id, kind, amount_minor, currency, program_id,
                                     state, issued_at, updated_at)
                VALUES ('rwd-paid-referrer', 'ref-paid', 'referrer', 'acct-R1', 'bill_credit', 2500, 'EUR', $1, 'reversed',
                        $2::timestamptz - interval '1100 days', $2::timestamptz - interval '1000 days')
                """, [.text(pid), .text(now)])
        }
        let ledger = "SELECT string_agg(reward_id || ' ' || amount_minor || ' ' || issued_at, ', ') FROM rewards"
        let ledgerBefore = try await bed.db.run { c in try c.query(ledger).first?.decode(0, as: String.self) }

        let summary = try await Prune.run(settings: bed.settings, now: Self.now, logger: TestServices.logger)
        #expect(summary.count == .init(bodies: 1, keys: 1, referrals: 1, rewards: 0))

        // Inbox: the ancient key is gone, the old body is emptied but its key kept, the recent intact.
        let inbox = try await bed.db.run { c in
            try c.query("SELECT event_id, octet_length(body)::int8 AS n FROM inbox ORDER BY event_id").map {
                (
                    String(try $0.decode("event_id", as: String.self).dropFirst(bed.name.count + 1)),
                    try $0.decode("n", as: Int64.self)
                )
            }
        }
        #expect(inbox.map(\.0) == ["e-old", "e-recent"])
        #expect(inbox.map { $0.1 == 0 } == [true, false])
        // Referrals: only ref-old went, with everything that was its own.
        let left = try await bed.db.run { c in
            try c.query("SELECT referral_id FROM referrals ORDER BY 1").map { try $0.decode(0, as: String.self) }
        }
        #expect(left == ["ref-active", "ref-blocked", "ref-paid", "ref-recent"])
        for table in ["effects", "followups", "referral_links"] {
            #expect(try await bed.count("SELECT count(*) FROM \(table) WHERE referral_id = 'ref-old'") == 0)
            #expect(try await bed.count("SELECT count(*) FROM \(table)") == 4)
        }
        #expect(try await bed.count("SELECT count(*) FROM facts WHERE lead_id = 'lead-ref-old'") == 0)
        #expect(try await bed.count("SELECT count(*) FROM facts WHERE kind = 'lead'") == 4)
        #expect(try await bed.db.run { c in try c.query(ledger).first?.decode(0, as: String.self) } == ledgerBefore)
        // export-events sees only the retained bodies.
        let exported = try await bed.db.run { c in
            var n = 0
            try ReportStore.exportEvents(c, from: nil, to: nil) { _ in n += 1 }
            return n
        }
        #expect(exported == 1)

        // Deduplication: the recent event and the emptied one are still recognised; the one
        // whose key was deleted is applied again, as the documentation warns.
        for id in ["e-old", "e-recent", "e-ancient", "e-marker"] {
            try await bed.publish(Self.ticket(bed, id), type: "crm.ticket.opened")
        }
        #expect(
            try await bed.eventually {
                try await bed.count("SELECT count(*) FROM inbox WHERE event_id = '\(bed.name)-e-marker'") == 1
            })
        #expect(try await bed.count("SELECT count(*) FROM inbox") == 4)
        #expect(
            try await bed.count(
                "SELECT count(*) FROM inbox WHERE event_id = '\(bed.name)-e-old' AND octet_length(body) = 0") == 1)
        // A second run finds nothing more to do (the rows just stored carry the database's
        // clock, today, years before the injected "now": moved to the day before it).
        _ = try await bed.db.run { c in
            try c.execute(
                """
                UPDATE inbox SET received_at = $1::timestamptz - interval '1 day' WHERE event_id = ANY($2::text[])
                """, [.text(now), .textArray(["\(bed.name)-e-ancient", "\(bed.name)-e-marker"])])
        }
        #expect(
            try await Prune.run(settings: bed.settings, now: Self.now, logger: TestServices.logger).count == .init())
        worker.cancel()
        _ = await worker.result
    }

    @Test func defaultsPruneNothingAndKeysCannotOutliveNoBodyRetention() async throws {
        let env = [
            "REFERRALD_AMQP_URL": "amqp://u:p@h/v", "REFERRALD_DATABASE_URL": "postgres://u:p@h/d",
            "REFERRALD_PROGRAMS_FILE": "/dev/null",
        ]
        let settings = try await Settings.load(configFile: nil, environment: env)
        let days: [Int] = [
            settings.retentionInboxBodyDays, settings.retentionInboxKeyDays, settings.retentionReferralDays,
            settings.retentionLedgerDays,
        ]
        #expect(days == [0, 0, 0, 0])
        for (body, key) in [("0", "400"), ("30", "10")] {
            await #expect(throws: SettingsError.self) {
                _ = try await Settings.load(
                    configFile: nil,
                    environment: env.merging([
                        "REFERRALD_RETENTION_INBOX_BODY_DAYS": body, "REFERRALD_RETENTION_INBOX_KEY_DAYS": key,
                    ]) { $1 })
            }
        }
    }
}
