import AMQP
import Foundation
import ReferralCore
import Testing

/// The real binary, stopped abruptly at the two dangerous moments, then restarted.
@Suite(.serialized, .tearsDownTestBeds) struct CrashRecoveryTests {
    @Test func crashBetweenCommitAndAckYieldsNoSecondCode() async throws {
        let bed = try await TestBed.make()
        let crashing = try bed.spawnDaemon(extraEnvironment: ["REFERRALD_FAILPOINT": "after-commit"])
        try await bed.publish(
            PipelineTests.activation(id: "crash-1", account: "acct-8001"),
            type: "provisioning.service.activated")
        #expect(await Ops.waitForExit(crashing, timeout: .seconds(30)))
        #expect(crashing.terminationStatus == 86)
        // Committed but neither published nor acked.
        #expect(try await bed.count("SELECT count(*) FROM referral_codes") == 1)
        #expect(
            try await bed.count(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND type = 'referral.code.issued'") == 1)
        // The row was born leased to the crashed worker (10 s): end the lease as time would.
        #expect(
            try await bed.count(
                """
                WITH x AS (UPDATE outbox SET leased_until = now() - interval '1 s' WHERE leased_until > now() RETURNING 1)
                SELECT count(*) FROM x
                """) >= 1)

        let restarted = try bed.spawnDaemon()
        // The activation also earns a post_activation ask: count codes only.
        let observed = try await bed.take(from: bed.observerQueue, count: 3, timeout: .seconds(8))
            .filter { $0.routingKey == "referral.code.issued" }
        #expect(observed.count == 1)
        #expect(try await bed.eventually { try await bed.queueDepth(bed.settings.inboxQueue) == 0 })
        #expect(try await bed.count("SELECT count(*) FROM referral_codes") == 1)
        #expect(try await bed.count("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0)
        restarted.terminate()  // SIGTERM: a graceful stop exits 0
        #expect(await Ops.waitForExit(restarted, timeout: .seconds(30)))
        #expect(restarted.terminationStatus == 0)
    }

    @Test func crashBetweenPublishAndMarkRepublishesWithTheSameId() async throws {
        let bed = try await TestBed.make()
        let crashing = try bed.spawnDaemon(extraEnvironment: ["REFERRALD_FAILPOINT": "after-publish"])
        try await bed.publish(
            PipelineTests.activation(id: "crash-2", account: "acct-8002"),
            type: "provisioning.service.activated")
        #expect(await Ops.waitForExit(crashing, timeout: .seconds(30)))
        #expect(crashing.terminationStatus == 86)
        // The outbox lease (60 s) would delay the retry: end it as an expired lease would.
        _ = try await bed.count(
            "WITH x AS (UPDATE outbox SET leased_until = now() - interval '1 s' RETURNING 1) SELECT count(*) FROM x")
        let restarted = try bed.spawnDaemon()
        let observed = try await bed.take(from: bed.observerQueue, count: 5, timeout: .seconds(8))
            .filter { $0.routingKey == "referral.code.issued" }
        // Published once before the crash and once after: the same event, the same id.
        #expect(observed.count == 2)
        #expect(Set(observed.compactMap(\.messageId)).count == 1)
        #expect(Set(observed.map(\.body)).count == 1)
        #expect(try await bed.count("SELECT count(*) FROM referral_codes") == 1)
        restarted.terminate()
        #expect(await Ops.waitForExit(restarted, timeout: .seconds(30)))
        #expect(restarted.terminationStatus == 0)
    }
}
