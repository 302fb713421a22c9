import AMQP
import Logging

/// What the commands and the worker that move messages from one of our queues to another share:
/// a reader and a confirming writer, and the copy that goes back through the default exchange.
enum QueueTransfer {
    /// Runs `body` with a reader and a writer whose publishes are confirmed, and closes both
    /// before returning, not after: the deliveries the broker pushed to the reader beyond what
    /// `body` settled go back to their queue only when the reader closes, and whoever looks at
    /// that queue next (the caller, the next pass of `dlq erase`) must find them there.
    static func withConnections<T>(_ settings: Settings, name: String, logger: Logger,
                                   _ body: (_ reader: AMQPConnection, _ writer: AMQPConnection) async throws -> T)
        async throws -> T {
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
}

extension OutgoingMessage {
    /// `d` as it goes to `queue` through the default exchange (no binding a deleted or changed
    /// exchange could take with it), properties and headers kept. `x-delivery-count` is the
    /// broker's count for the original, not a property of the message.
    static func copy(of d: Delivery, to queue: String, body: [UInt8]? = nil,
                     headers change: (inout [String: AMQPFieldValue]) -> Void = { _ in }) -> OutgoingMessage {
        var headers = d.headers.filter { $0.key != "x-delivery-count" }
        change(&headers)
        return OutgoingMessage(exchange: "", routingKey: queue, body: body ?? d.body, headers: headers, messageId: d.messageId,
                               contentType: d.contentType, persistent: true, mandatory: true, timestamp: d.timestamp)
    }
}
