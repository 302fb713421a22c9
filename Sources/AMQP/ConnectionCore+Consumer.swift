import CRabbitMQ

/// The consumer's jobs: each runs on the connection thread, asks `consumer` what to do, and
/// does it.
extension ConnectionCore {
    func consume(queue: String, prefetch: UInt16, consumerTag: String?) throws(AMQPError) -> String {
        let operation = "basic.consume \(queue)"
        let conn = try usable(operation)
        if let tag = consumer.activeTag {
            throw AMQPError(.invalidUsage, operation: operation, detail: "already consuming as \(tag)")
        }
        _ = amqp_basic_qos(conn, Self.channel, 0, prefetch, 0)
        try check("basic.qos \(prefetch)")
        let arena = CArena()
        let ok = amqp_basic_consume(
            conn, Self.channel, arena.bytes(queue), arena.bytes(consumerTag ?? ""), 0, 0, 0,
            amqp_table_t(num_entries: 0, entries: nil))
        try check(operation)
        let tag = ok.map { CDecode.string($0.pointee.consumer_tag) } ?? consumerTag ?? ""
        consumer.consumeStarted(tag: tag)
        logger.info("consuming", metadata: ["amqp.queue": "\(queue)", "amqp.consumer_tag": "\(tag)"])
        return tag
    }

    /// Deliveries read from the socket and not yet handed out, after reading what has arrived.
    func bufferedDeliveryCount() -> Int {
        if conn != nil { pumpFrames() }
        return consumer.buffered.count
    }

    func nextDeliveries(id: UInt64, max: Int, maxBytes: Int, wait: Duration, continuation: DeliveryWaiter) {
        let request = ConsumerStateMachine<DeliveryWaiter>.Request(id: id, max: max, maxBytes: maxBytes, wait: wait)
        // Pick up whatever already sits in the socket so the batch is as full as it can be.
        if conn != nil, consumer.wantsFramesBeforeServing(request) { pumpFrames() }
        perform(consumer.deliveriesRequested(request, waiter: continuation, now: ContinuousClock.now))
    }

    func cancelWaiter(id: UInt64) {
        if let action = consumer.waiterCancelled(id: id) { perform(action) }
    }

    func ack(_ tag: UInt64, multiple: Bool) throws(AMQPError) {
        try acknowledge(.ack(tag: tag, multiple: multiple), operation: "basic.ack \(tag)")
    }

    func nack(_ tag: UInt64, multiple: Bool, requeue: Bool) throws(AMQPError) {
        try acknowledge(.nack(tag: tag, multiple: multiple, requeue: requeue), operation: "basic.nack \(tag)")
    }

    func reject(_ tag: UInt64, requeue: Bool) throws(AMQPError) {
        try acknowledge(.reject(tag: tag, requeue: requeue), operation: "basic.reject \(tag)")
    }

    /// Sent before this job returns, so acknowledgements reach the broker in the order their jobs
    /// were submitted (`ConnectionThread` runs jobs one at a time, first in first out).
    private func acknowledge(
        _ acknowledgement: ConsumerStateMachine<DeliveryWaiter>.Acknowledgement, operation: String
    ) throws(AMQPError) {
        let conn = try usable(operation)
        let status: Int32
        switch consumer.acknowledge(acknowledgement) {
        case .fail(let error):
            throw error
        case .send(.ack(let tag, let multiple)):
            status = amqp_basic_ack(conn, Self.channel, tag, multiple ? 1 : 0)
        case .send(.nack(let tag, let multiple, let requeue)):
            status = amqp_basic_nack(conn, Self.channel, tag, multiple ? 1 : 0, requeue ? 1 : 0)
        case .send(.reject(let tag, let requeue)):
            status = amqp_basic_reject(conn, Self.channel, tag, requeue ? 1 : 0)
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            let error = AMQPError(.connectionLost, operation: operation, libraryStatus: Self.statusText(status))
            connectionLost(error)
            throw error
        }
    }
}
