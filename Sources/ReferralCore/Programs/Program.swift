/// A program: the reward rule set for one customer segment, as written in the programs YAML
/// file (contract README, "Programs"). A referral keeps the version it was bound to (the one in
/// force at its lead's time, `ProgramVersions.inForce`), so a `Program` value is immutable data:
/// the store versions it by `canonicalForm`.
public struct Program: Hashable, Sendable, Codable {
    public var id: String
    public var segment: Segment
    /// ISO 4217, upper case (`USD`).
    public var currency: String
    /// URL template; `{code}` is replaced by the referrer's canonical code.
    public var shareURL: String
    public var friendOfferText: String
    public var referrerReward: Reward
    public var friendReward: FriendReward
    public var qualify: Qualify
    /// Lead time to milestone time: a milestone later than this does not count.
    public var attributionWindow: Span
    /// Qualification time to cancellation time: a cancellation within it claws the reward back.
    public var clawbackWindow: Span
    public var clawback: ClawbackMode
    public var limits: Limits
    public var fraud: Fraud
    public var asks: Asks
    public var followup: Followup
    /// The monthly budget (contract: asks held past `pause_asks_at`, rewards always paid);
    /// see `ProgramBudget`.
    public var budget: Budget?
    /// When this version starts to govern leads (`effective_from`): a lead is bound to the version
    /// of its program in force at the lead's own time (`ProgramVersions.inForce`), whichever
    /// instance takes it. Nil: the instant the store first registers it, kept in the database so
    /// that every instance agrees on it and a restart does not move it.
    public var effectiveFrom: Instant?

    public init(
        id: String, segment: Segment, currency: String, shareURL: String, friendOfferText: String,
        referrerReward: Reward, friendReward: FriendReward, qualify: Qualify,
        attributionWindow: Span, clawbackWindow: Span, clawback: ClawbackMode,
        limits: Limits, fraud: Fraud, asks: Asks, followup: Followup, budget: Budget? = nil,
        effectiveFrom: Instant? = nil
    ) {
        self.id = id
        self.segment = segment
        self.currency = currency
        self.shareURL = shareURL
        self.friendOfferText = friendOfferText
        self.referrerReward = referrerReward
        self.friendReward = friendReward
        self.qualify = qualify
        self.attributionWindow = attributionWindow
        self.clawbackWindow = clawbackWindow
        self.clawback = clawback
        self.limits = limits
        self.fraud = fraud
        self.asks = asks
        self.followup = followup
        self.budget = budget
        self.effectiveFrom = effectiveFrom
    }

    public struct Reward: Hashable, Sendable, Codable {
        public var kind: RewardKind
        public var amountMinor: Int64
        /// The friend's `plan_id` (of their first activation) → amount; any other plan, or none,
        /// gets `amountMinor`.
        public var byPlan: [String: Int64]
        public init(kind: RewardKind, amountMinor: Int64, byPlan: [String: Int64] = [:]) {
            self.kind = kind
            self.amountMinor = amountMinor
            self.byPlan = byPlan
        }
        enum CodingKeys: String, CodingKey {
            case kind
            case amountMinor = "amount_minor"
            case byPlan = "by_plan"
        }
        // Versions stored before `by_plan` existed have no such key.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            kind = try c.decode(RewardKind.self, forKey: .kind)
            amountMinor = try c.decode(Int64.self, forKey: .amountMinor)
            byPlan = try c.decodeIfPresent([String: Int64].self, forKey: .byPlan) ?? [:]
        }

