import Testing

@testable import ReferralCore

/// The erasure scrub of stored bodies and recorded effects: what stays is an allow-list.
@Suite struct ErasureTests {
    static func scrub(_ text: String) -> String {
        String(decoding: Erasure.scrub(body: Array(text.utf8)), as: UTF8.self)
    }

    static func envelope(_ type: String, _ data: String, extra: String = "") -> String {
        #"{"specversion":"1.0","id":"e-1","source":"provisioning","type":"\#(type)","time":"2030-01-01T00:00:00Z","#
            + #""datacontenttype":"application/json","subject":"Jane Doe, 1 Main St"\#(extra),"data":\#(data)}"#
    }

    @Test func leadKeepsIdsAndLosesHouseholdContactAndExtras() {
        let out = Self.scrub(
            Self.envelope(
                "provisioning.lead.created",
                #"{"lead_id":"lead-1","referral_code":"K7QM-42XD-E","household_id":"hh-secret","contact_hash":"c-secret","#
                    + #""segment":"consumer","channel":"web","crm_score":1e1000000,"notes":"call Jane after 6"}"#,
                extra: #","x-producer-trace":"jane@example.net""#))
        #expect(
            out == #"{"specversion":"1.0","id":"e-1","source":"provisioning","type":"provisioning.lead.created","#
                + #""time":"2030-01-01T00:00:00Z","datacontenttype":"application/json","#
                + #""data":{"lead_id":"lead-1","referral_code":"K7QM-42XD-E","segment":"consumer","channel":"web"}}"#)
    }

    /// The reported failure: a number PostgreSQL's jsonb cannot hold, in a member the worker
    /// ignores. Our parser reads it; the member goes with every other extra.
    @Test func hugeNumberInAnExtraMemberIsScrubbedNotAnError() {
        let out = Self.scrub(
            Self.envelope(
                "provisioning.service.activated",
                #"{"account_id":"acct-1","activated_at":"2030-01-01T00:00:00Z","household_id":"hh-1","plan_id":"fiber-1000","#
                    + #""crm_score":1e1000000}"#))
        #expect(
            out.contains(
                #""data":{"account_id":"acct-1","activated_at":"2030-01-01T00:00:00Z","plan_id":"fiber-1000"}"#))
        #expect(!out.contains("1e1000000") && !out.contains("hh-1") && !out.contains("Jane"))
    }

    @Test(arguments: [
        (
            "provisioning.service.cancelled",
            #"{"account_id":"a","cancelled_at":"2030-01-01T00:00:00Z","reason":"moved in with Bob\u0000"}"#
        ),
        ("billing.credit.rejected", #"{"reward_id":"rwd-1-friend","reason":"card of J. Doe expired"}"#),
    ])
    func freeTextIsRedactedAndStillValid(_ type: String, _ data: String) {
        let out = Self.scrub(Self.envelope(type, data))
        #expect(out.contains(#""reason":"[erased]""#))
        #expect(!out.contains("Bob") && !out.contains("Doe") && !out.contains("\\u0000"))
        // Still a valid event of its type: `export-events` and `simulate` can read it.
        #expect(throws: Never.self, "\(out)") { try classify(body: Array(out.utf8)).get() }
    }

    @Test func absentOrNullReasonStaysAbsentOrNull() {
        #expect(
            Self.scrub(
                Self.envelope(
                    "provisioning.service.cancelled",
                    #"{"account_id":"a","cancelled_at":"2030-01-01T00:00:00Z","reason":null}"#)
            ).contains(#""reason":null"#))
        #expect(
            !Self.scrub(
                Self.envelope(
                    "provisioning.service.cancelled",
                    #"{"account_id":"a","cancelled_at":"2030-01-01T00:00:00Z"}"#)
            ).contains("reason"))
    }

    /// `referral_code` is free-form on the wire: anything but a printable string becomes null.
    @Test(arguments: [#"{"who":"Jane"}"#, #""Jane\u0000""#, #"["Jane"]"#, #""Jané""#])
    func freeFormCodeBecomesNull(_ code: String) {
        let out = Self.scrub(Self.envelope("provisioning.lead.created", #"{"lead_id":"l","referral_code":\#(code)}"#))
        #expect(out.contains(#""data":{"lead_id":"l","referral_code":null}"#), "\(out)")
    }

    @Test func idempotentByteForByte() {
        let once = Erasure.scrub(
            body: Array(
                Self.envelope(
                    "crm.ticket.resolved",
                    #"{"account_id":"a","ticket_id":"t-1","csat":5,"comment":"the engineer, Tom, was great"}"#
                ).utf8))
        #expect(Erasure.scrub(body: once) == once)
        #expect(!String(decoding: once, as: UTF8.self).contains("Tom"))
    }

    @Test(arguments: ["not json", "[1,2]", "{\"a\":", ""])
    func unreadableBodyIsReplacedWholesale(_ text: String) {
        #expect(Erasure.scrub(body: Array(text.utf8)) == Erasure.unreadableBody)
    }

    @Test func unknownTypeKeepsNoData() {
        let out = Self.scrub(Self.envelope("crm.something.new", #"{"account_id":"a","name":"Jane"}"#))
        #expect(out.hasSuffix(#""data":{}}"#))
    }

    @Test func effectsLoseBillingsReasonOnly() {
        let failed = Effect.rewardFailed(rewardId: "rwd-1-friend", failure: 2, reason: "J. Doe's card", final: true)
        #expect(
            failed.withoutFreeText
                == .rewardFailed(rewardId: "rwd-1-friend", failure: 2, reason: Erasure.redacted, final: true))
        #expect(failed.withoutFreeText.key == failed.key)
        let applied = Effect.rewardApplied(rewardId: "rwd-1-friend")
        #expect(applied.withoutFreeText == applied)
    }

    // `referrald dlq erase`: which dead letters concern the erased account, and what becomes of them.

    @Test func deadLetterOfTheAccountIsScrubbedAndAScrubbedOneIsLeftAlone() throws {
        let body = Array(
            Self.envelope(
                "provisioning.service.activated",
                #"{"account_id":"acct-1","activated_at":"2030-01-01T00:00:00Z","household_id":"hh-secret","crm_score":"x"}"#
            ).utf8)
        guard case .scrub(let copy) = Erasure.deadLetter(body: body, account: "acct-1") else {
            Issue.record("not scrubbed")
            return
        }
        let text = String(decoding: copy, as: UTF8.self)
        #expect(text.contains(#""account_id":"acct-1""#) && !text.contains("hh-secret") && !text.contains("Jane"))
        #expect(Erasure.deadLetter(body: copy, account: "acct-1") == .alreadyScrubbed)
    }

    @Test func leadsAndRewardsOfTheAccountAreFoundByTheirIds() {
        let lead = Array(
            Self.envelope("provisioning.lead.created", #"{"lead_id":"lead-9","household_id":"hh-secret"}"#).utf8)
        let rejected = Array(
            Self.envelope("billing.credit.rejected", #"{"reward_id":"rwd-9-friend","reason":"J. Doe"}"#).utf8)
        #expect(Erasure.deadLetter(body: lead, account: "acct-1") == .unrelated)
        #expect(Erasure.deadLetter(body: lead, account: "acct-1", leads: ["lead-9"]) != .unrelated)
        #expect(Erasure.deadLetter(body: rejected, account: "acct-1", rewards: ["rwd-9-friend"]) != .unrelated)
    }

    @Test func anotherAccountWhoseIdStartsTheSameIsUnrelated() {
        let other = Array(Self.envelope("crm.ticket.opened", #"{"account_id":"acct-10","ticket_id":"t-1"}"#).utf8)
        #expect(Erasure.deadLetter(body: other, account: "acct-1") == .unrelated)
        #expect(Erasure.deadLetter(body: Array("{broken acct-10".utf8), account: "acct-1") == .unrelated)
    }

    @Test func unreadableBodyThatNamesTheAccountIsDropped() {
        #expect(
            Erasure.deadLetter(
                body: Array(#"{"account_id":"acct-1","household_id":"hh-secret""#.utf8), account: "acct-1") == .drop)
        #expect(Erasure.deadLetter(body: Array(#"["acct-1"]"#.utf8), account: "acct-1") == .drop)
        // An extra member naming the account in a valid object is scrubbed, not dropped.
        let extra = Array(
            Self.envelope("crm.ticket.opened", #"{"account_id":"acct-2","ticket_id":"t-1","note":"see acct-1"}"#).utf8)
        guard case .scrub(let copy) = Erasure.deadLetter(body: extra, account: "acct-1") else {
            Issue.record("not scrubbed")
            return
        }
        #expect(!String(decoding: copy, as: UTF8.self).contains("acct-1"))
    }
}
