import AMQP
import Foundation
import ReferralCore

/// Bodies that must become dead letters with a given `x-referrald-error`, never a crash, a hang
/// or unbounded memory: the contract's invalid examples, our own invalid fixtures, and bodies
/// built at each input limit plus one.
struct HostileInput: Sendable {
    let label: String
    let body: [UInt8]
    let routingKey: String
    let code: String

    static func all(contractDirectory: String?, fixturesDirectory: String?) -> [HostileInput] {
        var inputs: [HostileInput] = []
        if let dir = contractDirectory.map({ $0 + "/examples/invalid" }),
            let manifest = readObject(dir + "/manifest.json")
        {
            for (file, code) in manifest.sorted(by: { $0.key < $1.key }) {
                guard let code = code as? String, let body = FileManager.default.contents(atPath: dir + "/" + file)
                else { continue }
                inputs.append(
                    HostileInput(
                        label: "contract " + file, body: Array(body), routingKey: routingKey(of: body), code: code))
            }
        }
        if let dir = fixturesDirectory, let manifest = readObject(dir + "/manifest.json") {
            for (file, entry) in manifest.sorted(by: { $0.key < $1.key }) {
                guard let code = (entry as? [String: Any])?["code"] as? String,
                    let body = FileManager.default.contents(atPath: dir + "/" + file)
                else { continue }
                inputs.append(
                    HostileInput(
                        label: "fixture " + file, body: Array(body), routingKey: routingKey(of: body), code: code))
            }
        }
        return inputs + generated()
    }

    /// One past each limit of the contract (256 KiB body, depth 64, 16 KiB strings, 100,000
    /// values), and far past the depth limit, which a recursive parser would crash on.
    static func generated() -> [HostileInput] {
        func envelope(_ data: String, id: String) -> [UInt8] {
            Array(
                """
                {"specversion":"1.0","id":"\(id)","source":"crm","type":"crm.ticket.opened","time":"2027-03-01T08:00:00Z",\
                "datacontenttype":"application/json","data":\(data)}
                """.utf8)
        }
        let key = "crm.ticket.opened"
        return [
            HostileInput(
                label: "body 300 KiB",
                body: envelope(
                    "{\"account_id\":\"a\",\"pad\":\"\(String(repeating: "x", count: 300 * 1024))\"}", id: "h-big"),
                routingKey: key, code: "too_large"),
            HostileInput(
                label: "nesting 65",
                body: envelope(String(repeating: "[", count: 65) + String(repeating: "]", count: 65), id: "h-deep65"),
                routingKey: key, code: "not_json"),
            HostileInput(
                label: "nesting 200,000 (unclosed, over the size limit)",
                body: envelope(String(repeating: "[", count: 200_000), id: "h-deep"),
                routingKey: key, code: "not_json"),
            HostileInput(
                label: "nesting 300,000 (over the size limit)",
                body: envelope(String(repeating: "[", count: 300_000), id: "h-deeper"),
                routingKey: key, code: "too_large"),
            // Long strings and many values inside the size limit are data, not a fault: a
            // ticket with a 200 KB description is a legitimate event (contract, "Bad input").
            HostileInput(
                label: "data with 100,001 values (not an object)",
                body: envelope("[" + Array(repeating: "0", count: 100_001).joined(separator: ",") + "]", id: "h-many"),
                routingKey: key, code: "invalid_data"),
            HostileInput(
                label: "number 16 KiB + 1 digits",
                body: envelope("{\"n\":1\(String(repeating: "0", count: 16_384))}", id: "h-num"),
                routingKey: key, code: "invalid_data"),
        ]
    }

    /// Routed as what it claims to be; a body without a consumed type goes as an install event.
    private static func routingKey(of body: Data) -> String {
        let type = (try? JSONSerialization.jsonObject(with: body) as? [String: Any])?["type"] as? String
        return type.flatMap { ConsumedType(rawValue: $0)?.rawValue } ?? "provisioning.install.completed"
    }

