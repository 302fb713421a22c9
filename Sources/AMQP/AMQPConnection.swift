import Logging

/// One AMQP 0-9-1 connection with one channel (channel 1), backed by librabbitmq.
///
/// Each connection owns one OS thread; the C handle never leaves it (see `ConnectionCore`). Calls
/// hand a job to that thread and suspend until it answers, so no blocking C call ever runs on the
/// cooperative pool. The thread keeps servicing heartbeats, buffering deliveries (up to the
/// prefetch) and settling publisher confirms between calls, however long the caller is away.
///
/// Use one connection for consuming and another for publishing: a publisher that the broker
/// throttles (flow control, connection.blocked) must not delay the consumer's acks.
///
/// Every method throws `AMQPError`. `connectionLost` and `closed` are final: open a new
/// connection. `channelClosed` leaves the connection usable (channel 1 is reopened), but a
/// consumer on it is gone.
public final class AMQPConnection: Sendable {
    private let thread: ConnectionThread
    public let name: String

    private init(thread: ConnectionThread, name: String) {
        self.thread = thread
        self.name = name
    }

    deinit {
        // A connection dropped without close() must not leak its thread and socket.
        _ = thread.submit { core in core.close() }
    }

    /// Opens the socket (TLS for `amqps://`), logs in with client properties that name the
    /// connection (visible in the management UI and `rabbitmqctl list_connections`) and announce
    /// the capabilities the worker relies on, and opens channel 1.
    ///
    /// - Parameter heartbeatSeconds: proposed to the broker, which may lower it; 0 disables
    ///   heartbeats (then a dead peer is only noticed by TCP, possibly after many minutes).
    public static func connect(
        _ url: AMQPURL, tls: AMQPTLS? = nil, heartbeatSeconds: Int = 30, connectionName: String,
        logger: Logger
    ) async throws -> AMQPConnection {
        guard tls == nil || url.useTLS else {
            throw AMQPError(
                .invalidUsage, operation: "connect to \(url)",
                detail: "TLS settings were given for an amqp:// URL; use amqps:// to encrypt")
        }
        // librabbitmq 0.11 never loads OpenSSL's default trust store, so a verifying socket
        // without a CA file trusts nothing: refuse here, saying why, rather than fail every
        // handshake with a bare "certificate verify failed".
        if url.useTLS, (tls ?? AMQPTLS()).verifyPeer, (tls ?? AMQPTLS()).caCertificatePath == nil {
            throw AMQPError(
                .invalidUsage, operation: "connect to \(url)",
                detail:
                    "amqps:// needs a CA file (librabbitmq does not read the system trust store; for a public CA give /etc/ssl/certs/ca-certificates.crt)"
            )
        }
        guard (0...65535).contains(heartbeatSeconds) else {
            throw AMQPError(.invalidUsage, operation: "connect to \(url)", detail: "heartbeatSeconds out of range")
        }
        let thread = try ConnectionThread()
        thread.start(name: "amqp \(connectionName)") { thread in
            ConnectionCore(loop: thread, logger: logger)
        }
        let connection = AMQPConnection(thread: thread, name: connectionName)
        try await connection.perform("connect to \(url)") { core throws(AMQPError) in
            try core.connect(url: url, tls: tls, heartbeatSeconds: heartbeatSeconds, connectionName: connectionName)
        }
        return connection
    }

    /// False once the connection is lost or closed.
    public var isOpen: Bool { thread.isOpen }

    public func declareExchange(_ name: String, type: String, durable: Bool = true, passive: Bool = false)
        async throws
    {
        try await perform("exchange.declare \(name)") { core throws(AMQPError) in
            try core.declareExchange(name, type: type, durable: durable, passive: passive)
        }
    }

    /// Declares a queue (e.g. `["x-queue-type": .string("quorum"), "x-delivery-limit": .int(5)]`).
    /// A passive declare of a missing queue throws `channelClosed` with reply code 404.
    @discardableResult
    public func declareQueue(
        _ name: String, durable: Bool = true, arguments: [String: AMQPFieldValue] = [:], passive: Bool = false
    ) async throws -> (messageCount: UInt32, consumerCount: UInt32) {
        try await perform("queue.declare \(name)") { core throws(AMQPError) in
            try core.declareQueue(name, durable: durable, arguments: arguments, passive: passive)
        }
    }

    public func bindQueue(_ queue: String, exchange: String, routingKey: String) async throws {
        try await perform("queue.bind \(queue)") { core throws(AMQPError) in
            try core.bindQueue(queue, exchange: exchange, routingKey: routingKey)
        }
    }

    public func deleteQueue(_ name: String) async throws {
        try await perform("queue.delete \(name)") { core throws(AMQPError) in try core.deleteQueue(name) }
    }

    public func deleteExchange(_ name: String) async throws {
        try await perform("exchange.delete \(name)") { core throws(AMQPError) in try core.deleteExchange(name) }
    }

    /// Removes every ready message; returns how many.
    @discardableResult
    public func purgeQueue(_ name: String) async throws -> UInt32 {
        try await perform("queue.purge \(name)") { core throws(AMQPError) in try core.purgeQueue(name) }
    }

