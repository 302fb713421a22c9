import AMQP
import Foundation
import ReferralCore
import ReferralTestKit
import Testing

/// Builds upstream events for a scenario and reads what the worker published.
struct Scenario {
    let bed: TestBed
    private var counter = 0

    init(bed: TestBed) { self.bed = bed }

    /// A programs file with seconds instead of days, so holds and retries pass during a test.
    static func fastPrograms(
        hold: String = "2s", clawback: String = "referrer",
        milestone: String = "service_activated"
    ) throws -> String {
        let yaml = FastPrograms.yaml(hold: hold, clawback: clawback, milestone: milestone)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("programs-\(UUID().uuidString).yaml")
            .path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func time(_ offsetSeconds: Double = 0) -> String {
        Instant(microseconds: Int64((Date().timeIntervalSince1970 + offsetSeconds) * 1_000_000)).rfc3339
    }

    /// Publishes one upstream event with the given data, dated now (or `at`).
    mutating func send(_ type: String, _ data: [String: Any], at: String = Scenario.time()) async throws {
        counter += 1
        let source = String(type.split(separator: ".")[0])
        let event: [String: Any] = [
            "specversion": "1.0", "id": "\(bed.name)-\(counter)", "source": source, "type": type,
            "time": at, "datacontenttype": "application/json", "data": data,
        ]
        try await bed.publish(Array(try JSONSerialization.data(withJSONObject: event)), type: type)
    }

    /// A published event, parsed.
    struct Published {
        let type: String
        let id: String
        /// The CloudEvents `time`: when the worker decided it.
        let time: String
        let data: [String: Any]
        let body: [UInt8]
    }

    /// Reads published events until `predicate` holds for the collected list, or times out.
    func collect(
        into seen: inout [Published], timeout: Duration = .seconds(20),
        until predicate: ([Published]) -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while !predicate(seen), ContinuousClock.now < deadline {
            for d in try await bed.take(from: bed.observerQueue, count: 50, timeout: .milliseconds(300)) {
                let object = try JSONSerialization.jsonObject(with: Data(d.body)) as? [String: Any] ?? [:]
                seen.append(
                    Published(
                        type: object["type"] as? String ?? "", id: object["id"] as? String ?? "",
                        time: object["time"] as? String ?? "",
                        data: object["data"] as? [String: Any] ?? [:], body: d.body))
            }
        }
    }

    /// Every published body validates against the contract's schema for its type (skipped, and
    /// said so, without the contract).
    static func expectSchemaValid(_ events: [Published]) async throws {
        guard Contract.available else {
            Contract.printSkipOnce()
            return
        }
        for e in events {
            let error = try await Contract.schemaError(of: e.body, type: e.type)
            #expect(error == nil, "\(e.type): \(error ?? "")")
        }
    }
}

extension Array where Element == Scenario.Published {
    func of(_ type: String) -> [Scenario.Published] { filter { $0.type == type } }

    func statuses(_ referral: String) -> [String] {
        of("referral.status.changed").filter { $0.data["referral_id"] as? String == referral }
            .map { "\($0.data["from"] as? String ?? "-")>\($0.data["to"] as? String ?? "")" }
    }
}

extension Scenario {
    /// A programs file for ask tests: a consumer and a business program whose ask settings
    /// (seconds, not days) each test chooses.
    struct AskProgram {
        var moments = "[post_install, post_activation, speed_test, support_win, bill_savings, periodic]"
        var delayAfterInstall = "2s"
        var minGap = "1h"
        var maxPerYear = 4
        var periodicEvery = "90d"
        var stalledAfter = "7d"
        var attributionWindow = "90d"
        var hold = "30d"
        /// A `budget:` mapping (`{ monthly_minor: N, pause_asks_at: F }`), or none.
        var budget: String?
    }

    static func askPrograms(consumer: AskProgram, business: AskProgram = AskProgram()) throws -> String {
        func program(_ id: String, _ p: AskProgram) -> String {
            """
              - id: \(id)
                segment: \(id)
                currency: USD
                share_url: "https://example.net/\(id)/{code}"
                friend_offer_text: "Join with my link: priority installation and a credit."
                referrer_reward: { kind: bill_credit, amount_minor: 5000 }
                friend_reward: { kind: bill_credit, amount_minor: 2500, priority_install: true }
                qualify: { milestone: service_activated, hold: \(p.hold) }
                attribution_window: \(p.attributionWindow)
                clawback_window: 60d
                clawback: referrer
                limits: { max_rewards_per_referrer_per_year: 10, max_leads_per_code_per_day: 5 }
                fraud: { reject_same_household: true, reject_same_contact: true }
                asks:
                  moments: \(p.moments)
                  delay_after_install: \(p.delayAfterInstall)
                  min_gap: \(p.minGap)
                  max_per_year: \(p.maxPerYear)
                  periodic_every: \(p.periodicEvery)
                followup: { stalled_after: \(p.stalledAfter) }
            """ + (p.budget.map { "\n    budget: \($0)" } ?? "")
        }
        let yaml = "programs:\n" + program("consumer", consumer) + "\n" + program("business", business) + "\n"
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("programs-\(UUID().uuidString).yaml")
            .path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

extension Array where Element == Scenario.Published {
    /// Asks sent to an account, as their moments, in order of arrival.
    func asks(_ account: String) -> [String] {
        of("referral.ask.due").filter { $0.data["account_id"] as? String == account }.compactMap {
            $0.data["moment"] as? String
        }
    }
}
