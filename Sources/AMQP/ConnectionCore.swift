import CRabbitMQ
import Logging

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Everything that touches the librabbitmq handle. Lives on, and is only used by, the connection's
/// own thread (`ConnectionThread`): it is created there, every job runs there, and it is freed
/// there. It is deliberately not Sendable, so the compiler keeps it from leaking to other threads.
///
/// A thin IO shell: what to do with deliveries, waiters, publishes and confirms is decided by
/// `ConsumerStateMachine` and `PublisherStateMachine`; this class feeds them what the broker and
/// the callers do, and carries out the actions they return (C calls, resuming continuations).
/// The handshake is in `ConnectionCore+Handshake.swift`, declares in `+Topology.swift`.
///
/// Heartbeats: librabbitmq sends and checks heartbeats only while the thread is inside a library
/// call. The thread therefore never waits for callers; it runs a small event loop that sleeps in
/// `poll()` on the broker's socket and the job pipe for at most `tick`, then reads every frame
/// that has arrived (which also sends a heartbeat when one is due and detects a silent broker).
/// Deliveries are buffered — the broker sends at most `prefetch` unacked ones, which bounds the
/// buffer — and confirms are settled as they arrive, so a caller that does not call for a minute
/// neither loses the connection nor misses confirms. The alternative (reading only inside
/// `nextDeliveries`/`publish`) gets the connection closed by the broker whenever the worker
/// spends more than two heartbeat intervals on a batch.
final class ConnectionCore {
    typealias DeliveryWaiter = CheckedContinuation<[Delivery], any Error>
    typealias PublishWaiter = CheckedContinuation<[PublishOutcome], any Error>

    /// Upper bound on the time between two library calls while idle: well under half of the
    /// shortest heartbeat interval we allow (1 s), so heartbeats go out on time.
    static let tick: Duration = .milliseconds(200)
    /// Frames handled per pump before jobs get a turn, so a flood of confirms or deliveries
    /// cannot starve acks and publishes.
    static let framesPerPump = 1000
    static let channel: amqp_channel_t = 1

    let loop: ConnectionThread
    var logger: Logger
    var conn: amqp_connection_state_t?
    /// Set once the connection is unusable; every later call throws it.
    var failure: AMQPError?
    /// close() ran (or connect failed): the thread exits after the current jobs.
    var finished = false
    var confirmMode = false
    var consumer = ConsumerStateMachine<DeliveryWaiter>()
    var publisher = PublisherStateMachine<PublishWaiter>()
    var nextTick = ContinuousClock.now

    init(loop: ConnectionThread, logger: Logger) {
        self.loop = loop
        self.logger = logger
    }

    // MARK: Event loop

    func run() {
        while true {
            for job in loop.takeJobs() { job(self) }
            if finished {
                for job in loop.stop() { job(self) }
                return
            }
            waitAndPump()
        }
    }

    private func waitAndPump() {
        let readable = pollSocketAndPipe()
        loop.drainWakeups()
        let now = ContinuousClock.now
        if conn != nil, readable || now >= nextTick || hasBufferedInput {
            nextTick = now + Self.tick
            pumpFrames()
        }
        // Serve before expiring: a waiter whose deadline passes just as its delivery arrives
        // gets the delivery, not an empty batch.
        perform(consumer.serveWaiters())
        let later = ContinuousClock.now
        perform(publisher.deadlinesPassed(now: later))
        perform(consumer.deadlinesPassed(now: later))
    }

    private var hasBufferedInput: Bool {
        guard let conn else { return false }
        // Frames an RPC queued while it waited for its reply, and bytes already read from the
        // socket, are invisible to poll(): without this check they would sit until the next tick.
        // (Bytes OpenSSL decrypted but librabbitmq has not taken yet are invisible too; the tick
        // bounds their delay.)
        return amqp_frames_enqueued(conn) != 0 || amqp_data_in_buffer(conn) != 0
    }

