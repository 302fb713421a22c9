import AMQP
import Testing

@testable import ReferralWorker

/// `QueueTransfer.settle` against the real broker, on a quorum queue (the parked queue).
@Suite(.tearsDownTestBeds) struct QueueTransferTests {
    /// A batch of 200 settled and the reader closed at once, as the parked mover and the `dlq`
    /// commands do, five times: only the three requeued come back. Acked one frame each, the
    /// acks past the broker's 32 settles in flight were dropped with the channel and their
    /// messages returned (rabbitmq-server#10327): 9 to 29 came back in two runs of three.
    @Test func aBatchSettledJustBeforeTheReaderClosesStaysSettled() async throws {
        let bed = try await TestBed.make()
        let queue = bed.settings.parkedQueue
        for round in 0..<5 {
            let bodies = (0..<200).map { Array("round \(round) message \($0)".utf8) }
            let outcomes = try await bed.amqp.publish(
                bodies.map {
                    OutgoingMessage(exchange: "", routingKey: queue, body: $0, persistent: true, mandatory: true)
                })
            #expect(outcomes.allSatisfy { $0 == .confirmed })

            let reader = try await bed.settings.connectAMQP(
                name: "\(bed.name) settle reader", logger: TestServices.logger)
            try await reader.consume(queue: queue, prefetch: 200)
            var batch: [Delivery] = []
            let deadline = ContinuousClock.now + .seconds(15)
            while batch.count < 200, ContinuousClock.now < deadline {
                batch += try await reader.nextDeliveries(max: 200 - batch.count, wait: .milliseconds(200))
            }
            try #require(batch.count == 200)
            let back = [batch[0], batch[99], batch[198]]
            try await QueueTransfer.settle(batch, requeue: back, on: reader)
            await reader.close()

            // Whatever the closed channel gave back is in the queue before a message published
            // after it: read up to that sentinel, and nothing but the three may come first.
            let sentinel = "round \(round) sentinel"
            #expect(
                try await bed.amqp.publish([
                    OutgoingMessage(
                        exchange: "", routingKey: queue, body: Array(sentinel.utf8),
                        persistent: true, mandatory: true)
                ]) == [.confirmed])
            var seen: [String] = []
            let consumer = try await bed.settings.connectAMQP(
                name: "\(bed.name) settle check", logger: TestServices.logger)
            try await consumer.consume(queue: queue, prefetch: 500)
            let until = ContinuousClock.now + .seconds(15)
            while seen.last != sentinel, ContinuousClock.now < until {
                let got = try await consumer.nextDeliveries(max: 500, wait: .milliseconds(200))
                if let last = got.last { try await consumer.ack(last.deliveryTag, multiple: true) }
                seen += got.map { String(decoding: $0.body, as: UTF8.self) }
            }
            await consumer.close()
            #expect(seen.last == sentinel)
            #expect(
                Set(seen.dropLast()) == Set(back.map { String(decoding: $0.body, as: UTF8.self) }),
                "round \(round): \(seen.count - 1) came back")
            #expect(try await bed.eventually { try await bed.queueDepth(queue) == 0 })
        }
    }
}