    /// Puts the channel in confirm mode. `publish` does this itself on first use; calling it
    /// early only moves the round trip.
    public func enableConfirms() async throws {
        try await perform("confirm.select") { core throws(AMQPError) in try core.enableConfirms() }
    }

    /// Publishes every message, then waits until the broker has confirmed all of them. Returns
    /// one outcome per message, in order. Throws `timeout` when confirms are missing at the
    /// deadline, `channelClosed` (e.g. 404 for a missing exchange) or `connectionLost`; after a
    /// throw, treat every message of the batch as unconfirmed.
    public func publish(_ batch: [OutgoingMessage], timeout: Duration = .seconds(30)) async throws
        -> [PublishOutcome]
    {
        try await performAsync("publish") { core, continuation in
            core.publish(batch, timeout: timeout, continuation: continuation)
        }
    }

    /// Sets the prefetch (basic.qos) and starts a consumer with manual acks. Deliveries are then
    /// buffered on the connection's thread until `nextDeliveries` takes them. Returns the
    /// consumer tag.
    @discardableResult
    public func consume(queue: String, prefetch: UInt16, consumerTag: String? = nil) async throws -> String {
        try await perform("basic.consume \(queue)") { core throws(AMQPError) in
            try core.consume(queue: queue, prefetch: prefetch, consumerTag: consumerTag)
        }
    }

    /// Returns up to `max` deliveries whose bodies total at most `maxBytes`. Waits up to `wait`
    /// for the first one, then returns at once with whatever else has already arrived (it does
    /// not wait to fill the batch). A delivery that would take the total over `maxBytes` ends the
    /// batch and starts the next one; a single body larger than `maxBytes` comes alone. Returns
    /// an empty array when nothing came in time. Throws `consumerCancelled` once the buffered
    /// deliveries of a cancelled consumer are handed out, `channelClosed`, `connectionLost`, or
    /// `CancellationError` when the task is cancelled while waiting.
    public func nextDeliveries(max: Int, maxBytes: Int = .max, wait: Duration) async throws -> [Delivery] {
        guard max > 0 else {
            throw AMQPError(.invalidUsage, operation: "nextDeliveries", detail: "max must be positive")
        }
        let id = thread.nextWaiterID()
        return try await withTaskCancellationHandler {
            try Task.checkCancellation()
            return try await performAsync("nextDeliveries") { core, continuation in
                core.nextDeliveries(id: id, max: max, maxBytes: maxBytes, wait: wait, continuation: continuation)
            }
        } onCancel: {
            _ = thread.submit { core in core.cancelWaiter(id: id) }
        }
    }

    /// Settles deliveries. Acks, nacks and rejects run on the caller's actor until their job is
    /// queued to the connection thread (`nonisolated(nonsending)`), and the thread runs jobs in
    /// the order they were queued: calls made one after another from one actor reach the broker
    /// in that order, even when the actor re-enters while an earlier one is in flight. Each hopping
    /// to the global executor first let a later `multiple` ack overtake an earlier one; the earlier
    /// tag was then no longer outstanding, and the broker closed the channel (406 unknown delivery
    /// tag), redelivering everything unacked.
    public nonisolated(nonsending) func ack(_ tag: UInt64, multiple: Bool = false) async throws {
        try await perform("basic.ack") { core throws(AMQPError) in try core.ack(tag, multiple: multiple) }
    }

    /// How many deliveries this connection has read and not handed out yet: a test waits for
    /// the broker's deliveries to arrive with it, where a fixed sleep was too short on a busy
    /// machine and made the batches depend on arrival times.
    package func bufferedDeliveryCount() async throws -> Int {
        try await perform("buffered deliveries") { core throws(AMQPError) in core.bufferedDeliveryCount() }
    }

    public nonisolated(nonsending) func nack(_ tag: UInt64, multiple: Bool = false, requeue: Bool) async throws {
        try await perform("basic.nack") { core throws(AMQPError) in
            try core.nack(tag, multiple: multiple, requeue: requeue)
        }
    }

    public nonisolated(nonsending) func reject(_ tag: UInt64, requeue: Bool) async throws {
        try await perform("basic.reject") { core throws(AMQPError) in try core.reject(tag, requeue: requeue) }
    }

    /// Closes the channel (the broker requeues unacked deliveries) and the connection, and stops
    /// the thread. Idempotent; waiting callers get `closed`.
    public func close() async {
        _ = try? await perform("close") { core throws(AMQPError) in core.close() }
    }

    // MARK: Hand-off to the connection thread

    private nonisolated(nonsending) func perform<T: Sendable>(
        _ operation: String, _ body: @escaping @Sendable (ConnectionCore) throws(AMQPError) -> T
    ) async throws -> T {
        try await performAsync(operation) { core, continuation in
            do throws(AMQPError) {
                continuation.resume(returning: try body(core))
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }

    private nonisolated(nonsending) func performAsync<T: Sendable>(
        _ operation: String,
        _ body: @escaping @Sendable (ConnectionCore, CheckedContinuation<T, any Error>) -> Void
    ) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let accepted = thread.submit { core in body(core, continuation) }
            if !accepted {
                continuation.resume(
                    throwing: AMQPError(
                        .closed, operation: operation, detail: "the connection was closed or never opened"))
            }
        }
    }
}
