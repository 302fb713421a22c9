/// A value in an AMQP field table: message headers and queue/consume arguments
/// (`x-queue-type`, `x-delivery-limit`, `x-dead-letter-exchange`...).
///
/// Integers of every wire width decode to `.int` (an unsigned 64-bit value above `Int64.max`
/// decodes to `.double`, the only lossless-enough choice left); `.int` encodes as a signed 64-bit
/// long ('l'), which RabbitMQ accepts for all its numeric arguments.
public enum AMQPFieldValue: Sendable, Equatable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case double(Double)
    /// Seconds since the Unix epoch (AMQP timestamps have one-second resolution).
    case timestamp(UInt64)
    case decimal(scale: UInt8, value: UInt32)
    case bytes([UInt8])
    case table([String: AMQPFieldValue])
    case array([AMQPFieldValue])
    case void
}

/// A message to publish. `persistent` sets delivery-mode 2 (the broker writes it to disk before
/// confirming it); `mandatory` makes an unroutable message come back as `.returned` instead of
/// being dropped silently.
public struct OutgoingMessage: Sendable, Equatable {
    public var exchange: String
    public var routingKey: String
    public var body: [UInt8]
    public var headers: [String: AMQPFieldValue]
    public var messageId: String?
    public var contentType: String?
    public var persistent: Bool
    public var mandatory: Bool
    /// Seconds since the Unix epoch.
    public var timestamp: UInt64?

    public init(
        exchange: String, routingKey: String, body: [UInt8], headers: [String: AMQPFieldValue] = [:],
        messageId: String? = nil, contentType: String? = nil, persistent: Bool = true,
        mandatory: Bool = true, timestamp: UInt64? = nil
    ) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.headers = headers
        self.messageId = messageId
        self.contentType = contentType
        self.persistent = persistent
        self.mandatory = mandatory
        self.timestamp = timestamp
    }
}

/// What the broker said about one published message.
public enum PublishOutcome: Sendable, Equatable {
    /// The broker took responsibility (for a persistent message to a durable or quorum queue:
    /// written to disk / committed by a majority).
    case confirmed
    /// The broker could not take it (basic.nack): republish later.
    case nacked
    /// A mandatory message that no queue took (basic.return, e.g. 312 NO_ROUTE). The broker
    /// acks such a message too; it is reported as returned because nothing will consume it.
    case returned(replyCode: Int, replyText: String)
}

/// One message received from a consumer. Ack, nack or reject it by `deliveryTag` on the same
/// connection.
public struct Delivery: Sendable, Equatable {
    public var deliveryTag: UInt64
    public var redelivered: Bool
    public var exchange: String
    public var routingKey: String
    public var body: [UInt8]
    public var headers: [String: AMQPFieldValue]
    public var messageId: String?
    public var contentType: String?
    /// Seconds since the Unix epoch, when the publisher set it.
    public var timestamp: UInt64?

    public init(
        deliveryTag: UInt64, redelivered: Bool, exchange: String, routingKey: String, body: [UInt8],
        headers: [String: AMQPFieldValue] = [:], messageId: String? = nil, contentType: String? = nil,
        timestamp: UInt64? = nil
    ) {
        self.deliveryTag = deliveryTag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.headers = headers
        self.messageId = messageId
        self.contentType = contentType
        self.timestamp = timestamp
    }

    /// How many times a quorum queue has returned this message (its `x-delivery-count` header):
    /// absent on the first delivery, 1 after the first nack/requeue or consumer loss. Compare it
    /// with the queue's `x-delivery-limit` to spot a poison message before the broker drops it.
    public var deliveryCount: Int? {
        if case .int(let count) = headers["x-delivery-count"] { return Int(count) }
        return nil
    }
}
