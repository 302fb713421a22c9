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
    /// `onlyError` replays only dead letters with that `x-referrald-error`; the others go back
    /// to the tail of the DLQ unchanged (a confirmed copy, then the ack), as `dlq erase` keeps
    /// them. Rejected with requeue, they went back to their old place at the head of the queue
    /// and were handed out again first: on a DLQ larger than the prefetch (256) a filtered run
    /// read the same kept messages until its count ran out and never reached the matching ones
    /// behind them. RabbitMQ does not confirm acks: acks sent one frame each just before the
    /// reader closed were dropped with its channel (29 of 340 in one test run), and those dead
    /// letters came back beside their copies; each batch is now settled with one `multiple`
    /// ack (`QueueTransfer.settle`). A crash between a confirm and the ack still leaves a
    /// duplicate, which the inbox deduplicates.
    public static func run(settings: Settings, onlyError: String?, limit: Int?, logger: Logger) async throws -> Result {
        try await QueueTransfer.withConnections(settings, name: "referrald dlq replay", logger: logger) {
            reader, writer in
            try await replay(
                reader: reader, writer: writer, settings: settings, onlyError: onlyError, limit: limit,
                logger: logger)
        }
    }

    static func replay(
        reader: AMQPConnection, writer: AMQPConnection, settings: Settings, onlyError: String?, limit: Int?,
        logger: Logger
    ) async throws -> Result {
        let waiting = Int(
            try await reader.declareQueue(settings.deadLetterQueue, durable: true, passive: true).messageCount)
        let budget = min(waiting, limit ?? waiting)
        var result = Result()
        if budget == 0 { return result }
        try await reader.consume(queue: settings.deadLetterQueue, prefetch: UInt16(min(budget, 256)))
        var seen = 0
        while seen < waiting, result.replayed < budget {
            let batch = try await reader.nextDeliveries(max: min(256, waiting - seen), wait: .seconds(2))
            if batch.isEmpty { break }
            seen += batch.count
            var moves: [(delivery: Delivery, message: OutgoingMessage, replayed: Bool)] = []
            for d in batch {
                let code: String? = if case .string(let c)? = d.headers["x-referrald-error"] { c } else { nil }
                if (onlyError == nil || code == onlyError) && result.replayed + moves.filter(\.replayed).count < budget
                {
                    moves.append(
                        (
                            d,
                            .copy(of: d, to: settings.inboxQueue) { headers in
                                headers = headers.filter { !$0.key.hasPrefix("x-referrald-") }
                            }, true
                        ))
                } else {
                    // Back to the tail: the count of messages waiting at the start (`seen <
                    // waiting`) keeps this run from reading the copy again.
                    moves.append((d, .copy(of: d, to: settings.deadLetterQueue), false))
                }
            }
            let outcomes = try await writer.publish(moves.map(\.message))
            var back: [Delivery] = []
            for (move, outcome) in zip(moves, outcomes) {
                if outcome == .confirmed {
                    if move.replayed { result.replayed += 1 } else { result.kept += 1 }
                } else {
                    back.append(move.delivery)
                    result.kept += 1
                    logger.warning(
                        "replay not accepted by the broker; dead letter kept", metadata: ["outcome": "\(outcome)"])
                }
            }
            // The confirmed acked, the refused requeued, in as few frames as possible: the
            // reader closes right after (QueueTransfer.settle).
            try await QueueTransfer.settle(batch, requeue: back, on: reader)
        }
        return result
    }
}