        /// The amount for a friend whose first activations (at one instant) named these plans:
        /// the highest, so that the result does not depend on their order and favours the
        /// customer; no plan, or a plan not in the map, gets `amountMinor`.
        public func amount(plans: Set<String?>) -> Int64 {
            plans.isEmpty ? amountMinor : plans.map { $0.flatMap { byPlan[$0] } ?? amountMinor }.max()!
        }
    }

    public struct FriendReward: Hashable, Sendable, Codable {
        public var kind: RewardKind
        public var amountMinor: Int64
        public var priorityInstall: Bool
        public var byPlan: [String: Int64]
        public init(kind: RewardKind, amountMinor: Int64, priorityInstall: Bool, byPlan: [String: Int64] = [:]) {
            self.kind = kind
            self.amountMinor = amountMinor
            self.priorityInstall = priorityInstall
            self.byPlan = byPlan
        }
        enum CodingKeys: String, CodingKey {
            case kind
            case amountMinor = "amount_minor"
            case priorityInstall = "priority_install"
            case byPlan = "by_plan"
        }
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            kind = try c.decode(RewardKind.self, forKey: .kind)
            amountMinor = try c.decode(Int64.self, forKey: .amountMinor)
            priorityInstall = try c.decode(Bool.self, forKey: .priorityInstall)
            byPlan = try c.decodeIfPresent([String: Int64].self, forKey: .byPlan) ?? [:]
        }

        public var asReward: Reward { Reward(kind: kind, amountMinor: amountMinor, byPlan: byPlan) }
    }

    public struct Budget: Hashable, Sendable, Codable {
        public var monthlyMinor: Int64
        public var pauseAsksAt: Double
        public init(monthlyMinor: Int64, pauseAsksAt: Double) {
            self.monthlyMinor = monthlyMinor
            self.pauseAsksAt = pauseAsksAt
        }
        enum CodingKeys: String, CodingKey {
            case monthlyMinor = "monthly_minor"
            case pauseAsksAt = "pause_asks_at"
        }
    }

    public struct Qualify: Hashable, Sendable, Codable {
        public var milestone: Milestone
        /// The friend must still be a customer this long after the milestone.
        public var hold: Span
        public init(milestone: Milestone, hold: Span) {
            self.milestone = milestone
            self.hold = hold
        }
    }

    public struct Limits: Hashable, Sendable, Codable {
        public var maxRewardsPerReferrerPerYear: Int
        public var maxLeadsPerCodePerDay: Int
        public init(maxRewardsPerReferrerPerYear: Int, maxLeadsPerCodePerDay: Int) {
            self.maxRewardsPerReferrerPerYear = maxRewardsPerReferrerPerYear
            self.maxLeadsPerCodePerDay = maxLeadsPerCodePerDay
        }
        enum CodingKeys: String, CodingKey {
            case maxRewardsPerReferrerPerYear = "max_rewards_per_referrer_per_year"
            case maxLeadsPerCodePerDay = "max_leads_per_code_per_day"
        }
    }

    public struct Fraud: Hashable, Sendable, Codable {
        public var rejectSameHousehold: Bool
        public var rejectSameContact: Bool
        public init(rejectSameHousehold: Bool, rejectSameContact: Bool) {
            self.rejectSameHousehold = rejectSameHousehold
            self.rejectSameContact = rejectSameContact
        }
        enum CodingKeys: String, CodingKey {
            case rejectSameHousehold = "reject_same_household"
            case rejectSameContact = "reject_same_contact"
        }
    }

    public struct Asks: Hashable, Sendable, Codable {
        public var moments: [AskMoment]
        public var delayAfterInstall: Span
        public var minGap: Span
        public var maxPerYear: Int
        public var periodicEvery: Span
        public init(moments: [AskMoment], delayAfterInstall: Span, minGap: Span, maxPerYear: Int, periodicEvery: Span) {
            self.moments = moments
            self.delayAfterInstall = delayAfterInstall
            self.minGap = minGap
            self.maxPerYear = maxPerYear
            self.periodicEvery = periodicEvery
        }
        enum CodingKeys: String, CodingKey {
            case moments
            case delayAfterInstall = "delay_after_install"
            case minGap = "min_gap"
            case maxPerYear = "max_per_year"
            case periodicEvery = "periodic_every"
        }
    }

    public struct Followup: Hashable, Sendable, Codable {
        public var stalledAfter: Span
        public init(stalledAfter: Span) { self.stalledAfter = stalledAfter }
        enum CodingKeys: String, CodingKey { case stalledAfter = "stalled_after" }
    }

    enum CodingKeys: String, CodingKey {
        case id, segment, currency
        case shareURL = "share_url"
        case friendOfferText = "friend_offer_text"
        case referrerReward = "referrer_reward"
        case friendReward = "friend_reward"
        case qualify
        case attributionWindow = "attribution_window"
        case clawbackWindow = "clawback_window"
        case clawback
        case limits, fraud, asks, followup, budget
        case effectiveFrom = "effective_from"
    }

    /// The share URL for a referrer's canonical code.
    public func shareURL(code: String) -> String {
        shareURL.replacing("{code}", with: code)
    }

    /// One line per field in a fixed order, every value written in one canonical way (durations in
    /// their shortest unit, strings quoted and escaped). Two files that differ only in key order,
    /// quoting, comments or `30d` vs `720h` give the same text, so the store can tell "file changed
    /// → new program version" from "file re-read → same version" by comparing (or hashing) it.
    /// Hashing `Codable` output instead would tie versions to an encoder's key order.
    public var canonicalForm: String {
        // Not the JSON encoder's escapes: this text is the stored identity of every program
        // version, and writing a tab as `\t` instead of `\u{9}` would register each program
        // holding one as a new version on upgrade.
        func q(_ s: String) -> String {
            var out = "\""
            for u in s.unicodeScalars {
                switch u {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                default:
                    if u.value < 0x20 {
                        out += "\\u{\(String(u.value, radix: 16))}"
                    } else {
                        out.unicodeScalars.append(u)
                    }
                }
            }
            return out + "\""
        }
        func plans(_ map: [String: Int64]) -> String {
            "{" + map.sorted { $0.key < $1.key }.map { "\(q($0.key)):\($0.value)" }.joined(separator: ",") + "}"
        }
        // A key that did not exist before is written only when set, so that the programs of
        // existing files keep their canonical form (and their version) across the upgrade.
        var added: [String] = []
        if !referrerReward.byPlan.isEmpty { added.append("referrer_reward.by_plan=\(plans(referrerReward.byPlan))") }
        if !friendReward.byPlan.isEmpty { added.append("friend_reward.by_plan=\(plans(friendReward.byPlan))") }
        if let budget {
            added.append("budget.monthly_minor=\(budget.monthlyMinor)\nbudget.pause_asks_at=\(budget.pauseAsksAt)")
        }
        // The effective time is part of a version's identity: the same rules declared again from
        // another time are a version of their own (a return to earlier rules after a change).
        if let effectiveFrom { added.append("effective_from=\(effectiveFrom.rfc3339)") }
        let lines =
            [
                "id=\(q(id))",
                "segment=\(segment.rawValue)",
                "currency=\(q(currency))",
                "share_url=\(q(shareURL))",
                "friend_offer_text=\(q(friendOfferText))",
                "referrer_reward.kind=\(referrerReward.kind.rawValue)",
                "referrer_reward.amount_minor=\(referrerReward.amountMinor)",
                "friend_reward.kind=\(friendReward.kind.rawValue)",
                "friend_reward.amount_minor=\(friendReward.amountMinor)",
                "friend_reward.priority_install=\(friendReward.priorityInstall)",
                "qualify.milestone=\(qualify.milestone.rawValue)",
                "qualify.hold=\(qualify.hold)",
                "attribution_window=\(attributionWindow)",
                "clawback_window=\(clawbackWindow)",
                "clawback=\(clawback.rawValue)",
                "limits.max_rewards_per_referrer_per_year=\(limits.maxRewardsPerReferrerPerYear)",
                "limits.max_leads_per_code_per_day=\(limits.maxLeadsPerCodePerDay)",
                "fraud.reject_same_household=\(fraud.rejectSameHousehold)",
                "fraud.reject_same_contact=\(fraud.rejectSameContact)",
                "asks.moments=[\(asks.moments.map(\.rawValue).joined(separator: ","))]",
                "asks.delay_after_install=\(asks.delayAfterInstall)",
                "asks.min_gap=\(asks.minGap)",
                "asks.max_per_year=\(asks.maxPerYear)",
                "asks.periodic_every=\(asks.periodicEvery)",
                "followup.stalled_after=\(followup.stalledAfter)",
            ] + added
        return lines.joined(separator: "\n") + "\n"
    }
}

public enum Segment: String, Hashable, Sendable, Codable, CaseIterable {
    case consumer, business
}

public enum RewardKind: String, Hashable, Sendable, Codable, CaseIterable {
    case billCredit = "bill_credit"
    case cash
}

public enum Milestone: String, Hashable, Sendable, Codable, CaseIterable {
    /// The friend's service activation (`activated_at`).
    case serviceActivated = "service_activated"
    /// The friend's first invoice paid (`billing.invoice.paid` with `sequence` 1).
    case firstInvoicePaid = "first_invoice_paid"
}

/// Who loses their reward when the friend cancels within the clawback window.
public enum ClawbackMode: String, Hashable, Sendable, Codable, CaseIterable {
    case referrer, both, none
}

public enum AskMoment: String, Hashable, Sendable, Codable, CaseIterable {
    case postInstall = "post_install"
    case postActivation = "post_activation"
    case speedTest = "speed_test"
    case supportWin = "support_win"
    case billSavings = "bill_savings"
    case periodic
}
