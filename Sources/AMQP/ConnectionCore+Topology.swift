import CRabbitMQ

/// Declares, binds, deletes and purges: synchronous RPCs on channel 1. A failure the broker
/// answers with channel.close (404, 406) reopens the channel and is thrown as `channelClosed`.
extension ConnectionCore {
    func declareExchange(_ name: String, type: String, durable: Bool, passive: Bool) throws(AMQPError) {
        let operation = "exchange.declare \(name)"
        let conn = try usable(operation)
        let arena = CArena()
        _ = amqp_exchange_declare(
            conn, Self.channel, arena.bytes(name), arena.bytes(type), passive ? 1 : 0, durable ? 1 : 0, 0, 0,
            amqp_table_t(num_entries: 0, entries: nil))
        try check(operation)
    }

    func declareQueue(
        _ name: String, durable: Bool, arguments: [String: AMQPFieldValue], passive: Bool
    ) throws(AMQPError) -> (messageCount: UInt32, consumerCount: UInt32) {
        let operation = "queue.declare \(name)"
        let conn = try usable(operation)
        let arena = CArena()
        let ok = amqp_queue_declare(
            conn, Self.channel, arena.bytes(name), passive ? 1 : 0, durable ? 1 : 0, 0, 0, arena.table(arguments))
        try check(operation)
        guard let ok else { return (0, 0) }
        return (ok.pointee.message_count, ok.pointee.consumer_count)
    }

    func bindQueue(_ queue: String, exchange: String, routingKey: String) throws(AMQPError) {
        let operation = "queue.bind \(queue) to \(exchange) with \(routingKey)"
        let conn = try usable(operation)
        let arena = CArena()
        _ = amqp_queue_bind(
            conn, Self.channel, arena.bytes(queue), arena.bytes(exchange), arena.bytes(routingKey),
            amqp_table_t(num_entries: 0, entries: nil))
        try check(operation)
    }

    func deleteQueue(_ name: String) throws(AMQPError) {
        let operation = "queue.delete \(name)"
        let conn = try usable(operation)
        let arena = CArena()
        _ = amqp_queue_delete(conn, Self.channel, arena.bytes(name), 0, 0)
        try check(operation)
    }

    func deleteExchange(_ name: String) throws(AMQPError) {
        let operation = "exchange.delete \(name)"
        let conn = try usable(operation)
        let arena = CArena()
        _ = amqp_exchange_delete(conn, Self.channel, arena.bytes(name), 0)
        try check(operation)
    }

    func purgeQueue(_ name: String) throws(AMQPError) -> UInt32 {
        let operation = "queue.purge \(name)"
        let conn = try usable(operation)
        let arena = CArena()
        let ok = amqp_queue_purge(conn, Self.channel, arena.bytes(name))
        try check(operation)
        return ok?.pointee.message_count ?? 0
    }
}
