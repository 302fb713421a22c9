import AMQP
import Logging
import Testing

@testable import ReferralWorker

/// The intake against the real broker: what a lane gives back after a failure.
@Suite(.tearsDownTestBeds) struct IntakeTests {
    /// A dead letter's original is acked on its own as soon as its copy is confirmed, before the
    /// batch is applied. When the lane then fails (its publisher or database lost) and gives the
    /// batch back, that delivery must not come back with it: taken again, it was dead-lettered a
    /// second time, and the DLQ held two copies of one bad message.
    @Test func aDeliverySettledOnItsOwnIsNotGivenBack() async throws {
        let bed = try await TestBed.make()
        let intake = Intake(settings: bed.settings, logger: TestServices.logger, name: "\(bed.name) intake")
        for i in 0..<3 {
            try await bed.publish(Array("not json \(i)".utf8), type: "provisioning.install.completed")
        }
        var first: [Intake.Item] = []
        let deadline = ContinuousClock.now + .seconds(10)
        while first.count < 3, ContinuousClock.now < deadline {
            if !first.isEmpty { await intake.giveBack(lane: 0) }
            first = try await intake.next(lane: 0, max: 10, maxBytes: 1 << 20, wait: .milliseconds(200))
        }
        #expect(first.count == 3)
        let settledAlone = try #require(first.dropFirst().first)
        try await intake.ackNow(settledAlone.delivery, generation: settledAlone.generation)
        await intake.giveBack(lane: 0)

        let again = try await intake.next(lane: 0, max: 10, maxBytes: 1 << 20, wait: .milliseconds(200))
        #expect(again.map(\.delivery.body) == [first[0].delivery.body, first[2].delivery.body])
        await intake.finish(lane: 0)
        await intake.close()
        // Two acked by the batch, one on its own: nothing is left for a redelivery.
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.inboxQueue) == 0 })
    }
}
