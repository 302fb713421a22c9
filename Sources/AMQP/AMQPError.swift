/// Every failure of this module. A struct around a private enum (as swift-service-lifecycle's
/// `ServiceGroupError`) so that codes can be added without breaking callers' `switch`es.
///
/// The description never contains a password: URLs appear only in their redacted form, and the
/// broker's reply text is the only free text that comes from outside.
public struct AMQPError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case invalidURL
            case connectFailed
            case connectionLost
            case channelClosed
            case consumerCancelled
            case timeout
            case closed
            case invalidUsage
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The URL could not be parsed; nothing was attempted.
        public static let invalidURL = Code(.invalidURL)
        /// TCP, TLS, login or channel.open failed while connecting (a 403 ACCESS_REFUSED arrives
        /// here with its reply code). Retry with backoff; the configuration may be wrong.
        public static let connectFailed = Code(.connectFailed)
        /// The connection is gone: socket error, heartbeat timeout, or the broker's
        /// connection.close (e.g. 320 CONNECTION_FORCED). Every later call fails the same way:
        /// open a new connection. Unconfirmed publishes may or may not have been routed.
        public static let connectionLost = Code(.connectionLost)
        /// The broker closed the channel (e.g. 404 NOT_FOUND, 406 PRECONDITION_FAILED). The
        /// connection reopened channel 1 (restoring confirm mode), so declares and publishes work
        /// again; a consumer on the old channel is gone and its deliveries were requeued, so
        /// their tags must not be acked: call `consume` again, or reconnect.
        public static let channelClosed = Code(.channelClosed)
        /// The broker cancelled the consumer (basic.cancel: the queue was deleted, or a quorum
        /// queue lost its leader). Deliveries already received can still be acked.
        public static let consumerCancelled = Code(.consumerCancelled)
        /// Publisher confirms did not all arrive in time. The outcome of the unconfirmed
        /// messages is unknown: republish them (consumers must deduplicate anyway).
        public static let timeout = Code(.timeout)
        /// The application closed this connection.
        public static let closed = Code(.closed)
        /// The call does not fit the connection's state (e.g. `nextDeliveries` without `consume`,
        /// TLS settings with an `amqp://` URL).
        public static let invalidUsage = Code(.invalidUsage)

        public var description: String {
            switch base {
            case .invalidURL: "invalidURL"
            case .connectFailed: "connectFailed"
            case .connectionLost: "connectionLost"
            case .channelClosed: "channelClosed"
            case .consumerCancelled: "consumerCancelled"
            case .timeout: "timeout"
            case .closed: "closed"
            case .invalidUsage: "invalidUsage"
            }
        }
    }

    public var code: Code
    /// What was being done, e.g. "queue.declare referrald.events".
    public var operation: String
    /// librabbitmq's status text (`amqp_error_string2`), when the library reported the failure.
    public var libraryStatus: String?
    /// The broker's reply code from channel.close / connection.close (404, 406, 320, 403...).
    public var replyCode: Int?
    /// The broker's reply text, e.g. "NOT_FOUND - no queue 'x' in vhost 'y'".
    public var replyText: String?
    /// Anything else that helps, written by this module (never contains secrets).
    public var detail: String?

    init(
        _ code: Code, operation: String, libraryStatus: String? = nil, replyCode: Int? = nil,
        replyText: String? = nil, detail: String? = nil
    ) {
        self.code = code
        self.operation = operation
        self.libraryStatus = libraryStatus
        self.replyCode = replyCode
        self.replyText = replyText
        self.detail = detail
    }

    /// True when the connection cannot be used any more and the caller must open a new one.
    public var requiresReconnect: Bool { code == .connectionLost || code == .closed }

    public var description: String {
        var text = "AMQPError.\(code) during \(operation)"
        if let replyCode { text += ": broker replied \(replyCode)" }
        if let replyText { text += " \(replyText)" }
        if let libraryStatus { text += " (librabbitmq: \(libraryStatus))" }
        if let detail { text += " — \(detail)" }
        return text
    }
}
