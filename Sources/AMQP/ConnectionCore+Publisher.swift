import CRabbitMQ

/// The publisher's jobs: each runs on the connection thread, asks `publisher` what to do, and
/// does it.
extension ConnectionCore {
    func enableConfirms() throws(AMQPError) {
        guard !confirmMode else { return }
        let conn = try usable("confirm.select")
        _ = amqp_confirm_select(conn, Self.channel)
        try check("confirm.select")
        confirmMode = true
    }

    /// Sends the batch and registers it; the event loop resumes the caller when the last confirm
    /// arrives (or the deadline passes), so the thread keeps servicing heartbeats meanwhile.
    func publish(_ messages: [OutgoingMessage], timeout: Duration, continuation: PublishWaiter) {
        do throws(AMQPError) {
            _ = try usable("publish")
            try enableConfirms()
        } catch {
            continuation.resume(throwing: error)
            return
        }
        perform(
            publisher.publishRequested(messages, deadline: ContinuousClock.now + timeout, waiter: continuation))
    }

    /// Writes a registered batch. A failed write leaves a frame possibly half written: the
    /// connection cannot be trusted any more, and `connectionLost` fails the batch's caller.
    func send(_ messages: [OutgoingMessage]) {
        for message in messages {
            // A batch released after another one's write failed: its caller has already failed.
            guard let conn else { return }
            let arena = CArena()
            var properties = message.properties.encoded(persistent: message.persistent, in: arena)
            // amqp_basic_publish splits bodies larger than frame_max into several body frames.
            let status = message.body.withUnsafeBytes { body in
                amqp_basic_publish(
                    conn, Self.channel, arena.bytes(message.exchange), arena.bytes(message.routingKey),
                    message.mandatory ? 1 : 0, 0, &properties,
                    amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress)))
            }
            guard status == AMQP_STATUS_OK.rawValue else {
                connectionLost(
                    AMQPError(
                        .connectionLost,
                        operation: "basic.publish to exchange '\(message.exchange)' with key '\(message.routingKey)'",
                        libraryStatus: Self.statusText(status)))
                return
            }
        }
    }
}
