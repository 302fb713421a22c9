import AMQP
import Foundation
import Postgres
import ReferralCore
import ReferralStore
import ReferralWorker
import Testing

/// The referral lifecycle through RabbitMQ and PostgreSQL, one contract row after another, with
/// a programs file whose hold is seconds long.
@Suite(.serialized, .tearsDownTestBeds) struct LifecycleTests {
    @Test func leadToRewardToClawbackAndErasure() async throws {
        let bed = try await TestBed.make([
            "REFERRALD_PROGRAMS_FILE": try Scenario.fastPrograms(hold: "2s"),
            "REFERRALD_REWARD_RETRY_BACKOFF": "1s",
        ])
        let worker = bed.startWorker()
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []

        // provisioning.service.activated: the referrer becomes a customer with a code.
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "acct-A", "activated_at": Scenario.time(-86_400), "household_id": "hh-A",
                "segment": "consumer",
            ])
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 1 }
        let code = try #require(seen.of("referral.code.issued").first?.data["code"] as? String)

        // provisioning.lead.created with the code typed loosely: a referral and the friend offer.
        let typed = code.lowercased().replacingOccurrences(of: "-", with: " ")
        try await s.send(
            "provisioning.lead.created",
            [
                "lead_id": "lead-1", "referral_code": typed, "household_id": "hh-F", "segment": "consumer",
                "channel": "web",
            ])
        try await s.collect(into: &seen) { $0.of("referral.friend_offer.granted").count == 1 }
        let offer = try #require(seen.of("referral.friend_offer.granted").first)
        let referral = try #require(offer.data["referral_id"] as? String)
        #expect(offer.data["referral_code"] as? String == code)
        #expect(offer.data["priority_install"] as? Bool == true)

        // order.placed, install.scheduled (recorded), install.completed, service.activated.
        try await s.send("provisioning.order.placed", ["lead_id": "lead-1", "account_id": "acct-F"])
        try await s.send(
            "provisioning.install.scheduled", ["account_id": "acct-F", "scheduled_for": Scenario.time(3_600)])
        try await s.send("provisioning.install.completed", ["account_id": "acct-F", "completed_at": Scenario.time()])
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "acct-F", "activated_at": Scenario.time(), "household_id": "hh-F", "segment": "consumer",
            ])
        // The hold (2 s) ends on a durable timer: both rewards are issued once.
        try await s.collect(into: &seen) { $0.of("referral.reward.issued").count >= 2 }
        let issued = seen.of("referral.reward.issued")
        let rewardIds = Set(issued.compactMap { $0.data["reward_id"] as? String })
        let n = referral.dropFirst(4)
        #expect(rewardIds == ["rwd-\(n)-referrer", "rwd-\(n)-friend"])
        #expect(issued.first { $0.data["beneficiary"] as? String == "referrer" }?.data["amount_minor"] as? Int == 5000)
        #expect(
            issued.first { $0.data["beneficiary"] as? String == "friend" }?.data["account_id"] as? String == "acct-F")
        #expect(seen.of("referral.code.issued").count == 2)  // the friend is now a customer too
        #expect(try await bed.count("SELECT count(*) FROM inbox WHERE type = 'provisioning.install.scheduled'") == 1)

        // billing.credit.applied: referrer's reward applied. billing.credit.rejected: the friend's
        // fails and is re-issued with the same reward_id after the back-off.
        try await s.send(
            "billing.credit.applied",
            [
                "reward_id": "rwd-\(n)-referrer", "account_id": "acct-A", "amount_minor": 5000, "currency": "USD",
            ])
        try await s.send("billing.credit.rejected", ["reward_id": "rwd-\(n)-friend", "reason": "account locked"])
        try await s.collect(into: &seen) { $0.of("referral.reward.issued").count >= 3 }
        let friendIssues = seen.of("referral.reward.issued").filter {
            $0.data["reward_id"] as? String == "rwd-\(n)-friend"
        }
        #expect(friendIssues.count == 2)
        #expect(Set(friendIssues.map(\.id)).count == 2)  // a new CloudEvents id, the same reward_id
        #expect(
            try await bed.eventually {
                try await bed.count(
                    "SELECT count(*) FROM rewards WHERE reward_id = 'rwd-\(n)-referrer' AND state = 'applied'") == 1
            })

        let rewarded = try await Explain.render(bed.database, id: referral, now: SystemClock().now())
        #expect(rewarded.contains("referral \(referral): rewarded"), "\(rewarded)")
        #expect(rewarded.contains("qualified at"), "\(rewarded)")

        // provisioning.service.cancelled inside the clawback window: the referrer's reward is reversed.
        try await s.send(
            "provisioning.service.cancelled",
            ["account_id": "acct-F", "cancelled_at": Scenario.time(), "reason": "moved"])
        try await s.collect(into: &seen) { $0.of("referral.reward.reversed").count >= 1 }
        let reversed = seen.of("referral.reward.reversed")
        #expect(reversed.map { $0.data["reward_id"] as? String } == ["rwd-\(n)-referrer"])
        #expect(reversed.first?.data["amount_minor"] as? Int == 5000)

        let transitions = seen.statuses(referral)
        for step in ["-:lead", "lead:ordered", "ordered:installed", "installed:activated"] {
            #expect(transitions.contains(step.replacingOccurrences(of: ":", with: ">")), "\(step) in \(transitions)")
        }
        #expect(transitions.last == "rewarded>reversed" || transitions.last == "qualified>reversed", "\(transitions)")

        // crm.customer.erased: personal data goes, the ledger stays.
        try await s.send("crm.customer.erased", ["account_id": "acct-F"])
        #expect(
            try await bed.eventually {
                try await bed.count(
                    "SELECT count(*) FROM facts WHERE (account_id = 'acct-F' OR lead_id = 'lead-1') AND household_id IS NOT NULL"
                ) == 0
            })
        // Bodies are rewritten by the erasure's follow-up, after its commit.
        #expect(
            try await bed.eventually {
                try await bed.count(
                    "SELECT count(*) FROM inbox WHERE lead_id = 'lead-1' AND position('hh-F' in convert_from(body, 'UTF8')) > 0"
                ) == 0
            })
        #expect(try await bed.count("SELECT count(*) FROM rewards WHERE referral_id = '\(referral)'") == 2)

        let explained = try await Explain.render(bed.database, id: referral, now: SystemClock().now())
        #expect(explained.contains("referral \(referral): reversed"), "\(explained)")
        #expect(explained.contains("rwd-\(n)-referrer"))
        #expect(explained.contains("history:"))
        try await Scenario.expectSchemaValid(seen)
        worker.cancel()
        _ = await worker.result
    }

    @Test func fraudLostAlreadyReferredAndUnattributed() async throws {
        let bed = try await TestBed.make(["REFERRALD_PROGRAMS_FILE": try Scenario.fastPrograms(hold: "1h")])
        let worker = bed.startWorker()
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        for (account, household) in [("acct-B", "hh-B"), ("acct-C", "hh-C")] {
            try await s.send(
                "provisioning.service.activated",
                [
                    "account_id": account, "activated_at": Scenario.time(-86_400), "household_id": household,
                    "contact_hash": "c-\(account)", "segment": "consumer",
                ])
        }
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 2 }
        let codes = Dictionary(
            uniqueKeysWithValues: seen.of("referral.code.issued").map {
                ($0.data["account_id"] as! String, $0.data["code"] as! String)
            })

        // Same household as the referrer: rejected, no offer.
        try await s.send(
            "provisioning.lead.created",
            ["lead_id": "lead-2", "referral_code": codes["acct-B"]!, "household_id": "hh-B"])
        // A friend who cancels during the hold: lost.
        try await s.send(
            "provisioning.lead.created",
            ["lead_id": "lead-3", "referral_code": codes["acct-B"]!, "household_id": "hh-3"])
        try await s.send("provisioning.order.placed", ["lead_id": "lead-3", "account_id": "acct-3"])
        try await s.send(
            "provisioning.service.activated",
            ["account_id": "acct-3", "activated_at": Scenario.time(), "household_id": "hh-3"])
        try await s.send("provisioning.service.cancelled", ["account_id": "acct-3", "cancelled_at": Scenario.time(1)])
        // Unknown code: unattributed, nothing published.
        try await s.send("provisioning.lead.created", ["lead_id": "lead-4", "referral_code": "ZZZZ-ZZZZ-0"])
        // Two referrers reach one household: the earlier lead wins, whatever arrives first.
        try await s.send(
            "provisioning.lead.created",
            [
                "lead_id": "lead-5", "referral_code": codes["acct-B"]!, "household_id": "hh-X",
            ], at: Scenario.time(-60))
        try await s.send(
            "provisioning.lead.created",
            [
                "lead_id": "lead-6", "referral_code": codes["acct-C"]!, "household_id": "hh-X",
            ], at: Scenario.time(-3_600))

        let ids = try await waitForReferrals(bed, leads: ["lead-2", "lead-3", "lead-5", "lead-6"])
        try await s.collect(into: &seen) { seen in
            seen.statuses(ids["lead-2"]!).last == "lead>rejected" || seen.statuses(ids["lead-2"]!).last == "->rejected"
        }
        #expect(try await bed.eventually { try await stage(bed, ids["lead-2"]!) == "rejected:same_household" })
        #expect(
            try await bed.eventually {
                try await stage(bed, ids["lead-3"]!) == "lost:" + (try await reason(bed, ids["lead-3"]!))
            })
        #expect(try await stage(bed, ids["lead-3"]!).hasPrefix("lost"))
        #expect(try await bed.eventually { try await stage(bed, ids["lead-5"]!) == "rejected:already_referred" })
        #expect(try await stage(bed, ids["lead-6"]!).hasPrefix("lead"))
        #expect(try await bed.count("SELECT count(*) FROM referrals WHERE lead_id = 'lead-4'") == 0)
        try await s.collect(into: &seen, timeout: .seconds(2)) { _ in false }
        let offers = Set(seen.of("referral.friend_offer.granted").compactMap { $0.data["lead_id"] as? String })
        #expect(!offers.contains("lead-2") && !offers.contains("lead-4"))
        #expect(offers.contains("lead-3") && offers.contains("lead-6"))

        let rejected = try await Explain.render(bed.database, id: ids["lead-2"]!, now: SystemClock().now())
        #expect(rejected.contains(": rejected (same_household)"), "\(rejected)")
        #expect(rejected.contains("decided by fraud.reject_same_household"), "\(rejected)")
        let lost = try await Explain.render(bed.database, id: "acct-3", now: SystemClock().now())
        #expect(lost.contains(": lost"), "\(lost)")
        try await Scenario.expectSchemaValid(seen)
        worker.cancel()
        _ = await worker.result
    }

    @Test func firstInvoicePaidQualifiesOnlyOnceArrearsAreCleared() async throws {
        let bed = try await TestBed.make([
            "REFERRALD_PROGRAMS_FILE": try Scenario.fastPrograms(hold: "1s", milestone: "first_invoice_paid")
        ])
        let worker = bed.startWorker()
        var s = Scenario(bed: bed)
        var seen: [Scenario.Published] = []
        try await s.send(
            "provisioning.service.activated",
            [
                "account_id": "acct-R", "activated_at": Scenario.time(-86_400), "household_id": "hh-R",
            ])
        try await s.collect(into: &seen) { $0.of("referral.code.issued").count == 1 }
        let code = try #require(seen.of("referral.code.issued").first?.data["code"] as? String)
        try await s.send(
            "provisioning.lead.created", ["lead_id": "lead-7", "referral_code": code, "household_id": "hh-7"])
        try await s.send("provisioning.order.placed", ["lead_id": "lead-7", "account_id": "acct-7"])
        try await s.send(
            "provisioning.service.activated",
            ["account_id": "acct-7", "activated_at": Scenario.time(), "household_id": "hh-7"])
        // billing.invoice.overdue: in arrears from now on. billing.invoice.paid, sequence 1: the
        // milestone — but the friend is in arrears, so no reward after the hold.
        try await s.send("billing.invoice.overdue", ["account_id": "acct-7", "invoice_id": "inv-0", "days_overdue": 7])
        try await s.send(
            "billing.invoice.paid",
            [
                "account_id": "acct-7", "invoice_id": "inv-1", "amount_minor": 4999, "currency": "USD", "sequence": 1,
                "credits_minor": 0,
            ])
        try await s.collect(into: &seen, timeout: .seconds(4)) { $0.of("referral.reward.issued").count > 0 }
        #expect(seen.of("referral.reward.issued").isEmpty, "no reward while in arrears")
        // Paying the overdue invoice clears the arrears: qualification resumes.
        try await s.send(
            "billing.invoice.paid",
            [
                "account_id": "acct-7", "invoice_id": "inv-0", "amount_minor": 4999, "currency": "USD", "sequence": 2,
            ])
        try await s.collect(into: &seen) { $0.of("referral.reward.issued").count >= 2 }
        #expect(seen.of("referral.reward.issued").count == 2)
        try await Scenario.expectSchemaValid(seen)
        worker.cancel()
        _ = await worker.result
    }

    @Test func anUnchangedProgramsFileKeepsItsVersionAndAChangedOneMakesANewOne() async throws {
        let bed = try await TestBed.make()
        let programs = try bed.programs().programs
        let first = try await bed.db.transaction { c in try ProgramStore.registerPrograms(c, programs) }
        let again = try await bed.db.transaction { c in try ProgramStore.registerPrograms(c, programs) }
        #expect(first == again)
        var edited = programs
        edited[0].referrerReward.amountMinor += 1000
        let changed = edited
        let next = try await bed.db.transaction { c in try ProgramStore.registerPrograms(c, changed) }
        #expect(next[changed[0].id] == (first[changed[0].id] ?? 0) + 1)
        #expect(next[changed[1].id] == first[changed[1].id])
    }

    func waitForReferrals(_ bed: TestBed, leads: [String]) async throws -> [String: String] {
        var ids: [String: String] = [:]
        _ = try await bed.eventually {
            ids = Dictionary(
                uniqueKeysWithValues: try await bed.db.run { c in
                    try c.query(
                        "SELECT lead_id, referral_id FROM referrals WHERE lead_id = ANY($1::text[])",
                        [.textArray(leads)]
                    )
                    .map { (try $0.decode("lead_id", as: String.self), try $0.decode("referral_id", as: String.self)) }
                })
            return ids.count == leads.count
        }
        try #require(ids.count == leads.count, "referrals created: \(ids)")
        return ids
    }

    func stage(_ bed: TestBed, _ referral: String) async throws -> String {
        try await bed.db.run { c in
            let row = try c.query(
                "SELECT stage || ':' || coalesce(reason, '') AS s FROM referrals WHERE referral_id = $1",
                [.text(referral)])
            return try row.first?.decode("s", as: String.self) ?? ""
        }
    }

    func reason(_ bed: TestBed, _ referral: String) async throws -> String {
        String(
            try await stage(bed, referral).split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).last
                ?? "")
    }
}
