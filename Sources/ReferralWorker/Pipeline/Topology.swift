import AMQP
import Logging
import ReferralCore

/// The contract's broker objects: upstream exchanges, the inbox quorum queue and its bindings,
/// the dead-letter exchange and queue, the parked queue, and the exchange the worker publishes on.
public struct Topology: Sendable {
    public var settings: Settings

    public init(settings: Settings) { self.settings = settings }

    /// The broker's own `x-delivery-limit` on the inbox: a backstop above the worker's
    /// REFERRALD_DELIVERY_LIMIT (validated below it). The worker dead-letters a poison message
    /// itself, with the `x-referrald-error` headers, long before the broker would drop it into
    /// the DLX bare. A constant, because queue arguments cannot change once declared (406
    /// PRECONDITION_FAILED): deploy/rabbitmq/definitions.json declares the same value.
    public static let brokerDeliveryLimit: Int64 = 20

    public var inboxArguments: [String: AMQPFieldValue] {
        [
            "x-queue-type": .string("quorum"),
            "x-delivery-limit": .int(Self.brokerDeliveryLimit),
            "x-dead-letter-exchange": .string(settings.deadLetterExchange),
        ]
    }

    /// Which upstream exchange each consumed type arrives on, by its `type` prefix.
    public func bindings() -> [(exchange: String, routingKey: String)] {
        ConsumedType.allCases.map { type in
            let exchange: String
            switch type.rawValue.split(separator: ".").first {
            case "provisioning": exchange = settings.upstreamExchanges[0]
            case "billing": exchange = settings.upstreamExchanges[1]
            default: exchange = settings.upstreamExchanges[2]
            }
            return (exchange, type.rawValue)
        }
    }

    /// What `referrald run` checks before it consumes, passively: a passive declare needs no
    /// permission, so the runtime user keeps `configure ^$`. Without it a missing queue showed
    /// only as a 404 in a reconnect loop that never ended, and a missing exchange only at the
    /// first publish, after a batch was committed. Bindings cannot be checked passively.
    public func verify(on amqp: AMQPConnection) async throws {
        let objects: [(kind: String, name: String, key: String)] = [
            ("queue", settings.inboxQueue, "REFERRALD_INBOX_QUEUE"),
            ("exchange", settings.eventsExchange, "REFERRALD_EVENTS_EXCHANGE"),
            ("exchange", settings.deadLetterExchange, "REFERRALD_DLX"),
        ]
        let vhost = (try? AMQPURL(parsing: settings.amqpURL).vhost) ?? ""
        for object in objects {
            do {
                if object.kind == "queue" {
                    try await amqp.declareQueue(object.name, passive: true)
                } else {
                    try await amqp.declareExchange(object.name, type: "topic", passive: true)
                }
            } catch let error as AMQPError where error.replyCode == 404 {
                throw TopologyError(kind: object.kind, name: object.name, key: object.key, vhost: vhost)
            }
        }
    }

    /// Declares everything idempotently. With `passiveUpstream`, the upstream exchanges are only
    /// checked, for brokers where referrald has no configure permission on them.
    public func declare(on amqp: AMQPConnection, passiveUpstream: Bool, logger: Logger) async throws {
        for exchange in settings.upstreamExchanges {
            try await amqp.declareExchange(exchange, type: "topic", durable: true, passive: passiveUpstream)
        }
        try await amqp.declareExchange(settings.eventsExchange, type: "topic", durable: true)
        try await amqp.declareExchange(settings.deadLetterExchange, type: "fanout", durable: true)
        _ = try await amqp.declareQueue(
            settings.deadLetterQueue, durable: true,
            arguments: ["x-queue-type": .string("quorum")])
        try await amqp.bindQueue(settings.deadLetterQueue, exchange: settings.deadLetterExchange, routingKey: "")
        // Reached through the default exchange, so no binding a deleted DLQ could take with it.
        _ = try await amqp.declareQueue(
            settings.parkedQueue, durable: true, arguments: ["x-queue-type": .string("quorum")])
        _ = try await amqp.declareQueue(settings.inboxQueue, durable: true, arguments: inboxArguments)
        for b in bindings() {
            try await amqp.bindQueue(settings.inboxQueue, exchange: b.exchange, routingKey: b.routingKey)
        }
        logger.info(
            "topology declared",
            metadata: [
                "amqp.queue": "\(settings.inboxQueue)", "amqp.bindings": "\(bindings().count)",
                "amqp.dlq": "\(settings.deadLetterQueue)", "amqp.parked": "\(settings.parkedQueue)",
            ])
    }
}

/// A broker object `referrald run` needs is missing: `referrald topology` (run by a user with
/// configure rights) declares it. Not a configuration error: the unit restarts the daemon (exit
/// 75, EX_TEMPFAIL) until the topology exists, as it does for a schema behind the binary.
public struct TopologyError: Error, CustomStringConvertible {
    public let kind: String
    public let name: String
    public let key: String
    public let vhost: String

    public var description: String {
        "the broker has no \(kind) \(name) (\(key)) in vhost \(vhost): run `referrald topology` "
            + "(as a user with configure rights: deploy/rabbitmq/README.md) before `referrald run`"
    }
}
