import AMQP
import Foundation
import Histogram
import ReferralCore

/// Monotonic nanoseconds; publish and arrival are stamped in this one process, so no clock
/// skew enters the latency.
func monotonicNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// Consumes the observer queue (bound to everything the worker publishes) on its own
/// connection and thread, as a downstream service would.
///
/// Each phase arms it with what to look for: the sentinel account of a backlog (its
/// `referral.code.issued` ends the drain), the codes of seeded referrers, or the send times of
/// the latency phase's messages, matched by the correlating key of the event they cause.
/// `@unchecked Sendable`: what the consuming task records is only touched under `lock`;
/// `task` is set by `start` and cancelled by `stop`, both called by the one phase driving it.
final class Observer: @unchecked Sendable {
    private let lock = NSLock()
    private var sentinelNeedle: [UInt8]?
    private var sentinelSeenAt: UInt64?
    private var collectingCodes = false
    private var codes: [String: String] = [:]
    private var sendTimes: [String: UInt64] = [:]
    private var latency = Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
    private var task: Task<Void, any Error>?

    func start(url: AMQPURL, queue: String) async throws {
        let connection = try await AMQPConnection.connect(
            url, heartbeatSeconds: 30, connectionName: "bench observer",
            logger: benchLogger)
        try await connection.consume(queue: queue, prefetch: 2000)
        task = Task.detached { [self] in
            while !Task.isCancelled {
                let batch = try await connection.nextDeliveries(max: 1000, wait: .milliseconds(100))
                guard let last = batch.last else { continue }
                take(batch, at: monotonicNanos())
                try await connection.ack(last.deliveryTag, multiple: true)
            }
            await connection.close()
        }
    }

    func stop() { task?.cancel() }

    private func take(_ batch: [Delivery], at now: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        for d in batch {
            if let needle = sentinelNeedle, d.routingKey == PublishedType.codeIssued.rawValue, contains(d.body, needle)
            {
                sentinelSeenAt = now
            }
            guard collectingCodes || !sendTimes.isEmpty else { continue }
            guard let data = (try? JSONValue.parse(d.body))?.objectValue?["data"]?.objectValue else { continue }
            let key: String?
            switch d.routingKey {
            case PublishedType.codeIssued.rawValue:
                if collectingCodes, let a = data["account_id"]?.stringValue, let c = data["code"]?.stringValue {
                    codes[a] = c
                }
                key = data["account_id"]?.stringValue.map { "code:\($0)" }
            case PublishedType.friendOfferGranted.rawValue:
                key = data["lead_id"]?.stringValue.map { "offer:\($0)" }
            case PublishedType.statusChanged.rawValue:
                if let lead = data["lead_id"]?.stringValue, let to = data["to"]?.stringValue {
                    key = "status:\(lead):\(to)"
                } else {
                    key = nil
                }
            default:
                key = nil
            }
            if let key, let sent = sendTimes.removeValue(forKey: key), now > sent {
                _ = latency.record((now - sent) / 1000)
            }
        }
    }

    func expectSentinel(account: String) {
        lock.lock()
        defer { lock.unlock() }
        sentinelNeedle = Array(#""account_id":"\#(account)""#.utf8)
        sentinelSeenAt = nil
    }

    var sentinelArrival: UInt64? {
        lock.lock()
        defer { lock.unlock() }
        return sentinelSeenAt
    }

    func collectCodes(_ on: Bool) {
        lock.lock()
        collectingCodes = on
        lock.unlock()
    }
    var collectedCodes: [String: String] {
        lock.lock()
        defer { lock.unlock() }
        return codes
    }

    /// Registers the intended send time of messages about to be published (open loop: the
    /// schedule's time, not the moment the publish call got to run, so a stalled publisher
    /// cannot hide latency).
    func expect(_ keys: [String], sentAt: [UInt64]) {
        lock.lock()
        defer { lock.unlock() }
        for (k, t) in zip(keys, sentAt) { sendTimes[k] = t }
    }

    var pendingCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return sendTimes.count
    }
    /// Keys still waiting for their downstream event, sorted (for the report of a run).
    var pendingKeys: [String] {
        lock.lock()
        defer { lock.unlock() }
        return sendTimes.keys.sorted()
    }

    func resetLatency() {
        lock.lock()
        defer { lock.unlock() }
        latency.reset()
        sendTimes.removeAll()
    }

    var latencyHistogram: Histogram<UInt64> {
        lock.lock()
        defer { lock.unlock() }
        return latency
    }

    private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count, let first = needle.first else { return false }
        var i = 0
        let end = haystack.count - needle.count
        while i <= end {
            if haystack[i] == first, haystack[i..<(i + needle.count)].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }
}
