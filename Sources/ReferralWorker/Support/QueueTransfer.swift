import AMQP
import Logging

/// What the commands and the worker that move messages from one of our queues to another share:
/// a reader and a confirming writer, and the copy that goes back through the default exchange.
enum QueueTransfer {
    /// Runs `body` with a reader and a writer whose publishes are confirmed, and closes both
    /// before returning, not after: the deliveries the broker pushed to the reader beyond what
    /// `body` settled go back to their queue only when the reader closes, and whoever looks at
    /// that queue next (the caller, the next pass of `dlq erase`) must find them there.
    static func withConnections<T>(
        _ settings: Settings, name: String, logger: Logger,
        _ body: (_ reader: AMQPConnection, _ writer: AMQPConnection) async throws -> T
    )
        async throws -> T
    {
        let reader = try await settings.connectAMQP(name: "\(name) (reader)", logger: logger)
        let writer: AMQPConnection
        do {
            writer = try await settings.connectAMQP(name: "\(name) (writer)", logger: logger)
        } catch {
            await reader.close()
            throw error
        }
        do {
            try await writer.enableConfirms()
            let result = try await body(reader, writer)
            await reader.close()
            await writer.close()
            return result
        } catch {
            await reader.close()
            await writer.close()
            throw error
        }
    }

    /// Settles one batch read from a quorum queue: `requeue` goes back to the queue, the rest of
    /// the batch is acked with one `multiple` ack. The reader is closed soon after, and a quorum
    /// queue's client in the broker sends at most 32 settle commands ahead of the queue's replies
    /// and keeps the rest back: when the channel closes first, those kept back are dropped and
    /// their messages return (rabbitmq-server#10327, open). Acked one frame each, the tail of a
    /// batch came back beside its copy: a parked dead letter moved to the DLQ twice (the
    /// `dlq-deleted` fault scenario, one run in seven), a replayed one left in the DLQ as well
    /// (29 of 340 in one test run). One `multiple` ack is one command. It covers exactly the
    /// batch: the batch is the channel's next deliveries in order, everything before it is
    /// settled already, and what is requeued first is no longer unacked.
    static func settle(_ batch: [Delivery], requeue: [Delivery] = [], on reader: AMQPConnection) async throws {
        for d in requeue { try await reader.reject(d.deliveryTag, requeue: true) }
        let requeued = Set(requeue.map(\.deliveryTag))
        guard let last = batch.last(where: { !requeued.contains($0.deliveryTag) }) else { return }
        try await reader.ack(last.deliveryTag, multiple: true)
    }
}

extension OutgoingMessage {
    /// `d` as it goes to `queue` through the default exchange (no binding a deleted or changed
    /// exchange could take with it), properties and headers kept. `x-delivery-count` is the
    /// broker's count for the original, not a property of the message.
    static func copy(
        of d: Delivery, to queue: String, body: [UInt8]? = nil,
        headers change: (inout [String: AMQPFieldValue]) -> Void = { _ in }
    ) -> OutgoingMessage {
        var headers = d.headers.filter { $0.key != "x-delivery-count" }
        change(&headers)
        return OutgoingMessage(
            exchange: "", routingKey: queue, body: body ?? d.body, headers: headers, messageId: d.messageId,
            contentType: d.contentType, persistent: true, mandatory: true, timestamp: d.timestamp)
    }
}
