import Foundation
import ReferralCore
import Testing

/// An erasure strips household and contact from every lead the account ordered, also one whose
/// friend is another account. The worker must re-decide those leads' standings in the same batch:
/// a stale household claim would reject a later lead of that household, and a published
/// rejection stands.
@Suite(.serialized, .tearsDownTestBeds) struct ErasureStandingIntegrationTests {
    @Test func aLaterLeadOfTheHouseholdIsNotRejectedByAClaimTheErasureRemoved() async throws {
        let bed = try await TestBed.make(["REFERRALD_PROGRAMS_FILE": try Scenario.fastPrograms(hold: "30d")])
        let worker = bed.startWorker()
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        for r in ["es-r1", "es-r2"] {
            try await s.send(
                "provisioning.service.activated",
                [
                    "account_id": r, "activated_at": Scenario.time(-3_600), "household_id": "hh-\(r)",
                    "segment": "consumer",
                ])
        }
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 2 }
        func code(_ account: String) throws -> String {
            try #require(
                seen.of("referral.code.issued").first { $0.data["account_id"] as? String == account }?.data["code"]
                    as? String)
        }
        try await s.send(
            "provisioning.lead.created",
            ["lead_id": "es-l2", "referral_code": try code("es-r1"), "household_id": "hh-x"],
            at: Scenario.time(-600))
        try await s.send(
            "provisioning.order.placed", ["lead_id": "es-l2", "account_id": "es-other"], at: Scenario.time(-500))
        try await s.send(
            "provisioning.order.placed", ["lead_id": "es-l2", "account_id": "es-f2"], at: Scenario.time(-400))
        try await s.send("crm.customer.erased", ["account_id": "es-f2"], at: Scenario.time(-300))
        try await s.send(
            "provisioning.lead.created",
            ["lead_id": "es-l4", "referral_code": try code("es-r2"), "household_id": "hh-x"])
        // Not rejected: the offer goes out (a rejected referral gets none).
        try await s.collect(into: &seen) { seen in
            seen.of("referral.friend_offer.granted").contains { $0.data["lead_id"] as? String == "es-l4" }
        }
        #expect(seen.of("referral.friend_offer.granted").contains { $0.data["lead_id"] as? String == "es-l4" })
        #expect(
            try await bed.count("SELECT count(*) FROM referrals WHERE lead_id = 'es-l4' AND stage = 'rejected'") == 0)
        worker.cancel()
        _ = await worker.result
    }
}
