import AMQP
import Logging

/// `referrald dlq replay`: moves dead letters back to the inbox once their cause is fixed.
public enum DeadLetterReplay {
    public struct Result: Sendable, Equatable {
        public var replayed = 0
        /// Dead letters left in place because they did not match the filter.
        public var kept = 0

        public init(replayed: Int = 0, kept: Int = 0) {
            self.replayed = replayed
            self.kept = kept
        }
    }

    /// Replays the messages in the DLQ at the time of the call (later arrivals wait for the next
    /// run, so a message that fails again cannot make the replay loop forever). Each is
    /// published straight to the inbox queue through the default exchange — not to its
    /// upstream exchange, which would hand a second copy to every other consumer of that
    /// exchange — with its body and properties unchanged and the `x-referrald-*` headers
    /// removed, and acked in the DLQ only after the broker confirmed the copy.
    /// `onlyError` replays only dead letters with that `x-referrald-error`.
    public static func run(settings: Settings, onlyError: String?, limit: Int?, logger: Logger) async throws -> Result {
        let reader = try await settings.connectAMQP(name: "referrald dlq replay (reader)", logger: logger)
        let writer = try await settings.connectAMQP(name: "referrald dlq replay (writer)", logger: logger)
        defer { Task { await reader.close(); await writer.close() } }
        try await writer.enableConfirms()
        let waiting = Int(try await reader.declareQueue(settings.deadLetterQueue, durable: true, passive: true).messageCount)
        let budget = min(waiting, limit ?? waiting)
        var result = Result()
        if budget == 0 { return result }
        try await reader.consume(queue: settings.deadLetterQueue, prefetch: UInt16(min(budget, 256)))
        var seen = 0
        while seen < waiting, result.replayed < budget {
            let batch = try await reader.nextDeliveries(max: min(256, waiting - seen), wait: .seconds(2))
            if batch.isEmpty { break }
            seen += batch.count
            var matching: [Delivery] = []
            for d in batch {
                let code: String? = if case .string(let c)? = d.headers["x-referrald-error"] { c } else { nil }
                if (onlyError == nil || code == onlyError) && result.replayed + matching.count < budget {
                    matching.append(d)
                } else {
                    // Requeued at once would be read again in this run: the count of messages
                    // waiting at the start (`seen < waiting`) stops that.
                    try await reader.reject(d.deliveryTag, requeue: true)
                    result.kept += 1
                }
            }
            if matching.isEmpty { continue }
            let outcomes = try await writer.publish(matching.map { d in
                OutgoingMessage(exchange: "", routingKey: settings.inboxQueue, body: d.body,
                                headers: d.headers.filter { !$0.key.hasPrefix("x-referrald-") && $0.key != "x-delivery-count" },
                                messageId: d.messageId, contentType: d.contentType, persistent: true, mandatory: true,
                                timestamp: d.timestamp)
            })
            for (d, outcome) in zip(matching, outcomes) {
                if outcome == .confirmed {
                    try await reader.ack(d.deliveryTag)
                    result.replayed += 1
                } else {
                    try await reader.reject(d.deliveryTag, requeue: true)
                    result.kept += 1
                    logger.warning("replay not accepted by the broker; dead letter kept", metadata: ["outcome": "\(outcome)"])
                }
            }
        }
        return result
    }
}
