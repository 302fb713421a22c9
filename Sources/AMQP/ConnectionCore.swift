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
    /// Upper bound on the time between two library calls while idle: well under half of the
    /// shortest heartbeat interval we allow (1 s), so heartbeats go out on time.
    private static let tick: Duration = .milliseconds(200)
    /// Frames handled per pump before jobs get a turn, so a flood of confirms or deliveries
    /// cannot starve acks and publishes.
    private static let framesPerPump = 1000
    private static let channel: amqp_channel_t = 1

    private enum ConsumerState {
        case idle
        case active(tag: String)
        /// basic.cancel from the broker: the channel is fine, buffered deliveries can still be
        /// handed out and acked, then `nextDeliveries` throws.
        case cancelled(AMQPError)
        /// The channel closed under the consumer: its deliveries were requeued, their tags are
        /// meaningless on the reopened channel, so acks must fail rather than reach the broker
        /// (where an unknown tag closes the channel again with 406).
        case lost(AMQPError)
    }

    private struct PublishWait {
        var continuation: CheckedContinuation<[PublishOutcome], any Error>
        var deadline: ContinuousClock.Instant
    }

    private struct HeldPublish {
        var messages: [OutgoingMessage]
        var continuation: CheckedContinuation<[PublishOutcome], any Error>
        var deadline: ContinuousClock.Instant
    }

    private struct DeliveryWaiter {
        var id: UInt64
        var max: Int
        var maxBytes: Int
        var deadline: ContinuousClock.Instant
        var continuation: CheckedContinuation<[Delivery], any Error>
    }

    private let loop: ConnectionThread
    private var logger: Logger
    private var conn: amqp_connection_state_t?
    /// Set once the connection is unusable; every later call throws it.
    private var failure: AMQPError?
    /// close() ran (or connect failed): the thread exits after the current jobs.
    private var finished = false
    private var confirmMode = false
    private var blocked = false
    private var tracker = ConfirmTracker()
    private var publishWaits: [ConfirmTracker.BatchID: PublishWait] = [:]
    private var heldPublishes: [HeldPublish] = []
    private var consumer: ConsumerState = .idle
    private var deliveries: [Delivery] = []
    private var waiters: [DeliveryWaiter] = []
    /// Cancellation can overtake the waiter it cancels (both are jobs; the cancel handler may
    /// run first), so a cancelled id is remembered until its waiter shows up.
    private var cancelledWaiters: Set<UInt64> = []
    private var highestWaiterID: UInt64 = 0
    private var nextTick = ContinuousClock.now

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
        serveWaiters()
        expireDeadlines(now: ContinuousClock.now)
    }

    private var hasBufferedInput: Bool {
        guard let conn else { return false }
        // Frames an RPC queued while it waited for its reply, and bytes already read from the
        // socket, are invisible to poll(): without this check they would sit until the next tick.
        // (Bytes OpenSSL decrypted but librabbitmq has not taken yet are invisible too; the tick
        // bounds their delay to 200 ms.)
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
        if let deadline = earliestDeadline() {
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

    private func earliestDeadline() -> ContinuousClock.Instant? {
        let candidates =
            publishWaits.values.map(\.deadline) + heldPublishes.map(\.deadline) + waiters.map(\.deadline)
        return candidates.min()
    }

    /// Reads and handles every frame that is available now. The 1 µs timeout (not zero) matters:
    /// librabbitmq treats a zero timeout as "immediate" and then never compares the clock with
    /// the heartbeat deadline, so a silent broker would go unnoticed; with 1 µs a missed
    /// heartbeat surfaces as AMQP_STATUS_HEARTBEAT_TIMEOUT.
    private func pumpFrames() {
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
            settle(tag: ack.delivery_tag, multiple: ack.multiple != 0, ack: true)
        case AMQP_BASIC_NACK_METHOD:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            settle(tag: nack.delivery_tag, multiple: nack.multiple != 0, ack: false)
        case AMQP_BASIC_RETURN_METHOD:
            readReturn(method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee)
        case AMQP_BASIC_CANCEL_METHOD:
            consumerCancelled(method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee)
        case AMQP_CHANNEL_CLOSE_METHOD, AMQP_CONNECTION_CLOSE_METHOD:
            _ = serverClosed(method, operation: "wait for broker frames")
        case AMQP_CONNECTION_BLOCKED_METHOD:
            let reason = CDecode.string(
                method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee.reason)
            blocked = true
            logger.info("broker blocked the connection", metadata: ["amqp.reason": "\(reason)"])
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            blocked = false
            logger.info("broker unblocked the connection")
            let held = heldPublishes
            heldPublishes.removeAll()
            for publish in held {
                startPublish(publish.messages, deadline: publish.deadline, continuation: publish.continuation)
            }
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
        guard let message = readMessage(operation: "read delivery") else { return }
        deliveries.append(
            Delivery(
                deliveryTag: tag, redelivered: redelivered, exchange: exchange, routingKey: routingKey,
                body: message.body, headers: message.headers, messageId: message.messageId,
                contentType: message.contentType, timestamp: message.timestamp))
    }

    private func readReturn(_ basicReturn: amqp_basic_return_t) {
        let replyCode = Int(basicReturn.reply_code)
        let replyText = CDecode.string(basicReturn.reply_text)
        let exchange = CDecode.string(basicReturn.exchange)
        let routingKey = CDecode.string(basicReturn.routing_key)
        guard let message = readMessage(operation: "read basic.return") else { return }
        let key = ConfirmTracker.ReturnKey(
            exchange: exchange, routingKey: routingKey, messageId: message.messageId, body: message.body)
        if !tracker.returned(key, replyCode: replyCode, replyText: replyText) {
            logger.debug(
                "basic.return matched no unconfirmed message",
                metadata: ["amqp.exchange": "\(exchange)", "amqp.routing_key": "\(routingKey)"])
        }
    }

    private struct ReadMessage {
        var body: [UInt8]
        var headers: [String: AMQPFieldValue]
        var messageId: String?
        var contentType: String?
        var timestamp: UInt64?
    }

    /// Reads the content header and body frames that follow basic.deliver / basic.return
    /// (several body frames when the body exceeds frame_max).
    private func readMessage(operation: String) -> ReadMessage? {
        guard let conn else { return nil }
        var message = amqp_message_t()
        let reply = amqp_read_message(conn, Self.channel, &message, 0)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            // On failure the library has already released the message's memory.
            _ = failed(reply, operation: operation)
            return nil
        }
        defer { amqp_destroy_message(&message) }
        let properties = CDecode.properties(message.properties)
        return ReadMessage(
            body: CDecode.bytes(message.body), headers: properties.headers, messageId: properties.messageId,
            contentType: properties.contentType, timestamp: properties.timestamp)
    }

    private func settle(tag: UInt64, multiple: Bool, ack: Bool) {
        for batch in tracker.settle(tag: tag, multiple: multiple, ack: ack) {
            let outcomes = tracker.takeOutcomes(batch)
            publishWaits.removeValue(forKey: batch)?.continuation.resume(returning: outcomes)
        }
    }

    private func consumerCancelled(_ cancel: amqp_basic_cancel_t) {
        let tag = CDecode.string(cancel.consumer_tag)
        if cancel.nowait == 0, let conn {
            var ok = amqp_basic_cancel_ok_t(consumer_tag: cancel.consumer_tag)
            let status = amqp_send_method(conn, Self.channel, AMQP_BASIC_CANCEL_OK_METHOD, &ok)
            if status != AMQP_STATUS_OK.rawValue {
                connectionLost(
                    AMQPError(
                        .connectionLost, operation: "basic.cancel-ok", libraryStatus: Self.statusText(status)))
                return
            }
        }
        logger.info("broker cancelled the consumer", metadata: ["amqp.consumer_tag": "\(tag)"])
        consumer = .cancelled(
            AMQPError(
                .consumerCancelled, operation: "consume",
                detail: "the broker cancelled consumer \(tag) (queue deleted or unavailable)"))
    }

    private func expireDeadlines(now: ContinuousClock.Instant) {
        for (batch, wait) in publishWaits where wait.deadline <= now {
            tracker.abandon(batch)
            publishWaits[batch] = nil
            wait.continuation.resume(
                throwing: AMQPError(
                    .timeout, operation: "wait for publisher confirms",
                    detail: "not every message was confirmed before the deadline; republish them"))
        }
        heldPublishes.removeAll { held in
            guard held.deadline <= now else { return false }
            held.continuation.resume(
                throwing: AMQPError(
                    .timeout, operation: "publish",
                    detail: "the broker blocked this connection (connection.blocked) until the deadline"))
            return true
        }
        waiters.removeAll { waiter in
            guard waiter.deadline <= now else { return false }
            waiter.continuation.resume(returning: [])
            return true
        }
    }

    /// Hands buffered deliveries to waiting callers, oldest caller first.
    private func serveWaiters() {
        while !waiters.isEmpty, !deliveries.isEmpty {
            let waiter = waiters.removeFirst()
            waiter.continuation.resume(returning: takeDeliveries(max: waiter.max, maxBytes: waiter.maxBytes))
        }
        guard deliveries.isEmpty, !waiters.isEmpty else { return }
        let error: AMQPError
        switch consumer {
        case .cancelled(let e), .lost(let e): error = e
        case .idle, .active: return
        }
        for waiter in waiters { waiter.continuation.resume(throwing: error) }
        waiters.removeAll()
    }

    /// The oldest deliveries, up to `max` of them and `maxBytes` of bodies: a batch's memory
    /// downstream (its parsed events, the inbox statement's parameter, libpq's send buffer) is a
    /// few times its bodies, so it is bounded by bytes, not only by count. At least one is taken,
    /// so a body larger than the cap still goes, alone.
    private func takeDeliveries(max: Int, maxBytes: Int) -> [Delivery] {
        var count = 0
        var bytes = 0
        while count < min(max, deliveries.count) {
            let size = deliveries[count].body.count
            if count > 0 && size > maxBytes - bytes { break }
            bytes += size
            count += 1
        }
        let taken = Array(deliveries.prefix(count))
        deliveries.removeFirst(count)
        return taken
    }

    // MARK: Failures

    private static func statusText(_ status: Int32) -> String {
        String(cString: amqp_error_string2(status))
    }

    /// Turns a non-normal RPC reply into the error to throw, tearing down or reopening as the
    /// failure demands.
    private func failed(_ reply: amqp_rpc_reply_t, operation: String) -> AMQPError {
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

    private func check(_ operation: String) throws(AMQPError) {
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
        for batch in tracker.reset() {
            publishWaits.removeValue(forKey: batch)?.continuation.resume(throwing: error)
        }
        switch consumer {
        case .active, .cancelled:
            consumer = .lost(error)
            deliveries.removeAll()
        case .idle, .lost:
            break
        }
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
    private func connectionLost(_ error: AMQPError) {
        if let conn {
            amqp_destroy_connection(conn)
            self.conn = nil
            loop.isOpen = false
            if error.code != .closed {
                logger.info("connection lost", metadata: ["amqp.error": "\(error)"])
            }
        }
        failure = failure ?? error
        for (_, wait) in publishWaits { wait.continuation.resume(throwing: error) }
        publishWaits.removeAll()
        for held in heldPublishes { held.continuation.resume(throwing: error) }
        heldPublishes.removeAll()
        for waiter in waiters { waiter.continuation.resume(throwing: error) }
        waiters.removeAll()
        deliveries.removeAll()
        _ = tracker.reset()
    }

    private func usable(_ operation: String) throws(AMQPError) -> amqp_connection_state_t {
        if let conn { return conn }
        throw failure ?? AMQPError(.closed, operation: operation)
    }

    // MARK: Jobs (each runs on the connection thread)

    func connect(
        url: AMQPURL, tls: AMQPTLS?, heartbeatSeconds: Int, connectionName: String
    ) throws(AMQPError) {
        logger[metadataKey: "amqp.connection"] = "\(connectionName)"
        do {
            try open(url: url, tls: tls, heartbeatSeconds: heartbeatSeconds, connectionName: connectionName)
            loop.isOpen = true
            logger.info("connected", metadata: ["amqp.url": "\(url)"])
        } catch {
            if let conn {
                amqp_destroy_connection(conn)
                self.conn = nil
            }
            failure = error
            finished = true
            throw error
        }
    }

    private func open(url: AMQPURL, tls: AMQPTLS?, heartbeatSeconds: Int, connectionName: String) throws(AMQPError) {
        let operation = "connect to \(url)"
        func fail(_ what: String, status: Int32? = nil) -> AMQPError {
            AMQPError(
                .connectFailed, operation: operation, libraryStatus: status.map(Self.statusText), detail: what)
        }
        guard let conn = amqp_new_connection() else { throw fail("amqp_new_connection failed") }
        self.conn = conn
        let arena = CArena()

        let socket: OpaquePointer?
        if url.useTLS {
            let settings = tls ?? AMQPTLS()
            guard let ssl = amqp_ssl_socket_new(conn) else { throw fail("cannot create a TLS socket") }
            if let ca = settings.caCertificatePath {
                let status = amqp_ssl_socket_set_cacert(ssl, ca)
                guard status == AMQP_STATUS_OK.rawValue else { throw fail("cannot load CA file \(ca)", status: status) }
            }
            switch (settings.clientCertificatePath, settings.clientKeyPath) {
            case (let cert?, let key?):
                let status = amqp_ssl_socket_set_key(ssl, cert, key)
                guard status == AMQP_STATUS_OK.rawValue else {
                    throw fail("cannot load client certificate \(cert) / key \(key)", status: status)
                }
            case (nil, nil):
                break
            default:
                throw fail("a client certificate needs both clientCertificatePath and clientKeyPath")
            }
            amqp_ssl_socket_set_verify_peer(ssl, settings.verifyPeer ? 1 : 0)
            amqp_ssl_socket_set_verify_hostname(ssl, settings.verifyHostname ? 1 : 0)
            socket = ssl
        } else {
            socket = amqp_tcp_socket_new(conn)
        }
        guard let socket else { throw fail("cannot create a socket") }

        var connectTimeout = timeval(tv_sec: 10, tv_usec: 0)
        let status = amqp_socket_open_noblock(socket, url.host, Int32(url.port), &connectTimeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            // Name the usual causes: librabbitmq's own text ("SSL hostname verification failed")
            // does not say which setting to look at.
            switch status {
            case AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue:
                throw fail(
                    "TLS: the broker's certificate is not trusted by the CA file (another CA, or expired)",
                    status: status)
            case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue:
                throw fail(
                    "TLS: the broker's certificate does not name \(url.host) (a DNS name is needed: IP SANs are not matched)",
                    status: status)
            default:
                throw fail("cannot open the socket", status: status)
            }
        }

        // Without an RPC timeout a broker that accepts a declare and never answers would hold
        // the thread (and every caller queued behind it) forever.
        var rpcTimeout = timeval(tv_sec: 30, tv_usec: 0)
        _ = amqp_set_rpc_timeout(conn, &rpcTimeout)

        // librabbitmq advertises none of these by default; without them the broker silently
        // drops basic.cancel (a consumer on a deleted queue would wait forever), never sends
        // connection.blocked, and closes the socket without a reason on a bad password.
        var properties = arena.table([
            "connection_name": .string(connectionName),
            "product": .string("referrald"),
            "capabilities": .table([
                "consumer_cancel_notify": .bool(true),
                "connection.blocked": .bool(true),
                "publisher_confirms": .bool(true),
                "basic.nack": .bool(true),
                "authentication_failure_close": .bool(true),
            ]),
        ])
        let login = referrald_amqp_login_plain(
            conn, url.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, Int32(heartbeatSeconds), &properties, url.user,
            url.password)
        try checkConnectReply(login, step: "login as \(url.user)", operation: operation)

        _ = amqp_channel_open(conn, Self.channel)
        try checkConnectReply(amqp_get_rpc_reply(conn), step: "channel.open", operation: operation)
    }

    private func checkConnectReply(_ reply: amqp_rpc_reply_t, step: String, operation: String) throws(AMQPError) {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            var replyCode: Int?
            var replyText: String?
            switch reply.reply.id {
            case AMQP_CONNECTION_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                replyCode = Int(close.reply_code)
                replyText = CDecode.string(close.reply_text)
            case AMQP_CHANNEL_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                replyCode = Int(close.reply_code)
                replyText = CDecode.string(close.reply_text)
            default:
                break
            }
            throw AMQPError(
                .connectFailed, operation: operation, replyCode: replyCode, replyText: replyText, detail: step)
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            throw AMQPError(
                .connectFailed, operation: operation, libraryStatus: Self.statusText(reply.library_error),
                detail: step)
        default:
            throw AMQPError(.connectFailed, operation: operation, detail: "\(step): no reply")
        }
    }

    func close() {
        if let conn {
            // Short timeouts: closing must not hang shutdown on a dead broker.
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            _ = amqp_set_rpc_timeout(conn, &timeout)
            let channel = amqp_channel_close(conn, Self.channel, AMQP_REPLY_SUCCESS)
            if channel.reply_type == AMQP_RESPONSE_NORMAL {
                _ = amqp_connection_close(conn, AMQP_REPLY_SUCCESS)
            }
            logger.info("closed")
        }
        connectionLost(AMQPError(.closed, operation: "close", detail: "the application closed the connection"))
        finished = true
    }

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

    func enableConfirms() throws(AMQPError) {
        guard !confirmMode else { return }
        let conn = try usable("confirm.select")
        _ = amqp_confirm_select(conn, Self.channel)
        try check("confirm.select")
        confirmMode = true
    }

    func publish(
        _ messages: [OutgoingMessage], timeout: Duration,
        continuation: CheckedContinuation<[PublishOutcome], any Error>
    ) {
        do throws(AMQPError) {
            _ = try usable("publish")
            try enableConfirms()
        } catch {
            continuation.resume(throwing: error)
            return
        }
        guard !messages.isEmpty else {
            continuation.resume(returning: [])
            return
        }
        let deadline = ContinuousClock.now + timeout
        // While the broker blocks the connection (memory or disk alarm) it stops reading our
        // socket: writing a batch then would block this thread in send() with no timeout, and
        // heartbeats and every other caller with it. Hold the batch until connection.unblocked.
        guard !blocked else {
            heldPublishes.append(HeldPublish(messages: messages, continuation: continuation, deadline: deadline))
            return
        }
        startPublish(messages, deadline: deadline, continuation: continuation)
    }

    /// Sends the batch and registers it; the event loop resumes the caller when the last confirm
    /// arrives (or the deadline passes), so the thread keeps servicing heartbeats meanwhile.
    private func startPublish(
        _ messages: [OutgoingMessage], deadline: ContinuousClock.Instant,
        continuation: CheckedContinuation<[PublishOutcome], any Error>
    ) {
        guard let conn else {
            continuation.resume(throwing: failure ?? AMQPError(.closed, operation: "publish"))
            return
        }
        let batch = tracker.register(
            messages.map {
                ConfirmTracker.ReturnKey(
                    exchange: $0.exchange, routingKey: $0.routingKey, messageId: $0.messageId, body: $0.body)
            })
        publishWaits[batch] = PublishWait(continuation: continuation, deadline: deadline)
        for message in messages {
            let status = send(message, on: conn)
            guard status == AMQP_STATUS_OK.rawValue else {
                // A frame may be half written: the connection cannot be trusted any more.
                // connectionLost fails this batch's continuation too.
                connectionLost(
                    AMQPError(
                        .connectionLost,
                        operation: "basic.publish to exchange '\(message.exchange)' with key '\(message.routingKey)'",
                        libraryStatus: Self.statusText(status)))
                return
            }
        }
    }

    private func send(_ message: OutgoingMessage, on conn: amqp_connection_state_t) -> Int32 {
        let arena = CArena()
        var properties = amqp_basic_properties_t()
        var flags = UInt32(AMQP_BASIC_DELIVERY_MODE_FLAG)
        properties.delivery_mode = message.persistent ? 2 : 1
        if !message.headers.isEmpty {
            flags |= UInt32(AMQP_BASIC_HEADERS_FLAG)
            properties.headers = arena.table(message.headers)
        }
        if let messageId = message.messageId {
            flags |= UInt32(AMQP_BASIC_MESSAGE_ID_FLAG)
            properties.message_id = arena.bytes(messageId)
        }
        if let contentType = message.contentType {
            flags |= UInt32(AMQP_BASIC_CONTENT_TYPE_FLAG)
            properties.content_type = arena.bytes(contentType)
        }
        if let timestamp = message.timestamp {
            flags |= UInt32(AMQP_BASIC_TIMESTAMP_FLAG)
            properties.timestamp = timestamp
        }
        properties._flags = flags
        // amqp_basic_publish splits bodies larger than frame_max into several body frames.
        return message.body.withUnsafeBytes { body in
            amqp_basic_publish(
                conn, Self.channel, arena.bytes(message.exchange), arena.bytes(message.routingKey),
                message.mandatory ? 1 : 0, 0, &properties,
                amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress)))
        }
    }

    func consume(queue: String, prefetch: UInt16, consumerTag: String?) throws(AMQPError) -> String {
        let operation = "basic.consume \(queue)"
        let conn = try usable(operation)
        if case .active(let tag) = consumer {
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
        consumer = .active(tag: tag)
        deliveries.removeAll()
        logger.info("consuming", metadata: ["amqp.queue": "\(queue)", "amqp.consumer_tag": "\(tag)"])
        return tag
    }

    func nextDeliveries(
        id: UInt64, max: Int, maxBytes: Int, wait: Duration, continuation: CheckedContinuation<[Delivery], any Error>
    ) {
        highestWaiterID = Swift.max(highestWaiterID, id)
        if cancelledWaiters.remove(id) != nil {
            continuation.resume(throwing: CancellationError())
            return
        }
        guard conn != nil else {
            continuation.resume(throwing: failure ?? AMQPError(.closed, operation: "nextDeliveries"))
            return
        }
        switch consumer {
        case .idle:
            continuation.resume(
                throwing: AMQPError(
                    .invalidUsage, operation: "nextDeliveries", detail: "call consume(queue:prefetch:) first"))
            return
        case .lost(let error):
            continuation.resume(throwing: error)
            return
        case .active, .cancelled:
            break
        }
        // Pick up whatever already sits in the socket so the batch is as full as it can be.
        if deliveries.count < max { pumpFrames() }
        if !deliveries.isEmpty {
            continuation.resume(returning: takeDeliveries(max: max, maxBytes: maxBytes))
            return
        }
        if let failure {
            continuation.resume(throwing: failure)
            return
        }
        switch consumer {
        case .cancelled(let error), .lost(let error):
            continuation.resume(throwing: error)
        case .idle, .active:
            if wait > .zero {
                waiters.append(
                    DeliveryWaiter(
                        id: id, max: max, maxBytes: maxBytes, deadline: ContinuousClock.now + wait,
                        continuation: continuation))
            } else {
                continuation.resume(returning: [])
            }
        }
    }

    func cancelWaiter(id: UInt64) {
        if let index = waiters.firstIndex(where: { $0.id == id }) {
            waiters.remove(at: index).continuation.resume(throwing: CancellationError())
        } else if id > highestWaiterID {
            cancelledWaiters.insert(id)
        }
        // Otherwise the waiter has already been served: nothing to cancel, nothing to remember.
    }

    func ack(_ tag: UInt64, multiple: Bool) throws(AMQPError) {
        try acknowledge("basic.ack \(tag)") { amqp_basic_ack($0, Self.channel, tag, multiple ? 1 : 0) }
    }

    func nack(_ tag: UInt64, multiple: Bool, requeue: Bool) throws(AMQPError) {
        try acknowledge("basic.nack \(tag)") {
            amqp_basic_nack($0, Self.channel, tag, multiple ? 1 : 0, requeue ? 1 : 0)
        }
    }

    func reject(_ tag: UInt64, requeue: Bool) throws(AMQPError) {
        try acknowledge("basic.reject \(tag)") { amqp_basic_reject($0, Self.channel, tag, requeue ? 1 : 0) }
    }

    private func acknowledge(
        _ operation: String, _ call: (amqp_connection_state_t) -> Int32
    ) throws(AMQPError) {
        let conn = try usable(operation)
        if case .lost(let error) = consumer { throw error }
        let status = call(conn)
        guard status == AMQP_STATUS_OK.rawValue else {
            let error = AMQPError(.connectionLost, operation: operation, libraryStatus: Self.statusText(status))
            connectionLost(error)
            throw error
        }
    }
}
