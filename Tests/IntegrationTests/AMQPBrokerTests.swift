import AMQP
import Foundation
import Testing

private typealias Broker = AMQPTestBroker

private let quorum: [String: AMQPFieldValue] = [
    "x-queue-type": .string("quorum"),
    "x-delivery-limit": .int(5),
]

@Suite("AMQPConnection against the test broker")
struct AMQPBrokerTests {
    @Test func declaresQuorumQueueBoundToTopicExchange() async throws {
        let queue = Broker.unique("quorum")
        let exchange = Broker.unique("topic")
        try await Broker.withConnection(Broker.unique("declare"), queues: [queue], exchanges: [exchange]) { amqp in
            try await amqp.declareExchange(exchange, type: "topic")
            let declared = try await amqp.declareQueue(queue, arguments: quorum)
            #expect(declared.messageCount == 0)
            #expect(declared.consumerCount == 0)
            try await amqp.bindQueue(queue, exchange: exchange, routingKey: "referral.#")

            let outcomes = try await amqp.publish([
                OutgoingMessage(exchange: exchange, routingKey: "referral.created", body: Broker.body("a")),
                OutgoingMessage(
                    exchange: exchange, routingKey: "reward.granted", body: Broker.body("b"), mandatory: false),
            ])
            #expect(outcomes == [.confirmed, .confirmed])
            // Only the message matching the binding pattern reached the queue.
            #expect(try await Broker.eventually { try await amqp.declareQueue(queue, passive: true).messageCount == 1 })

            // Redeclaring with other arguments is refused (406) and costs only the channel.
            await #expect {
                try await amqp.declareQueue(queue, arguments: ["x-queue-type": .string("classic")])
            } throws: { error in
                let error = error as? AMQPError
                return error?.code == .channelClosed && error?.replyCode == 406
                    && error?.replyText?.contains("PRECONDITION_FAILED") == true
            }
            #expect(amqp.isOpen)
            #expect(try await amqp.purgeQueue(queue) == 1)
        }
    }

    @Test func batchesAreCappedByBodyBytesAndAnOversizedBodyComesAlone() async throws {
        let queue = Broker.unique("bytes")
        try await Broker.withConnection(Broker.unique("publisher"), queues: [queue]) { publisher in
            try await publisher.declareQueue(queue, arguments: quorum)
            // 400, 400, 400, 2500 (over the cap: alone), 400 bytes; cap 1000.
            let sizes = [400, 400, 400, 2500, 400]
            let messages = sizes.enumerated().map { i, n in
                OutgoingMessage(
                    exchange: "", routingKey: queue, body: Array(repeating: UInt8(ascii: "a") + UInt8(i), count: n))
            }
            #expect(try await publisher.publish(messages).allSatisfy { $0 == .confirmed })
            let consumer = try await Broker.connect(Broker.unique("consumer"))
            try await consumer.consume(queue: queue, prefetch: 10)
            // Wait until all five sit in the consumer's buffer, so the cap and not the arrival
            // times cut the batches.
            #expect(try await Broker.eventually { try await consumer.bufferedDeliveryCount() == 5 })
            var batches: [[Int]] = []
            let deadline = ContinuousClock.now + .seconds(15)
            while batches.flatMap({ $0 }).count < 5, ContinuousClock.now < deadline {
                let batch = try await consumer.nextDeliveries(max: 10, maxBytes: 1000, wait: .seconds(1))
                if !batch.isEmpty { batches.append(batch.map(\.body.count)) }
            }
            #expect(batches == [[400, 400], [400], [2500], [400]])
            await consumer.close()
        }
    }

    @Test func publishesFiveHundredWithConfirmsAndConsumesThemInOrder() async throws {
        let queue = Broker.unique("order")
        try await Broker.withConnection(Broker.unique("publisher"), queues: [queue]) { publisher in
            try await publisher.declareQueue(queue, arguments: quorum)
            let messages = (0..<500).map {
                OutgoingMessage(exchange: "", routingKey: queue, body: Broker.body("\($0)"), messageId: "m-\($0)")
            }
            let outcomes = try await publisher.publish(messages)
            #expect(outcomes.count == 500)
            #expect(outcomes.allSatisfy { $0 == .confirmed })

            let consumer = try await Broker.connect(Broker.unique("consumer"))
            try await consumer.consume(queue: queue, prefetch: 50)
            var bodies: [String] = []
            var largestBatch = 0
            let deadline = ContinuousClock.now + .seconds(30)
            while bodies.count < 500, ContinuousClock.now < deadline {
                let batch = try await consumer.nextDeliveries(max: 100, wait: .seconds(2))
                guard let last = batch.last else { continue }
                largestBatch = max(largestBatch, batch.count)
                bodies += batch.map(Broker.text)
                #expect(batch.allSatisfy { !$0.redelivered })
                try await consumer.ack(last.deliveryTag, multiple: true)
            }
            #expect(bodies == (0..<500).map { "\($0)" })
            // The prefetch bounds what the broker sends ahead of acks, hence any one batch.
            #expect(largestBatch <= 50)
            #expect(
                try await Broker.eventually { try await publisher.declareQueue(queue, passive: true).messageCount == 0 }
            )
            await consumer.close()
        }
    }

    @Test func mandatoryUnroutableMessageIsReturnedAndMatchedToItsMessage() async throws {
        let queue = Broker.unique("routable")
        let exchange = Broker.unique("direct")
        try await Broker.withConnection(Broker.unique("returns"), queues: [queue], exchanges: [exchange]) { amqp in
            try await amqp.declareExchange(exchange, type: "direct")
            try await amqp.declareQueue(queue)
            try await amqp.bindQueue(queue, exchange: exchange, routingKey: "known")
            let outcomes = try await amqp.publish([
                OutgoingMessage(exchange: exchange, routingKey: "known", body: Broker.body("1")),
                OutgoingMessage(exchange: exchange, routingKey: "nowhere", body: Broker.body("2")),
                OutgoingMessage(exchange: exchange, routingKey: "known", body: Broker.body("3")),
                OutgoingMessage(exchange: exchange, routingKey: "nowhere", body: Broker.body("4"), mandatory: false),
            ])
            #expect(outcomes == [.confirmed, .returned(replyCode: 312, replyText: "NO_ROUTE"), .confirmed, .confirmed])
        }
    }

    @Test func nackWithRequeueRedeliversAndCountsDeliveries() async throws {
        let queue = Broker.unique("requeue")
        try await Broker.withConnection(Broker.unique("nack"), queues: [queue]) { amqp in
            try await amqp.declareQueue(queue, arguments: quorum)
            #expect(
                try await amqp.publish([OutgoingMessage(exchange: "", routingKey: queue, body: Broker.body("poison"))])
                    == [.confirmed])
            try await amqp.consume(queue: queue, prefetch: 1)

            let first = try #require(try await Broker.receive(1, from: amqp).first)
            #expect(!first.redelivered)
            #expect(first.deliveryCount == nil)
            try await amqp.nack(first.deliveryTag, requeue: true)

            let second = try #require(try await Broker.receive(1, from: amqp).first)
            #expect(Broker.text(second) == "poison")
            #expect(second.redelivered)
            #expect(second.deliveryCount == 1)
            try await amqp.reject(second.deliveryTag, requeue: true)

            let third = try #require(try await Broker.receive(1, from: amqp).first)
            #expect(third.deliveryCount == 2)
            try await amqp.ack(third.deliveryTag)
        }
    }

    @Test func channelErrorsCarryTheReplyCodeAndTheChannelIsReopened() async throws {
        let queue = Broker.unique("after-404")
        try await Broker.withConnection(Broker.unique("channel-error"), queues: [queue]) { amqp in
            await #expect {
                try await amqp.declareQueue(Broker.unique("missing"), passive: true)
            } throws: { error in
                let error = error as? AMQPError
                return error?.code == .channelClosed && error?.replyCode == 404
                    && error?.replyText?.hasPrefix("NOT_FOUND") == true && error?.requiresReconnect == false
            }
            #expect(amqp.isOpen)

            // Publishing to a missing exchange closes the channel asynchronously: the batch
            // fails with the broker's 404, not with a timeout.
            await #expect {
                try await amqp.publish([
                    OutgoingMessage(exchange: Broker.unique("no-exchange"), routingKey: "x", body: [1])
                ])
            } throws: { error in
                (error as? AMQPError)?.code == .channelClosed && (error as? AMQPError)?.replyCode == 404
            }

            // The reopened channel works, in confirm mode again.
            try await amqp.declareQueue(queue)
            #expect(
                try await amqp.publish([OutgoingMessage(exchange: "", routingKey: queue, body: [2])]) == [.confirmed])
        }
    }

    @Test func brokerForcedCloseSurfacesAsConnectionLostWith320() async throws {
        let queue = Broker.unique("forced")
        let name = Broker.unique("doomed")
        try await Broker.withConnection(name, queues: [queue]) { amqp in
            try await amqp.declareQueue(queue)
            try await amqp.consume(queue: queue, prefetch: 10)
            // The wait outlasts any rabbitmqctl run: with a wait of 20 s, two rabbitmqctl calls
            // (each boots an Erlang VM) on a loaded machine let it expire before the broker had
            // sent the close, and it returned an empty batch. The bound on how fast the loss is
            // seen is measured from the close instead.
            let waiting = Task { try await amqp.nextDeliveries(max: 10, wait: .seconds(120)) }
            try await Broker.forceClose(connectionNamed: name)
            let started = ContinuousClock.now
            await #expect {
                try await waiting.value
            } throws: { error in
                let error = error as? AMQPError
                return error?.code == .connectionLost && error?.replyCode == 320
                    && error?.replyText?.contains("CONNECTION_FORCED") == true && error?.requiresReconnect == true
            }
            #expect(ContinuousClock.now - started < .seconds(10))
            #expect(!amqp.isOpen)
            // Every later call reports the same loss instead of hanging.
            await #expect {
                try await amqp.ack(1)
            } throws: { error in
                (error as? AMQPError)?.replyCode == 320
            }
        }
    }

    @Test func headersAndPropertiesRoundTrip() async throws {
        let queue = Broker.unique("headers")
        try await Broker.withConnection(Broker.unique("headers"), queues: [queue]) { amqp in
            try await amqp.declareQueue(queue)
            let headers: [String: AMQPFieldValue] = [
                "ce_type": .string("referral.created"),
                "ce_attempt": .int(3),
                "negative": .int(-42),
                "flag": .bool(true),
                "nested": .table(["inner": .string("x"), "n": .int(Int64.max)]),
                "list": .array([.string("a"), .int(1)]),
            ]
            let sent = OutgoingMessage(
                exchange: "", routingKey: queue, body: Broker.body("{}"), headers: headers, messageId: "id-1",
                contentType: "application/cloudevents+json", timestamp: 1_700_000_000)
            #expect(try await amqp.publish([sent]) == [.confirmed])
            try await amqp.consume(queue: queue, prefetch: 5)
            let delivery = try #require(try await Broker.receive(1, from: amqp).first)
            #expect(delivery.headers == headers)
            #expect(delivery.messageId == "id-1")
            #expect(delivery.contentType == "application/cloudevents+json")
            #expect(delivery.timestamp == 1_700_000_000)
            #expect(delivery.routingKey == queue)
            #expect(delivery.exchange == "")
            try await amqp.ack(delivery.deliveryTag)
        }
    }

    @Test func bodyLargerThanFrameMaxRoundTrips() async throws {
        let queue = Broker.unique("large")
        try await Broker.withConnection(Broker.unique("large"), queues: [queue]) { amqp in
            try await amqp.declareQueue(queue)
            let body = (0..<(300 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
            #expect(
                try await amqp.publish([OutgoingMessage(exchange: "", routingKey: queue, body: body)]) == [.confirmed])
            try await amqp.consume(queue: queue, prefetch: 1)
            let delivery = try #require(try await Broker.receive(1, from: amqp).first)
            #expect(delivery.body.count == body.count)
            #expect(delivery.body == body)
            try await amqp.ack(delivery.deliveryTag)
        }
    }

    @Test func idleConnectionsKeepTheirHeartbeats() async throws {
        let queue = Broker.unique("idle")
        try await Broker.withConnection(Broker.unique("idle-setup"), queues: [queue]) { setup in
            try await setup.declareQueue(queue)
            let consumer = try await Broker.connect(Broker.unique("idle-consumer"), heartbeatSeconds: 1)
            let publisher = try await Broker.connect(Broker.unique("idle-publisher"), heartbeatSeconds: 1)
            try await consumer.consume(queue: queue, prefetch: 10)
            try await publisher.enableConfirms()

            // Nobody calls either connection for five heartbeat intervals; the broker closes a
            // connection after two missed ones, so only background servicing keeps them alive.
            try await Task.sleep(for: .seconds(5))

            #expect(consumer.isOpen)
            #expect(publisher.isOpen)
            #expect(
                try await publisher.publish([
                    OutgoingMessage(exchange: "", routingKey: queue, body: Broker.body("late"))
                ]) == [.confirmed])
            let delivery = try #require(try await Broker.receive(1, from: consumer).first)
            #expect(Broker.text(delivery) == "late")
            try await consumer.ack(delivery.deliveryTag)
            await consumer.close()
            await publisher.close()
        }
    }

    @Test func deletedQueueCancelsTheConsumer() async throws {
        let queue = Broker.unique("cancelled")
        try await Broker.withConnection(Broker.unique("cancel"), queues: [queue]) { amqp in
            try await amqp.declareQueue(queue)
            try await amqp.consume(queue: queue, prefetch: 10)
            let other = try await Broker.connect(Broker.unique("deleter"))
            try await other.deleteQueue(queue)
            await other.close()
            await #expect {
                try await amqp.nextDeliveries(max: 1, wait: .seconds(10))
            } throws: { error in
                (error as? AMQPError)?.code == .consumerCancelled
            }
            #expect(amqp.isOpen)
        }
    }

    @Test func cancellingTheTaskEndsAWaitingNextDeliveries() async throws {
        let queue = Broker.unique("task-cancel")
        try await Broker.withConnection(Broker.unique("task-cancel"), queues: [queue]) { amqp in
            try await amqp.declareQueue(queue)
            #expect(
                try await amqp.publish([OutgoingMessage(exchange: "", routingKey: queue, body: [1])]) == [.confirmed])
            try await amqp.consume(queue: queue, prefetch: 1)
            // The waiter reports its first delivery, then waits on the empty queue: the cancel
            // comes once the task is consuming through the connection, whether it finds the second
            // call waiting or not yet registered (AMQPTests cover both orders on the machine).
            let (firstDelivery, reported) = AsyncStream.makeStream(of: Void.self)
            let waiting = Task {
                _ = try await Broker.receive(1, from: amqp)
                reported.yield()
                return try await amqp.nextDeliveries(max: 1, wait: .seconds(30))
            }
            for await _ in firstDelivery { break }
            let started = ContinuousClock.now
            waiting.cancel()
            await #expect(throws: CancellationError.self) { try await waiting.value }
            #expect(ContinuousClock.now - started < .seconds(2))
        }
    }

    @Test func wrongPasswordFailsWith403AndNeverShowsThePassword() async throws {
        var url = try Broker.url()
        url.password = "definitely-wrong-password"
        do {
            let amqp = try await AMQPConnection.connect(
                url, connectionName: Broker.unique("bad-login"), logger: Broker.logger)
            await amqp.close()
            Issue.record("login with a wrong password succeeded")
        } catch let error as AMQPError {
            #expect(error.code == .connectFailed)
            #expect(error.replyCode == 403)
            #expect(!"\(error)".contains("definitely-wrong-password"))
        }
    }

    @Test func callsAfterCloseFailWithClosed() async throws {
        let amqp = try await Broker.connect(Broker.unique("closing"))
        await amqp.close()
        await amqp.close()
        #expect(!amqp.isOpen)
        await #expect {
            try await amqp.declareQueue(Broker.unique("never"))
        } throws: { error in
            (error as? AMQPError)?.code == .closed
        }
    }
}