    /// Sleeps until the socket is readable, a job arrives, the tick is due, or the earliest
    /// deadline passes. Returns whether the socket is readable.
    private func pollSocketAndPipe() -> Bool {
        var fds = [pollfd(fd: loop.wakeReadFD, events: Int16(POLLIN), revents: 0)]
        var timeout: Duration? = nil
        if let conn {
            let socket = amqp_get_sockfd(conn)
            if socket >= 0 { fds.append(pollfd(fd: socket, events: Int16(POLLIN), revents: 0)) }
            timeout = hasBufferedInput ? .zero : nextTick - ContinuousClock.now
        }
        if let deadline = [publisher.earliestDeadline, consumer.earliestDeadline].compactMap({ $0 }).min() {
            let untilDeadline = deadline - ContinuousClock.now
            timeout = min(timeout ?? untilDeadline, untilDeadline)
        }
        let milliseconds: Int32
        if let timeout {
            // Round up: rounding down turns "0.4 ms left" into a busy spin of zero-timeout polls.
            let (seconds, attoseconds) = timeout.components
            let nanoseconds = min(seconds, 3600) * 1_000_000_000 + attoseconds / 1_000_000_000
            milliseconds = Int32(clamping: max(0, (nanoseconds + 999_999) / 1_000_000))
        } else {
            milliseconds = -1
        }
        // EINTR simply counts as a wake-up: the loop re-checks everything anyway.
        _ = poll(&fds, nfds_t(fds.count), milliseconds)
        return fds.count > 1 && fds[1].revents != 0
    }

