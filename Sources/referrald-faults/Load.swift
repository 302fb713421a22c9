import AMQP
import Foundation
import ReferralCore
import ReferralTestKit
import ReferralTestWorld

/// A realistic referral load whose rewards are known before it is sent. Referrers activate and
/// get codes; each referral is a friend's lead with a code, an order, an install and an activation
/// (then, after the 2 s hold, two rewards), or a lead and order cancelled before any milestone
/// (lost: no reward). Every friend has its own household and at most four leads share a code, so
/// no fraud rule, lead limit or yearly cap takes a reward away: the oracle stays exact.
struct Plan {
    struct Referral {
        let lead: String
        let referrer: Int
        let friend: String
        let cancelled: Bool
    }
    enum Step {
        case lead(Int)
        case order(Int)
        case install(Int)
        case activation(Int)
        case cancel(Int)
    }

    let prefix: String
    let referrers: [String]
    let referrals: [Referral]
    /// Phase two, in sending order: blocks of referrals go through their stages together, so
    /// events of many referrals interleave as they would from a real provisioning system.
    let steps: [Step]

    init(prefix: String, events: Int, rng: inout SeededGenerator) {
        self.prefix = prefix
        // ≈ 4.15 events per referral: 3.9 for the referral (10 % cancelled) + a quarter referrer.
        let count = max(4, Int(Double(events) / 4.15))
        let referrerCount = (count + 3) / 4
        referrers = (0..<referrerCount).map { "\(prefix)-r\($0)" }
        referrals = (0..<count).map { j in
            Referral(
                lead: "\(prefix)-lead\(j)", referrer: j % referrerCount, friend: "\(prefix)-f\(j)",
                cancelled: rng.next() % 10 == 0)
        }
        let referrals = self.referrals
        var steps: [Step] = []
        for block in stride(from: 0, to: count, by: 64) {
            let members = Array(block..<min(count, block + 64))
            steps += members.map { .lead($0) }
            steps += members.map { .order($0) }
            steps += members.map { referrals[$0].cancelled ? .cancel($0) : .install($0) }
            steps += members.filter { !referrals[$0].cancelled }.map { .activation($0) }
        }
        self.steps = steps
    }

    var eventCount: Int { referrers.count + steps.count }

    /// (lead, beneficiary) of every reward billing must receive exactly once.
    var expectedRewards: Set<LeadReward> {
        Set(
            referrals.filter { !$0.cancelled }.flatMap { r in
                [LeadReward(lead: r.lead, beneficiary: "referrer"), LeadReward(lead: r.lead, beneficiary: "friend")]
            })
    }

    func referrerActivation(_ i: Int) -> UpstreamEvent {
        UpstreamEvent(
            id: "\(prefix)-ra\(i)", type: "provisioning.service.activated",
            data: [
                "account_id": referrers[i], "activated_at": now(-86_400), "household_id": "\(referrers[i])-hh",
                "segment": "consumer",
            ])
    }

    func event(_ step: Step, codes: [String: String]) -> UpstreamEvent {
        switch step {
        case .lead(let j):
            let r = referrals[j]
            return UpstreamEvent(
                id: "\(prefix)-l\(j)", type: "provisioning.lead.created",
                data: [
                    "lead_id": r.lead, "referral_code": codes[referrers[r.referrer]] ?? "ZZZZ-ZZZZ-0",
                    "household_id": "\(r.friend)-hh", "segment": "consumer", "channel": "web",
                ])
        case .order(let j):
            return UpstreamEvent(
                id: "\(prefix)-o\(j)", type: "provisioning.order.placed",
                data: [
                    "lead_id": referrals[j].lead, "account_id": referrals[j].friend,
                ])
        case .install(let j):
            return UpstreamEvent(
                id: "\(prefix)-i\(j)", type: "provisioning.install.completed",
                data: [
                    "account_id": referrals[j].friend, "completed_at": now(),
                ])
        case .activation(let j):
            return UpstreamEvent(
                id: "\(prefix)-a\(j)", type: "provisioning.service.activated",
                data: [
                    "account_id": referrals[j].friend, "activated_at": now(),
                    "household_id": "\(referrals[j].friend)-hh",
                    "segment": "consumer",
                ])
        case .cancel(let j):
            return UpstreamEvent(
                id: "\(prefix)-c\(j)", type: "provisioning.service.cancelled",
                data: [
                    "account_id": referrals[j].friend, "cancelled_at": now(), "reason": "changed mind",
                ])
        }
    }