    /// The headers that tell a copy's path: parked and moved, retried at the delivery limit.
    private static func trace(_ d: Delivery) -> String {
        let keys = [
            "x-referrald-error", "x-referrald-detail", "x-delivery-count", "x-referrald-original-routing-key",
            "x-referrald-moved",
        ]
        let parts = keys.compactMap { key in d.headers[key].map { "\(key)=\($0)" } }
        return "{redelivered=\(d.redelivered) " + parts.joined(separator: " ") + "}"
    }

    private static func readObject(_ path: String) -> [String: Any]? {
        FileManager.default.contents(atPath: path).flatMap {
            try? JSONSerialization.jsonObject(with: $0) as? [String: Any]
        }
    }

    /// Every hostile body is in the dead-letter queue, unchanged, with its code; nothing else is.
    /// A body the load published again (`UpstreamPublisher.resent`) reached the daemon again,
    /// and each of its copies is owed a dead letter of the same code.
    static func check(_ inputs: [HostileInput], resent: [[UInt8]: Int], world: World, notes: inout [String]) async
        -> [String]
    {
        var failures: [String] = []
        var got: [[UInt8]: [String]] = [:]
        var total = 0
        // How each copy reached the DLQ, to tell a duplicate's path when one appears.
        var seen: [[UInt8]: [String]] = [:]
        do {
            let amqp = try await world.services.connectBroker(
                heartbeatSeconds: 30,
                connectionName: "referrald-faults dlq", logger: quietLogger)
            try await amqp.consume(queue: world.settings.deadLetterQueue, prefetch: 500)
            let deadline = ContinuousClock.now + .seconds(20)
            let expected = inputs.reduce(0) { $0 + 1 + (resent[$1.body] ?? 0) }
            while total < expected, ContinuousClock.now < deadline {
                let batch = try await amqp.nextDeliveries(max: 500, wait: .milliseconds(200))
                for d in batch {
                    if case .string(let code) = d.headers["x-referrald-error"] {
                        got[d.body, default: []].append(code)
                    } else {
                        got[d.body, default: []].append("(no x-referrald-error)")
                    }
                    seen[d.body, default: []].append(Self.trace(d))
                }
                total += batch.count
                if let last = batch.last { try await amqp.ack(last.deliveryTag, multiple: true) }
            }
            await amqp.close()
        } catch {
            return ["reading the dead-letter queue: \(error)"]
        }
        for input in inputs {
            guard var codes = got[input.body], let i = codes.firstIndex(of: input.code) else {
                failures.append("\(input.label): not dead-lettered as \(input.code) (got \(got[input.body] ?? []))")
                continue
            }
            codes.remove(at: i)
            // The copies of a body published again: as many more dead letters, of its code.
            for _ in 0..<(resent[input.body] ?? 0) {
                guard let j = codes.firstIndex(of: input.code) else {
                    failures.append("\(input.label): published again but its copy not dead-lettered as \(input.code)")
                    break
                }
                codes.remove(at: j)
            }
            got[input.body] = codes.isEmpty ? nil : codes
        }
        let resentInputs = inputs.filter { resent[$0.body] != nil }
        if !resentInputs.isEmpty {
            notes.append(
                "the load published \(resentInputs.count) hostile input(s) again (a chunk not confirmed in full): "
                    + resentInputs.prefix(5).map(\.label).joined(separator: ", "))
        }
        let extra = got.values.reduce(0) { $0 + $1.count }
        if extra > 0 {
            failures.append("\(extra) unexpected dead letter(s): \(got.values.flatMap { $0 }.prefix(5))")
            for body in got.keys.prefix(5) {
                let label = inputs.first { $0.body == body }?.label ?? "not a hostile input"
                notes.append("unexpected dead letter of \(label): copies \(seen[body] ?? [])")
            }
        }
        notes.append(
            "hostile inputs: \(inputs.count) sent, \(total) dead-lettered, \(inputs.count - failures.count) with the right code"
        )
        return failures
    }
}