    /// Reads and handles every frame that is available now. The 1 µs timeout (not zero) matters:
    /// librabbitmq treats a zero timeout as "immediate" and then never compares the clock with
    /// the heartbeat deadline, so a silent broker would go unnoticed; with 1 µs a missed
    /// heartbeat surfaces as AMQP_STATUS_HEARTBEAT_TIMEOUT.
    func pumpFrames() {
        for _ in 0..<Self.framesPerPump {
            guard let conn else { return }
            var frame = amqp_frame_t()
            var timeout = timeval(tv_sec: 0, tv_usec: 1)
            let status = amqp_simple_wait_frame_noblock(conn, &frame, &timeout)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return }
            guard status == AMQP_STATUS_OK.rawValue else {
                connectionLost(
                    AMQPError(
                        .connectionLost, operation: "read from broker", libraryStatus: Self.statusText(status)))
                return
            }
            handle(frame)
            if let conn = self.conn { amqp_maybe_release_buffers(conn) }
        }
    }

    private func handle(_ frame: amqp_frame_t) {
        // Heartbeats are consumed inside the library; header and body frames are read by
        // amqp_read_message right after their basic.deliver / basic.return.
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else {
            logger.debug("ignored a frame that is not a method", metadata: ["amqp.frame_type": "\(frame.frame_type)"])
            return
        }
        let method = frame.payload.method
        switch method.id {
        case AMQP_BASIC_DELIVER_METHOD:
            readDelivery(method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee)
        case AMQP_BASIC_ACK_METHOD:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            perform(publisher.confirmed(tag: ack.delivery_tag, multiple: ack.multiple != 0, ack: true))
        case AMQP_BASIC_NACK_METHOD:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            perform(publisher.confirmed(tag: nack.delivery_tag, multiple: nack.multiple != 0, ack: false))
        case AMQP_BASIC_RETURN_METHOD:
            readReturn(method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee)
        case AMQP_BASIC_CANCEL_METHOD:
            consumerCancelled(method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee)
        case AMQP_CHANNEL_CLOSE_METHOD, AMQP_CONNECTION_CLOSE_METHOD:
            _ = serverClosed(method, operation: "wait for broker frames")
        case AMQP_CONNECTION_BLOCKED_METHOD:
            let reason = CDecode.string(
                method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee.reason)
            publisher.connectionBlocked()
            logger.info("broker blocked the connection", metadata: ["amqp.reason": "\(reason)"])
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            logger.info("broker unblocked the connection")
            perform(publisher.connectionUnblocked())
        default:
            logger.debug("ignored an unexpected method", metadata: ["amqp.method": "\(method.id)"])
        }
    }

    private func readDelivery(_ deliver: amqp_basic_deliver_t) {
        // Copy the method's fields first: amqp_read_message may recycle the frame's memory.
        let tag = deliver.delivery_tag
        let redelivered = deliver.redelivered != 0
        let exchange = CDecode.string(deliver.exchange)
        let routingKey = CDecode.string(deliver.routing_key)
        guard let (body, properties) = readMessage(operation: "read delivery") else { return }
        consumer.deliveryArrived(
            Delivery(
                deliveryTag: tag, redelivered: redelivered, exchange: exchange, routingKey: routingKey, body: body,
                properties: properties))
    }

    private func readReturn(_ basicReturn: amqp_basic_return_t) {
        let replyCode = Int(basicReturn.reply_code)
        let replyText = CDecode.string(basicReturn.reply_text)
        let exchange = CDecode.string(basicReturn.exchange)
        let routingKey = CDecode.string(basicReturn.routing_key)
        guard let (body, properties) = readMessage(operation: "read basic.return") else { return }
        let key = ConfirmTracker.ReturnKey(
            exchange: exchange, routingKey: routingKey, messageId: properties.messageId, body: body)
        if !publisher.returned(key, replyCode: replyCode, replyText: replyText) {
            logger.debug(
                "basic.return matched no unconfirmed message",
                metadata: ["amqp.exchange": "\(exchange)", "amqp.routing_key": "\(routingKey)"])
        }
    }

    /// Reads the content header and body frames that follow basic.deliver / basic.return
    /// (several body frames when the body exceeds frame_max).
    private func readMessage(operation: String) -> (body: [UInt8], properties: MessageProperties)? {
        guard let conn else { return nil }
        var message = amqp_message_t()
        let reply = amqp_read_message(conn, Self.channel, &message, 0)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            // On failure the library has already released the message's memory.
            _ = failed(reply, operation: operation)
            return nil
        }
        defer { amqp_destroy_message(&message) }
        return (CDecode.bytes(message.body), MessageProperties(decoding: message.properties))
    }

    private func consumerCancelled(_ cancel: amqp_basic_cancel_t) {
        let tag = CDecode.string(cancel.consumer_tag)
        if consumer.brokerCancelled(consumerTag: tag, noWait: cancel.nowait != 0) == .sendCancelOk, let conn {
            var ok = amqp_basic_cancel_ok_t(consumer_tag: cancel.consumer_tag)
            let status = amqp_send_method(conn, Self.channel, AMQP_BASIC_CANCEL_OK_METHOD, &ok)
            guard status == AMQP_STATUS_OK.rawValue else {
                connectionLost(
                    AMQPError(.connectionLost, operation: "basic.cancel-ok", libraryStatus: Self.statusText(status)))
                return
            }
        }
        logger.info("broker cancelled the consumer", metadata: ["amqp.consumer_tag": "\(tag)"])
    }

    // MARK: Actions

    func perform(_ actions: [ConsumerStateMachine<DeliveryWaiter>.Action]) {
        for action in actions { perform(action) }
    }

    func perform(_ action: ConsumerStateMachine<DeliveryWaiter>.Action) {
        switch action {
        case .resume(let waiter, let deliveries): waiter.resume(returning: deliveries)
        case .fail(let waiter, let error): waiter.resume(throwing: error)
        case .cancel(let waiter): waiter.resume(throwing: CancellationError())
        case .wait: break
        }
    }

    func perform(_ actions: [PublisherStateMachine<PublishWaiter>.Action]) {
        for action in actions { perform(action) }
    }

    func perform(_ action: PublisherStateMachine<PublishWaiter>.Action) {
        switch action {
        case .send(let messages): send(messages)
        case .hold: break
        case .complete(let waiter, let outcomes): waiter.resume(returning: outcomes)
        case .fail(let waiter, let error): waiter.resume(throwing: error)
        }
    }

    // MARK: Failures

    static func statusText(_ status: Int32) -> String {
        String(cString: amqp_error_string2(status))
    }

    /// Turns a non-normal RPC reply into the error to throw, tearing down or reopening as the
    /// failure demands.
    func failed(_ reply: amqp_rpc_reply_t, operation: String) -> AMQPError {
        switch reply.reply_type {
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            return serverClosed(reply.reply, operation: operation)
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            // A library failure mid-RPC (socket error, heartbeat or RPC timeout) leaves the
            // protocol state unknown — a late reply could be taken for the next call's — so the
            // connection is not used again.
            let error = AMQPError(
                .connectionLost, operation: operation, libraryStatus: Self.statusText(reply.library_error))
            connectionLost(error)
            return error
        default:
            let error = AMQPError(.connectionLost, operation: operation, detail: "no reply from librabbitmq")
            connectionLost(error)
            return error
        }
    }

    func check(_ operation: String) throws(AMQPError) {
        guard let conn else { throw failure ?? AMQPError(.closed, operation: operation) }
        let reply = amqp_get_rpc_reply(conn)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else { throw failed(reply, operation: operation) }
    }

    /// The broker's channel.close or connection.close: answer it (the broker waits for close-ok
    /// before it frees the channel or the socket) and report its reply code and text.
    private func serverClosed(_ method: amqp_method_t, operation: String) -> AMQPError {
        guard let conn else { return failure ?? AMQPError(.closed, operation: operation) }
        switch method.id {
        case AMQP_CHANNEL_CLOSE_METHOD:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            let error = AMQPError(
                .channelClosed, operation: operation, replyCode: Int(close.reply_code),
                replyText: CDecode.string(close.reply_text))
            var ok = amqp_channel_close_ok_t(dummy: 0)
            let status = amqp_send_method(conn, Self.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok)
            guard status == AMQP_STATUS_OK.rawValue else {
                var lost = error
                lost.code = .connectionLost
                lost.libraryStatus = Self.statusText(status)
                connectionLost(lost)
                return lost
            }
            channelLost(error)
            return error
        case AMQP_CONNECTION_CLOSE_METHOD:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let error = AMQPError(
                .connectionLost, operation: operation, replyCode: Int(close.reply_code),
                replyText: CDecode.string(close.reply_text))
            var ok = amqp_connection_close_ok_t(dummy: 0)
            // Best effort: the broker closes the socket right after, with or without it.
            _ = amqp_send_method(conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
            connectionLost(error)
            return error
        default:
            let error = AMQPError(
                .connectionLost, operation: operation, detail: "unexpected method \(method.id) from the broker")
            connectionLost(error)
            return error
        }
    }

    /// The channel is gone but the connection is not: fail what depended on the channel, then
    /// reopen channel 1 so declares and publishes keep working (a passive declare of a missing
    /// queue must not cost the worker its connection).
    private func channelLost(_ error: AMQPError) {
        logger.info(
            "broker closed the channel; reopening it",
            metadata: ["amqp.reply_code": "\(error.replyCode ?? 0)", "amqp.reply_text": "\(error.replyText ?? "")"])
        perform(publisher.channelLost(error))
        consumer.channelLost(error)
        guard let conn else { return }
        _ = amqp_channel_open(conn, Self.channel)
        var reply = amqp_get_rpc_reply(conn)
        if reply.reply_type == AMQP_RESPONSE_NORMAL, confirmMode {
            _ = amqp_confirm_select(conn, Self.channel)
            reply = amqp_get_rpc_reply(conn)
        }
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            var lost = AMQPError(
                .connectionLost, operation: "reopen channel after \(error.replyCode ?? 0) \(error.replyText ?? "")")
            if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION {
                lost.libraryStatus = Self.statusText(reply.library_error)
            }
            connectionLost(lost)
            return
        }
    }

    /// Frees the handle and fails everything that waits. Called for socket errors, heartbeat
    /// timeouts, the broker's connection.close, and the application's close().
    func connectionLost(_ error: AMQPError) {
        if let conn {
            amqp_destroy_connection(conn)
            self.conn = nil
            loop.isOpen = false
            if error.code != .closed {
                logger.info("connection lost", metadata: ["amqp.error": "\(error)"])
            }
        }
        failure = failure ?? error
        perform(publisher.connectionLost(error))
        perform(consumer.connectionLost(error))
    }

    func usable(_ operation: String) throws(AMQPError) -> amqp_connection_state_t {
        if let conn { return conn }
        throw failure ?? AMQPError(.closed, operation: operation)
    }
}
