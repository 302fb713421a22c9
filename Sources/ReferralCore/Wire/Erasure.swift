/// Right to erasure (`crm.customer.erased`): what is left of a stored body or a recorded effect
/// once its customer is erased. Pure: the store reads the rows and writes back what this returns.
///
/// Bodies are rewritten with our own parser and writer, never with PostgreSQL's `::jsonb`: a
/// number such as `1e1000000` in any member (valid JSON, and valid for us) made that cast fail
/// with 22003, the erasure rolled back on every delivery and ended dead-lettered, and the
/// customer's data stayed forever.
///
/// What stays is an allow-list, not a deny-list: the envelope's identity (for deduplication and
/// `export-events`) and, per type, the contract's members that are ids, times, amounts and
/// closed vocabularies. Everything else goes — `household_id`, `contact_hash`, members a
/// producer added beyond the contract (they may hold anything: a CRM score, a name), the
/// envelope's `subject` and extensions. Free text the contract requires (`reason`) is replaced by
/// `Erasure.redacted`, so that a replay of the body still validates.
public enum Erasure {
    /// What free text of an erased customer becomes.
    public static let redacted = "[erased]"

    /// The body kept for a body our parser cannot read at all (it was classified valid when it
    /// arrived, so only a corrupted row gets here): replaced wholesale rather than left in place
    /// or allowed to block the erasure.
    public static let unreadableBody: [UInt8] = Array(#"{"erased":true}"#.utf8)

    /// Envelope members kept: the event's identity (always: it is the inbox key) and, when
    /// `harmless`, its version, time and content type.
    static let identity: Set<String> = ["id", "source", "type"]
    static let envelope: Set<String> = ["specversion", "time", "datacontenttype"]

    /// Per consumed type, the data members kept as they are (none of them personal data or free
    /// text), and the free-text members replaced by `redacted`.
    static let kept: [ConsumedType: (keep: Set<String>, redact: Set<String>)] = [
        .leadCreated: (["lead_id", "referral_code", "segment", "channel"], []),
        .orderPlaced: (["lead_id", "account_id"], []),
        .installScheduled: (["account_id", "scheduled_for"], []),
        .installCompleted: (["account_id", "completed_at"], []),
        .serviceActivated: (["account_id", "activated_at", "segment", "plan_id"], []),
        .serviceCancelled: (["account_id", "cancelled_at"], ["reason"]),
        .speedtestCompleted: (["account_id", "measured_down_mbps", "plan_down_mbps"], []),
        .ticketResolved: (["account_id", "ticket_id", "csat"], []),
        .preferencesChanged: (["account_id", "referral_prompts"], []),
        .ticketOpened: (["account_id", "ticket_id"], []),
        .customerErased: (["account_id"], []),
        .invoiceOverdue: (["account_id", "invoice_id", "days_overdue"], []),
        .invoicePaid: (["account_id", "invoice_id", "amount_minor", "currency", "sequence", "credits_minor"], []),
        .creditApplied: (["reward_id", "account_id", "amount_minor", "currency"], []),
        .creditRejected: (["reward_id"], ["reason"]),
    ]

    /// The body without personal data: see the type's documentation for what stays. Scrubbing
    /// a scrubbed body returns it unchanged, byte for byte, so the store can skip rows that
    /// need nothing and a retried scrub writes nothing new.
    public static func scrub(body: [UInt8]) -> [UInt8] {
        // The classifier's limits bound the depth; string and value counts are bounded by the
        // body, which was at most the size limit when it arrived.
        guard
            case .object(let event)? = try? JSONValue.parse(
                body,
                limits: JSONLimits(
                    maxDepth: 64,
                    maxStringBytes: body.count,
                    maxValues: body.count))
        else { return unreadableBody }
        let type = event["type"]?.stringValue.flatMap { t in
            ConsumedType.allCases.first { $0.rawValue.utf8.elementsEqual(t.utf8) }
        }
        var members: [(String, JSONValue)] = event.members
            .filter { identity.contains($0.key) || (envelope.contains($0.key) && harmless($0.value)) }
            .map { ($0.key, $0.value) }
        if let data = event["data"]?.objectValue {
            let rule = type.flatMap { kept[$0] } ?? ([], [])
            var out: [(String, JSONValue)] = []
            for m in data.members {
                if rule.redact.contains(m.key) {
                    out.append((m.key, m.value == .null ? .null : .string(redacted)))
                } else if rule.keep.contains(m.key) {
                    out.append((m.key, harmless(m.value) ? m.value : .null))
                }
            }
            members.append(("data", .object(JSONObject(out))))
        }
        let scrubbed = JSONValue.object(JSONObject(members)).encoded()
        return scrubbed == body ? body : scrubbed
    }

    /// What `referrald dlq erase` does with one dead letter of the DLQ (`deadLetter`).
    public enum DeadLetterAction: Sendable, Equatable {
        /// Not about the erased customer: put back unchanged.
        case unrelated
        /// About the customer and readable: this scrubbed copy replaces it, so that an operator
        /// can still replay the event (its ids, times and amounts are intact).
        case scrub([UInt8])
        /// About the customer, and already what `scrub` leaves (a second run): put back unchanged.
        case alreadyScrubbed
        /// About the customer and not a JSON object: nothing in it can be told apart from
        /// personal data, and no replay could apply it, so it goes.
        case drop
    }

    /// Decides a dead letter's fate for the erasure of `account`. A JSON object concerns the
    /// account when its data names the account, one of its leads or one of its rewards (a lead
    /// or a credit rejection does not carry the account), or when the account id appears
    /// anywhere in it as a whole id (a producer's extra member, a `subject`); a body that is not
    /// a JSON object concerns it when any of those ids appears in its bytes as a whole id.
    public static func deadLetter(
        body: [UInt8], account: String, leads: Set<String> = [],
        rewards: Set<String> = []
    ) -> DeadLetterAction {
        let parsed = try? JSONValue.parse(
            body,
            limits: JSONLimits(
                maxDepth: 64, maxStringBytes: body.count,
                maxValues: body.count))
        guard case .object(let event)? = parsed else {
            let ids = [account] + leads.sorted() + rewards.sorted()
            return ids.contains { mentions(body, id: Array($0.utf8)) } ? .drop : .unrelated
        }
        let data = event["data"]?.objectValue
        let named =
            data?["account_id"]?.stringValue == account
            || data?["lead_id"]?.stringValue.map(leads.contains) == true
            || data?["reward_id"]?.stringValue.map(rewards.contains) == true
        guard named || mentions(body, id: Array(account.utf8)) else { return .unrelated }
        let scrubbed = scrub(body: body)
        return scrubbed == body ? .alreadyScrubbed : .scrub(scrubbed)
    }

    /// Whether `id` occurs in `body` with no id character on either side: erasing `acct-1`
    /// must not touch a message about `acct-10`.
    static func mentions(_ body: [UInt8], id: [UInt8]) -> Bool {
        guard !id.isEmpty, body.count >= id.count else { return false }
        func idByte(_ b: UInt8) -> Bool {
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x5F
        }
        var i = 0
        while i + id.count <= body.count {
            if body[i] == id[0], body[i..<i + id.count].elementsEqual(id),
                i == 0 || !idByte(body[i - 1]), i + id.count == body.count || !idByte(body[i + id.count])
            {
                return true
            }
            i += 1
        }
        return false
    }

    /// A kept member's value as it may stay: a scalar, and a string only of printable ASCII (the
    /// contract's ids, times and codes are). `referral_code` is free-form (a malformed code is
    /// unattributed, not invalid), so whatever a producer put there — an object, a NUL, a
    /// sentence — becomes null.
    static func harmless(_ v: JSONValue) -> Bool {
        switch v {
        case .null, .bool, .number: return true
        case .string(let s): return s.utf8.allSatisfy { $0 >= 0x20 && $0 <= 0x7E }
        case .array, .object: return false
        }
    }
}

extension Effect {
    /// The effect without free text: billing's rejection reason is the one free text an effect
    /// records. Decisions read a recorded `rewardFailed` by its key only, so the rules' outcome is
    /// the same with or without it.
    public var withoutFreeText: Effect {
        if case .rewardFailed(let id, let n, let reason, let final) = self, reason != Erasure.redacted {
            return .rewardFailed(rewardId: id, failure: n, reason: Erasure.redacted, final: final)
        }
        return self
    }
}
