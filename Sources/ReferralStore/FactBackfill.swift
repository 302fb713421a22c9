import Foundation
import Logging
import Postgres
import ReferralCore

public enum FactBackfill {
    /// Migration 17: what facts stored before their columns existed still lack, read again from
    /// the raw inbox bodies — the plan an activation named (a `plan` fact beside it; version 6
    /// began storing those) and the sales channel of a lead (`facts.channel`, version 17).
    ///
    /// Facts carry no link to their inbox row, but the row's keys are the fact's: an activation's
    /// row has its account and `fact_time` = `activated_at`, a lead's its lead and `fact_time` =
    /// the envelope time, which is the lead fact's time (`Decisions.inboxEntry`). Bodies are read
    /// with the worker's own classifier, in Swift: the same reading as when they arrived, and no
    /// `::jsonb` cast that a `1e1000000` anywhere in a body would make fail (README, "Erasure").
    /// Bodies emptied by retention are skipped: their facts stay without plan or channel.
    ///
    /// Idempotent, so a `migrate` interrupted midway resumes by starting over: a plan fact is
    /// added only where the activation fact is stored and no plan fact with the same account,
    /// time and plan is (the core reads plan facts as a set), a channel only where none is set.
    /// `chunk` inbox rows a transaction, in primary-key order, so that the rows it writes are
    /// held for milliseconds beside a daemon of the previous release. Such a daemon keeps storing
    /// leads without a channel until it is replaced: those stay "unknown" in the report.
    @discardableResult
    public static func backfillPlansAndChannels(
        _ db: PostgresConnection, chunk: Int = 2000,
        logger: Logger
    ) async throws -> (plans: Int, channels: Int) {
        let started = ContinuousClock.now
        var after = (source: "", eventId: "")
        var plans = 0
        var channels = 0
        var read = 0
        var unreadable = 0
        while true {
            let from = after
            let page = try await db.transaction {
                c -> (rows: Int, last: (String, String)?, plans: Int, channels: Int, unreadable: Int) in
                let rows = try c.query(
                    """
                    SELECT source, event_id, body FROM inbox
                    WHERE (source, event_id) > ($1, $2)
                      AND type IN ('provisioning.service.activated', 'provisioning.lead.created')
                      AND octet_length(body) > 0
                    ORDER BY source, event_id LIMIT $3
                    """, [.text(from.source), .text(from.eventId), .int(Int64(chunk))])
                var planFacts: [(account: String, at: Instant, plan: String)] = []
                var leadChannels: [(lead: String, at: Instant, channel: String)] = []
                var unreadable = 0
                for row in rows {
                    guard case .success(let event) = classify(body: try row.decode("body", as: [UInt8].self)) else {
                        unreadable += 1
                        continue
                    }
                    for case .planChosen(let account, let plan, let at) in event.lifecycleFacts {
                        planFacts.append((account, at, plan))
                    }
                    for (fact, channel) in InboundEvent.leadChannels([event]) {
                        if case .leadCreated(let lead, let at, _, _, _, _) = fact {
                            leadChannels.append((lead, at, channel.rawValue))
                        }
                    }
                }
                let addedPlans =
                    planFacts.isEmpty
                    ? 0
                    : try c.execute(
                        """
                        INSERT INTO facts (kind, at, account_id, plan_id)
                        SELECT DISTINCT 'plan', u.at, u.a, u.p FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS u(a, at, p)
                        WHERE EXISTS (SELECT 1 FROM facts f WHERE f.account_id = u.a AND f.kind = 'activated' AND f.at = u.at)
                          AND NOT EXISTS (SELECT 1 FROM facts f WHERE f.account_id = u.a AND f.kind = 'plan' AND f.at = u.at
                                                                  AND f.plan_id = u.p)
                        """,
                        [
                            .textArray(planFacts.map(\.account)), .textArray(planFacts.map { $0.at.rfc3339 }),
                            .textArray(planFacts.map(\.plan)),
                        ])
                let setChannels =
                    leadChannels.isEmpty
                    ? 0
                    : try c.execute(
                        """
                        UPDATE facts f SET channel = u.ch
                        FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS u(l, at, ch)
                        WHERE f.lead_id = u.l AND f.kind = 'lead' AND f.at = u.at AND f.channel IS NULL
                        """,
                        [
                            .textArray(leadChannels.map(\.lead)), .textArray(leadChannels.map { $0.at.rfc3339 }),
                            .textArray(leadChannels.map(\.channel)),
                        ])
                let last = try rows.last.map {
                    (try $0.decode("source", as: String.self), try $0.decode("event_id", as: String.self))
                }
                return (rows.count, last, Int(addedPlans), Int(setChannels), unreadable)
            }
            read += page.rows
            plans += page.plans
            channels += page.channels
            unreadable += page.unreadable
            guard page.rows == chunk, let last = page.last else { break }
            after = (last.0, last.1)
        }
        logger.info(
            "plans and lead channels backfilled from the inbox",
            metadata: [
                "bodies": "\(read)", "plan_facts": "\(plans)", "lead_channels": "\(channels)",
                "unreadable": "\(unreadable)",
                "seconds": "\(String(format: "%.1f", (ContinuousClock.now - started).inSeconds))",
            ])
        return (plans, channels)
    }
}
