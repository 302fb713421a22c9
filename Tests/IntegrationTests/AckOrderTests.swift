import AMQP
import Foundation
import Testing

private typealias Broker = AMQPTestBroker

/// An actor that acks like the intake does: each call computes the next `multiple` target under
/// the actor's isolation, then awaits the ack, so the actor re-enters while acks are in flight.
private actor Acker {
    private let connection: AMQPConnection
    private var next: UInt64 = 0
    private(set) var failures: [String] = []

    init(_ connection: AMQPConnection) { self.connection = connection }

    func ackNext() async {
        next += 1
        do {
            try await connection.ack(next, multiple: true)
        } catch {
            failures.append("\(error)")
        }
    }
}

/// A task executor that runs what it is given in reverse order of arrival, a few milliseconds
/// late: any part of an ack that hops off the caller's actor before it reaches the connection
/// thread runs here, and so is overtaken by the next one, every time rather than by chance.
private final class ReversingExecutor: TaskExecutor, @unchecked Sendable {
    // `held` and `stopped` are only touched under `lock`.
    private let lock = NSLock()
    private var held: [UnownedJob] = []
    private var stopped = false

    func start() {
        Thread.detachNewThread { [self] in
            while true {
                Thread.sleep(forTimeInterval: 0.003)
                lock.lock()
                let jobs = held
                held = []
                let stop = stopped && jobs.isEmpty
                lock.unlock()
                if stop { return }
                for job in jobs.reversed() { job.runSynchronously(on: asUnownedTaskExecutor()) }
            }
        }
    }

    func stop() {
        lock.lock()
        stopped = true
        lock.unlock()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        lock.lock()
        held.append(job)
        lock.unlock()
    }
}

@Suite("Acks reach the broker in the order they were made")
struct AckOrderTests {
    /// Hundreds of reentrant `multiple` acks with increasing tags, from tasks whose nonisolated
    /// work runs reversed: an ack that overtook an earlier one made the earlier tag unknown, the
    /// broker closed the channel (406) and redelivered the batch, and the fault suite saw a
    /// hostile input dead-lettered twice.
    @Test func reentrantMultipleAcksFromOneActorKeepTheirOrder() async throws {
        let queue = Broker.unique("ack-order")
        let count = 400
        try await Broker.withConnection(Broker.unique("ack-order"), queues: [queue]) { amqp in
            try await amqp.declareQueue(queue, arguments: ["x-queue-type": .string("quorum")])
            let messages = (0..<count).map {
                OutgoingMessage(exchange: "", routingKey: queue, body: Broker.body("m\($0)"))
            }
            #expect(try await amqp.publish(messages).allSatisfy { $0 == .confirmed })
            let consumer = try await Broker.connect(Broker.unique("ack-order.consumer"))
            try await consumer.consume(queue: queue, prefetch: UInt16(count))
            let received = try await Broker.receive(count, from: consumer)
            try #require(received.map(\.deliveryTag) == Array(1...UInt64(count)))

            let acker = Acker(consumer)
            let reversing = ReversingExecutor()
            reversing.start()
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<count {
                    group.addTask(executorPreference: reversing) { await acker.ackNext() }
                }
            }
            reversing.stop()
            #expect(await acker.failures == [])
            // Every delivery was settled: none comes back to the queue.
            #expect(try await Broker.eventually { try await amqp.declareQueue(queue, passive: true).messageCount == 0 })
            await consumer.close()
        }
    }
}