    private func now(_ offsetSeconds: Double = 0) -> String {
        Instant(microseconds: Int64((Date().timeIntervalSince1970 + offsetSeconds) * 1_000_000)).rfc3339
    }
}

struct LeadReward: Hashable, Sendable {
    let lead: String
    let beneficiary: String
}

struct UpstreamEvent: Sendable {
    let id: String
    let type: String
    let body: [UInt8]

    init(id: String, type: String, data: [String: String]) {
        self.id = id
        self.type = type
        let source = String(type.split(separator: ".")[0])
        let object: [String: Any] = [
            "specversion": "1.0", "id": id, "source": source, "type": type,
            "time": data["activated_at"] ?? data["completed_at"] ?? data["cancelled_at"]
                ?? Instant(microseconds: Int64(Date().timeIntervalSince1970 * 1_000_000)).rfc3339,
            "datacontenttype": "application/json", "data": data,
        ]
        body = Array(try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }

    init(raw body: [UInt8], type: String) {
        self.id = ""
        self.type = type
        self.body = body
    }
}

/// Publishes upstream events as the producers would (to the exchange of the type's prefix,
/// routing key = type, persistent, confirmed) and rides out the broker faults the suite causes:
/// a batch is republished until confirmed. A republished event keeps its CloudEvents id, which
/// the daemon's inbox deduplicates, exactly as with a real producer's retry.
actor UpstreamPublisher {
    let world: World
    private var connection: AMQPConnection?
    /// Bodies published more than once, with how many extra times: a chunk the broker did not
    /// confirm in full goes out again whole. A valid event's repeat is a duplicate the inbox
    /// drops; bad input has no id to drop it by, so each copy is dead-lettered.
    private(set) var resent: [[UInt8]: Int] = [:]

    init(world: World) { self.world = world }

    func publish(_ events: [UpstreamEvent], timeout: Duration = .seconds(300)) async throws {
        let deadline = ContinuousClock.now + timeout
        let messages = events.map { world.testWorld.upstreamMessage(type: $0.type, body: $0.body) }
        var attempt = 0
        while true {
            if attempt > 0 { for e in events { resent[e.body, default: 0] += 1 } }
            attempt += 1
            do {
                if connection == nil || connection?.isOpen == false {
                    connection = try await world.services.connectBroker(
                        heartbeatSeconds: 10,
                        connectionName: "referrald-faults upstream", logger: quietLogger)
                    try await connection!.enableConfirms()
                }
                let outcomes = try await connection!.publish(messages)
                if outcomes.allSatisfy({ $0 == .confirmed }) { return }
            } catch {
                await connection?.close()
                connection = nil
            }
            if ContinuousClock.now > deadline { throw SuiteError("upstream publish not confirmed within \(timeout)") }
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    /// Sends `events` paced at `rate` per second, in batches of 50.
    func send(_ events: [UpstreamEvent], rate: Int) async throws {
        let start = ContinuousClock.now
        var done = 0
        for batch in stride(from: 0, to: events.count, by: 50) {
            let chunk = Array(events[batch..<min(events.count, batch + 50)])
            try await publish(chunk)
            done += chunk.count
            let due = start + .milliseconds(Int64(done) * 1000 / Int64(max(rate, 1)))
            if due > ContinuousClock.now { try await Task.sleep(until: due) }
        }
    }

    func close() async {
        await connection?.close()
        connection = nil
    }
}
