import AMQP
import Logging
import ReferralCore
import ReferralStore

/// `referrald dlq erase --account ID`: the right to erasure in the dead-letter queue, which keeps
/// bodies as they arrived, household, contact and free text included.
public enum DeadLetterErase {
    public struct Result: Sendable, Equatable, CustomStringConvertible {
        public var scanned = 0
        /// Replaced by a scrubbed copy (`Erasure.scrub`), still replayable.
        public var scrubbed = 0
        /// Acked without a copy: bodies about the account that are not JSON objects.
        public var dropped = 0
        /// Put back unchanged: other customers' dead letters, and the account's already scrubbed.
        public var kept = 0

        public init(scanned: Int = 0, scrubbed: Int = 0, dropped: Int = 0, kept: Int = 0) {
            self.scanned = scanned
            self.scrubbed = scrubbed
            self.dropped = dropped
            self.kept = kept
        }

        public var description: String { "scanned \(scanned), scrubbed \(scrubbed), dropped \(dropped), kept \(kept)" }
    }

    /// Reads the messages in the DLQ at the time of the call, once each, and decides each with
    /// `Erasure.deadLetter`. Every message read is settled before the next window is read:
    /// - a scrubbed copy, or the unchanged message when it is kept, is published to the tail of
    ///   the DLQ through the default exchange (never through the DLX, which would hand a copy to
    ///   every other queue bound to it) with its properties and headers, and the original is
    ///   acked only once the broker confirmed the copy;
    /// - a dropped message is acked.
    ///
    /// Kept messages are republished rather than rejected with requeue: a quorum queue hands a
    /// requeued message out again before the rest, so a run over a DLQ larger than the
    /// prefetch read the same kept messages over and over and never reached the tail (where the
    /// account's data could be). The count of messages waiting at the start bounds the run, so
    /// copies and later arrivals are not read again. What the broker pushed beyond that count
    /// (up to a prefetch window of copies) goes back when the reader closes, with its
    /// `x-delivery-count` raised by one, as `dlq replay`'s requeues raise it: a broker with a
    /// delivery limit on the DLQ (RabbitMQ 4 sets 20 by default) would drop a dead letter after
    /// that many runs. A crash between a confirm and its ack leaves the original and its copy
    /// both in the DLQ: a duplicate, which the inbox deduplicates on replay; a re-run finishes
    /// the job. So does an ack the broker dropped with the reader's channel as it closed
    /// (RabbitMQ does not confirm acks; each batch is settled with one `multiple` ack, which
    /// `QueueTransfer.settle` explains): the command runs pass after pass until one scrubs
    /// nothing.
    public static func run(settings: Settings, account: String, logger: Logger) async throws -> Result {
        // Leads and rewards of the account, when the database is configured: without them a
        // lead or a credit rejection of the account (which do not name it) would be kept.
        var leads: Set<String> = []
        var rewards: Set<String> = []
        if !settings.databaseURL.isEmpty {
            let db = try await settings.connectDatabase(name: "referrald dlq erase", logger: logger)
            let keys = try await db.accountKeys(account: account)
            await db.close()
            leads = Set(keys.leads)
            rewards = Set(keys.rewards)
        } else {
            logger.warning(
                "REFERRALD_DATABASE_URL not set: dead letters are matched by account id only, not by its leads and rewards"
            )
        }
        // Closed before returning: what the reader still holds is back in the DLQ when the
        // next pass (`referrald dlq erase` runs until one scrubs nothing) counts it.
        return try await QueueTransfer.withConnections(settings, name: "referrald dlq erase", logger: logger) {
            reader, writer in
            try await pass(
                reader: reader, writer: writer, settings: settings, account: account, leads: leads, rewards: rewards)
        }
    }

    static func pass(
        reader: AMQPConnection, writer: AMQPConnection, settings: Settings, account: String,
        leads: Set<String>, rewards: Set<String>
    ) async throws -> Result {
        let waiting = Int(
            try await reader.declareQueue(settings.deadLetterQueue, durable: true, passive: true).messageCount)
        var result = Result()
        if waiting == 0 { return result }
        try await reader.consume(queue: settings.deadLetterQueue, prefetch: UInt16(min(waiting, 256)))
        while result.scanned < waiting {
            let batch = try await reader.nextDeliveries(max: min(256, waiting - result.scanned), wait: .seconds(2))
            if batch.isEmpty { break }
            result.scanned += batch.count
            var copies: [(Delivery, OutgoingMessage, scrubbed: Bool)] = []
            for d in batch {
                switch Erasure.deadLetter(body: d.body, account: account, leads: leads, rewards: rewards) {
                case .drop:
                    result.dropped += 1
                case .scrub(let body):
                    copies.append((d, copy(of: d, body: body, scrubbed: true, queue: settings.deadLetterQueue), true))
                case .unrelated, .alreadyScrubbed:
                    copies.append(
                        (d, copy(of: d, body: d.body, scrubbed: false, queue: settings.deadLetterQueue), false))
                }
            }
            let outcomes = copies.isEmpty ? [] : try await writer.publish(copies.map(\.1))
            var refused: PublishOutcome?
            var back: [Delivery] = []
            for ((d, _, scrubbed), outcome) in zip(copies, outcomes) {
                if outcome == .confirmed {
                    if scrubbed { result.scrubbed += 1 } else { result.kept += 1 }
                } else {
                    // The original goes back where it was; the summary must not count it as
                    // scrubbed, and the run stops with an error so the operator runs it again.
                    back.append(d)
                    refused = outcome
                }
            }
            // The dropped and the confirmed acked, the refused requeued (QueueTransfer.settle).
            try await QueueTransfer.settle(batch, requeue: back, on: reader)
            if let refused {
                throw DeadLetterEraseError(
                    detail: "the broker did not accept a copy in \(settings.deadLetterQueue) (\(refused)); "
                        + "the originals stay, run the command again (so far: \(result))")
            }
        }
        return result
    }

    /// The message as it goes back to the DLQ. A scrubbed copy's `x-referrald-detail` keeps
    /// its field path and loses its reason, which quotes the offending value (a household id,
    /// a reason's text); `x-referrald-erased` tells an operator why.
    static func copy(of d: Delivery, body: [UInt8], scrubbed: Bool, queue: String) -> OutgoingMessage {
        .copy(of: d, to: queue, body: body) { headers in
            guard scrubbed else { return }
            if case .string(let detail)? = headers["x-referrald-detail"] {
                let path = detail.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
                headers["x-referrald-detail"] = .string("\(path): \(Erasure.redacted)")
            }
            headers["x-referrald-erased"] = .string("scrubbed by referrald dlq erase")
        }
    }
}

/// `referrald dlq erase` stopped before it had settled every dead letter it read.
public struct DeadLetterEraseError: Error, CustomStringConvertible {
    public let detail: String
    public var description: String { "dlq erase: \(detail)" }
}
