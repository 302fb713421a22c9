/// An event referrald publishes on `referral.events`, ready to be stored in the outbox and
/// encoded. Build it with the typed constructors below, one per published type, which write
/// every field its schema lists (`null` where there is no value) under the contract's names.
public struct OutgoingEvent: Sendable, Equatable {
    /// Kept with the outbox row: a re-publish of the same row keeps the same CloudEvents id.
    public var id: String
    public var source: String
    public var type: PublishedType
    public var time: Instant
    /// Omitted from the envelope when nil: the envelope schema allows no `null` subject.
    public var subject: String?
    public var data: JSONObject

    public init(
        id: String, source: String = "referrald", type: PublishedType, time: Instant,
        subject: String?, data: JSONObject
    ) {
        self.id = id
        self.source = source
        self.type = type
        self.time = time
        self.subject = subject
        self.data = data
    }

    /// The structured-mode CloudEvents 1.0 body (`content_type: application/cloudevents+json`),
    /// compact and byte-for-byte deterministic.
    public func encoded() -> [UInt8] {
        var envelope: [(String, JSONValue)] = [
            ("specversion", .string("1.0")), ("id", .string(id)), ("source", .string(source)),
            ("type", .string(type.rawValue)), ("time", .string(time.rfc3339)),
        ]
        if let subject { envelope.append(("subject", .string(subject))) }
        envelope += [("datacontenttype", .string("application/json")), ("data", .object(data))]
        return JSONValue.object(JSONObject(envelope)).encoded()
    }
}

extension OutgoingEvent {
    /// `referral.code.issued`: an account's first activation gave it a code. Subject: the account.
    public static func codeIssued(
        id: String, time: Instant, accountId: String, code: ReferralCode,
        shareURL: String, programId: String
    ) -> OutgoingEvent {
        OutgoingEvent(
            id: id, type: .codeIssued, time: time, subject: accountId,
            data: [
                "account_id": .string(accountId), "code": .string(code.canonical),
                "share_url": .string(shareURL), "program_id": .string(programId),
            ])
    }

    /// `referral.friend_offer.granted`: a lead arrived with a valid code. Subject: the referral.
    public static func friendOfferGranted(
        id: String, time: Instant, referralId: String, leadId: String,
        referralCode: ReferralCode, priorityInstall: Bool,
        friendRewardKind: RewardKind, friendRewardAmountMinor: Int64,
        currency: String, friendRewardByPlan: [String: Int64] = [:]
    ) -> OutgoingEvent {
        // Sent when the lead arrives, before any plan is known: `amount_minor` is the program's
        // amount and `by_plan` the map, so that a CRM can say "up to".
        var reward: [(String, JSONValue)] = [
            ("kind", .string(friendRewardKind.rawValue)), ("amount_minor", .integer(friendRewardAmountMinor)),
            ("currency", .string(currency)),
        ]
        if !friendRewardByPlan.isEmpty {
            reward.append(
                (
                    "by_plan",
                    .object(
                        JSONObject(friendRewardByPlan.sorted { $0.key < $1.key }.map { ($0.key, .integer($0.value)) }))
                ))
        }
        return OutgoingEvent(
            id: id, type: .friendOfferGranted, time: time, subject: referralId,
            data: [
                "referral_id": .string(referralId), "lead_id": .string(leadId),
                "referral_code": .string(referralCode.canonical), "priority_install": .bool(priorityInstall),
                "friend_reward": .object(JSONObject(reward)),
            ])
    }

    /// `referral.reward.issued`: the referral qualified. `rewardId` is billing's idempotency key.
    public static func rewardIssued(
        id: String, time: Instant, rewardId: String, referralId: String,
        accountId: String, beneficiary: Beneficiary, kind: RewardKind,
        amountMinor: Int64, currency: String, programId: String
    ) -> OutgoingEvent {
        OutgoingEvent(
            id: id, type: .rewardIssued, time: time, subject: referralId,
            data: [
                "reward_id": .string(rewardId), "referral_id": .string(referralId), "account_id": .string(accountId),
                "beneficiary": .string(beneficiary.rawValue), "kind": .string(kind.rawValue),
                "amount_minor": .integer(amountMinor), "currency": .string(currency), "program_id": .string(programId),
            ])
    }

    /// `referral.reward.reversed`: clawback of an issued reward.
    public static func rewardReversed(
        id: String, time: Instant, rewardId: String, referralId: String,
        accountId: String, amountMinor: Int64, currency: String,
        reason: String
    ) -> OutgoingEvent {
        OutgoingEvent(
            id: id, type: .rewardReversed, time: time, subject: referralId,
            data: [
                "reward_id": .string(rewardId), "referral_id": .string(referralId), "account_id": .string(accountId),
                "amount_minor": .integer(amountMinor), "currency": .string(currency), "reason": .string(reason),
            ])
    }

    /// `referral.ask.due`: an ask is due and allowed. Subject: the account asked.
    public static func askDue(
        id: String, time: Instant, accountId: String, moment: AskMoment,
        code: ReferralCode, shareURL: String, friendOfferText: String
    ) -> OutgoingEvent {
        OutgoingEvent(
            id: id, type: .askDue, time: time, subject: accountId,
            data: [
                "account_id": .string(accountId), "moment": .string(moment.rawValue), "code": .string(code.canonical),
                "share_url": .string(shareURL), "friend_offer_text": .string(friendOfferText),
            ])
    }

    /// `referral.lead.followup_due`: a referral has stalled. Nil when `stage` is not an in-flight
    /// stage (`lead`...`activated`), the only ones the schema lets this event name.
    public static func leadFollowupDue(
        id: String, time: Instant, referralId: String, leadId: String,
        stage: Stage, stalledSince: Instant
    ) -> OutgoingEvent? {
        guard stage.isInFlight else { return nil }
        return OutgoingEvent(
            id: id, type: .leadFollowupDue, time: time, subject: referralId,
            data: [
                "referral_id": .string(referralId), "lead_id": .string(leadId), "stage": .string(stage.rawValue),
                "stalled_since": .string(stalledSince.rfc3339),
            ])
    }

    /// `referral.status.changed`: every stage change; `from` is nil when the referral is created.
    /// Nil when `to` is an end stage without a non-empty reason, which the schema requires.
    public static func statusChanged(
        id: String, time: Instant, referralId: String, referrerAccountId: String,
        leadId: String, friendAccountId: String?, from: Stage?,
        to: Stage, reason: String?
    ) -> OutgoingEvent? {
        if to.isEnd, reason?.isEmpty ?? true { return nil }
        return OutgoingEvent(
            id: id, type: .statusChanged, time: time, subject: referralId,
            data: [
                "referral_id": .string(referralId), "referrer_account_id": .string(referrerAccountId),
                "lead_id": .string(leadId), "friend_account_id": friendAccountId.map { .string($0) } ?? .null,
                "from": from.map { .string($0.rawValue) } ?? .null, "to": .string(to.rawValue),
                "reason": reason.map { .string($0) } ?? .null,
            ])
    }
}

extension Stage {
    /// A stage a referral can stall in, the only ones `referral.lead.followup_due` may name.
    public var isInFlight: Bool { self == .lead || self == .ordered || self == .installed || self == .activated }
}
