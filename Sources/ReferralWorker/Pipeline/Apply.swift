import Foundation
import Postgres
import ReferralCore
import ReferralStore

/// Applies one batch of valid events inside the caller's transaction: record them in the inbox
/// (deduplication), decide with the core, write state and outbox rows.
enum Apply {
    /// A valid event with the exact bytes it arrived as, which the inbox keeps.
    struct Received: Sendable {
        var event: InboundEvent
        var body: [UInt8]
    }

    static func batch(_ c: isolated PostgresConnection, events: [Received], programs: ProgramBook,
                      now: Instant) throws {
        let fresh = try Store.recordInbox(c, events.map(inboxEntry)).map { events[$0].event }
        try issueCodes(c, fresh: fresh, programs: programs, now: now)
    }

    /// `provisioning.service.activated` makes the account a customer with a code, once.
    static func issueCodes(_ c: isolated PostgresConnection, fresh: [InboundEvent], programs: ProgramBook,
                           now: Instant) throws {
        let activations: [CodeIssuance.Activation] = fresh.compactMap {
            guard case .serviceActivated(let a) = $0.payload else { return nil }
            return .init(accountId: a.accountId, activatedAt: a.activatedAt, segment: a.segment?.rawValue)
        }
        if activations.isEmpty { return }
        let existing = try Store.codes(c, accounts: activations.map(\.accountId))
        var pending = CodeIssuance.firstActivations(activations, accountsWithCodes: Set(existing.keys))
        var rng = SystemRandomNumberGenerator()
        var events: [OutgoingEvent] = []
        // A drawn code can collide with another account's (1 in 10^12 per draw while the table
        // is small); the unique constraint catches it and only those accounts draw again.
        for _ in 0..<8 where !pending.isEmpty {
            var rows: [(account: String, code: String, program: String, issuedAt: Instant)] = []
            var drawn: [String: (ReferralCode, Program)] = [:]
            for a in pending {
                guard let program = programs.program(forSegment: a.segment) else { continue }
                let code = CodeIssuance.draw(using: &rng)
                drawn[a.accountId] = (code, program)
                rows.append((a.accountId, code.canonical, program.id, a.activatedAt))
            }
            let collided = try Store.insertCodes(c, rows)
            for a in pending where !collided.contains(a.accountId) {
                guard let (code, program) = drawn[a.accountId] else { continue }
                events.append(.codeIssued(
                    id: UUID().uuidString.lowercased(), time: now, accountId: a.accountId, code: code,
                    shareURL: program.shareURL(for: code), programId: program.id))
            }
            pending = pending.filter { collided.contains($0.accountId) }
        }
        try Store.enqueue(c, events)
    }

    /// The keys the fact queries look an event up by, and the time the fact happened.
    static func inboxEntry(_ received: Received) -> InboxEntry {
        let e = received.event
        var account: String?
        var lead: String?
        var factTime = e.time
        switch e.payload {
        case .leadCreated(let p): lead = p.leadId
        case .orderPlaced(let p): lead = p.leadId; account = p.accountId
        case .installScheduled(let p): account = p.accountId
        case .installCompleted(let p): account = p.accountId; factTime = p.completedAt
        case .serviceActivated(let p): account = p.accountId; factTime = p.activatedAt
        case .serviceCancelled(let p): account = p.accountId; factTime = p.cancelledAt
        case .speedtestCompleted(let p): account = p.accountId
        case .ticketResolved(let p): account = p.accountId
        case .preferencesChanged(let p): account = p.accountId
        case .ticketOpened(let p): account = p.accountId
        case .customerErased(let p): account = p.accountId
        case .invoiceOverdue(let p): account = p.accountId
        case .invoicePaid(let p): account = p.accountId
        case .creditApplied(let p): account = p.accountId
        case .creditRejected: break
        }
        return InboxEntry(source: e.source, eventId: e.id, type: e.type.rawValue, accountId: account,
                          leadId: lead, factTime: factTime, body: received.body)
    }
}
