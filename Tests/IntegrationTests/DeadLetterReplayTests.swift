import AMQP
import Foundation
import ReferralWorker
import Testing

@Suite struct DeadLetterReplayTests {
    @Test func replayMovesMatchingDeadLettersBackToTheInboxUnchanged() async throws {
        let bed = try await TestBed.make()
        let worker = bed.startWorker()
        let notJSON: [UInt8] = Array("{not json".utf8)
        let unknown = Array(#"{"specversion":"1.0","id":"u1","source":"s","type":"provisioning.modem.rebooted","time":"2026-11-23T10:00:00Z","data":{}}"#.utf8)
        try await bed.publish(notJSON, type: "provisioning.lead.created")
        try await bed.publish(unknown, type: "provisioning.lead.created")
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.deadLetterQueue) == 2 })
        worker.cancel()
        _ = await worker.result

        let result = try await DeadLetterReplay.run(settings: bed.settings, onlyError: "unknown_type", limit: nil,
                                                    logger: TestServices.logger)
        #expect(result == .init(replayed: 1, kept: 1))
        let back = try await bed.take(from: bed.settings.inboxQueue, count: 2, timeout: .seconds(3))
        #expect(back.map(\.body) == [unknown])
        #expect(back.first?.headers["x-referrald-error"] == nil)
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.deadLetterQueue) == 1 })
        await bed.tearDown()
    }
}
