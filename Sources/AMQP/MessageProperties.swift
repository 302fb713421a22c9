import CRabbitMQ

/// The basic properties this module writes and reads: one place that knows which flag goes with
/// which field, for publishes, deliveries and returned messages alike.
struct MessageProperties: Equatable {
    var headers: [String: AMQPFieldValue] = [:]
    var messageId: String?
    var contentType: String?
    /// Seconds since the Unix epoch.
    var timestamp: UInt64?

    /// Copies out of library-owned memory (the message pool is recycled after the frame).
    init(decoding properties: amqp_basic_properties_t) {
        func has(_ flag: Int32) -> Bool { properties._flags & amqp_flags_t(flag) != 0 }
        headers = has(AMQP_BASIC_HEADERS_FLAG) ? CDecode.table(properties.headers) : [:]
        messageId = has(AMQP_BASIC_MESSAGE_ID_FLAG) ? CDecode.string(properties.message_id) : nil
        contentType = has(AMQP_BASIC_CONTENT_TYPE_FLAG) ? CDecode.string(properties.content_type) : nil
        timestamp = has(AMQP_BASIC_TIMESTAMP_FLAG) ? properties.timestamp : nil
    }

    init(headers: [String: AMQPFieldValue], messageId: String?, contentType: String?, timestamp: UInt64?) {
        self.headers = headers
        self.messageId = messageId
        self.contentType = contentType
        self.timestamp = timestamp
    }

    /// The C form for one publish; `arena` owns its memory for the duration of the call.
    /// `persistent` sets delivery-mode 2 (the broker writes the message to disk before it
    /// confirms it) rather than 1.
    func encoded(persistent: Bool, in arena: CArena) -> amqp_basic_properties_t {
        var properties = amqp_basic_properties_t()
        var flags = UInt32(AMQP_BASIC_DELIVERY_MODE_FLAG)
        properties.delivery_mode = persistent ? 2 : 1
        if !headers.isEmpty {
            flags |= UInt32(AMQP_BASIC_HEADERS_FLAG)
            properties.headers = arena.table(headers)
        }
        if let messageId {
            flags |= UInt32(AMQP_BASIC_MESSAGE_ID_FLAG)
            properties.message_id = arena.bytes(messageId)
        }
        if let contentType {
            flags |= UInt32(AMQP_BASIC_CONTENT_TYPE_FLAG)
            properties.content_type = arena.bytes(contentType)
        }
        if let timestamp {
            flags |= UInt32(AMQP_BASIC_TIMESTAMP_FLAG)
            properties.timestamp = timestamp
        }
        properties._flags = flags
        return properties
    }
}

extension OutgoingMessage {
    var properties: MessageProperties {
        MessageProperties(headers: headers, messageId: messageId, contentType: contentType, timestamp: timestamp)
    }
}

extension Delivery {
    init(
        deliveryTag: UInt64, redelivered: Bool, exchange: String, routingKey: String, body: [UInt8],
        properties: MessageProperties
    ) {
        self.init(
            deliveryTag: deliveryTag, redelivered: redelivered, exchange: exchange, routingKey: routingKey, body: body,
            headers: properties.headers, messageId: properties.messageId, contentType: properties.contentType,
            timestamp: properties.timestamp)
    }
}
