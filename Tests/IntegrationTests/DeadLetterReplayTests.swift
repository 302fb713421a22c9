import AMQP
import Foundation
import ReferralWorker
import Testing

@Suite(.tearsDownTestBeds) struct DeadLetterReplayTests {
    @Test func replayMovesMatchingDeadLettersBackToTheInboxUnchanged() async throws {
        let bed = try await TestBed.make()
        let worker = bed.startWorker()
        let notJSON: [UInt8] = Array("{not json".utf8)
        let unknown = Array(
            #"{"specversion":"1.0","id":"u1","source":"s","type":"provisioning.modem.rebooted","time":"2026-11-23T10:00:00Z","data":{}}"#
                .utf8)
        try await bed.publish(notJSON, type: "provisioning.lead.created")
        try await bed.publish(unknown, type: "provisioning.lead.created")
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.deadLetterQueue) == 2 })
        worker.cancel()
        _ = await worker.result

        let result = try await DeadLetterReplay.run(
            settings: bed.settings, onlyError: "unknown_type", limit: nil,
            logger: TestServices.logger)
        #expect(result == .init(replayed: 1, kept: 1))
        let back = try await bed.take(from: bed.settings.inboxQueue, count: 2, timeout: .seconds(3))
        #expect(back.map(\.body) == [unknown])
        #expect(back.first?.headers["x-referrald-error"] == nil)
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.deadLetterQueue) == 1 })
    }

    /// More dead letters than one prefetch window (256), the matching ones behind the others:
    /// every matching one is replayed and every other one stays, once.
    @Test func aFilteredReplayReachesMatchingDeadLettersBehindAFullWindowOfOthers() async throws {
        let bed = try await TestBed.make()
        func deadLetter(_ i: Int, _ code: String) -> OutgoingMessage {
            OutgoingMessage(
                exchange: "", routingKey: bed.settings.deadLetterQueue, body: Array("{\"n\":\(i)}".utf8),
                headers: ["x-referrald-error": .string(code)], messageId: "dl-\(i)",
                contentType: "application/cloudevents+json", persistent: true, mandatory: true)
        }
        let others = (0..<300).map { deadLetter($0, "not_json") }
        let matching = (300..<340).map { deadLetter($0, "unknown_type") }
        #expect(try await bed.amqp.publish(others + matching).allSatisfy { $0 == .confirmed })

        let result = try await DeadLetterReplay.run(
            settings: bed.settings, onlyError: "unknown_type", limit: nil,
            logger: TestServices.logger)
        #expect(result == .init(replayed: 40, kept: 300))
        let back = try await bed.take(from: bed.settings.inboxQueue, count: 40, timeout: .seconds(5))
        #expect(Set(back.compactMap(\.messageId)) == Set(matching.compactMap(\.messageId)))
        // Every other dead letter is still there. RabbitMQ does not confirm acks: one sent just
        // before the reader closed can be dropped with the channel, and that message comes back
        // (at least once). A matching one back in the DLQ beside its replayed copy is such a
        // redelivery, harmless (the inbox deduplicates), never a dead letter left unread.
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.deadLetterQueue) >= 300 })
        let depth = Int(try await bed.queueDepth(bed.settings.deadLetterQueue))
        let left = try await bed.take(from: bed.settings.deadLetterQueue, count: depth, timeout: .seconds(5))
        let leftIds = Set(left.compactMap(\.messageId))
        #expect(leftIds.isSuperset(of: others.compactMap(\.messageId)))
        let matchingIds = Set(matching.compactMap(\.messageId))
        let matchingLeft = left.filter { $0.messageId.map(matchingIds.contains) ?? false }
        let unread = matchingLeft.filter { !$0.redelivered }.count
        #expect(unread == 0, "\(unread) matching dead letters left unread")
    }
}
