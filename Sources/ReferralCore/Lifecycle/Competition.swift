/// The incremental state: what each referral contributes to the three rules in which referrals
/// compete (leads per code per day, one referrer per friend, the referrer's yearly cap), and the
/// ranks a decision reads from it.
///
/// A referral's *standing* is derived from its own facts only (its lead, its order, its friend's
/// account), so an event recomputes the standings of the referrals it touches and nothing else.
/// A decision then needs, per referral it decides, three bounded answers: how many leads of its
/// code came before it that day (counted up to the limit), which lead claims each of its friend
/// keys, and how many of its referrer's referrals reached their milestone before it that year
/// (counted up to the cap). The store answers them with index range scans; `StandingTable`
/// answers them in memory, for the oracle and for the incremental engine of the tests. Either
/// way the cost of an event does not grow with the referrer's history.

/// What one referral contributes to the competition rules.
public struct ReferralStanding: Hashable, Sendable {
    public var referralId: String
    public var leadId: String
    public var referrerAccountId: String
    /// The code the referral was bound with.
    public var code: String
    /// The lead's time and code (of its earliest version, as the rules read it).
    public var leadAt: Instant
    public var leadCode: String?
    public var friendAccountId: String?
    /// `a:<friend account>` and `h:<household>` keys, sorted: whoever claims a key first (by lead
    /// time, then lead id) owns the friend.
    public var claimKeys: [String]
    /// `c:<contact hash>` of the lead and the friend, sorted; with the `h:` keys, what a referrer's
    /// own new household or contact is compared with (same-household and same-contact rules).
    public var contactKeys: [String]
    /// The milestone time when it fell inside the attribution window: the referral's cap slot.
    public var milestoneAt: Instant?

    public init(
        referralId: String, leadId: String, referrerAccountId: String, code: String, leadAt: Instant,
        leadCode: String?, friendAccountId: String?, claimKeys: [String], contactKeys: [String],
        milestoneAt: Instant?
    ) {
        self.referralId = referralId
        self.leadId = leadId
        self.referrerAccountId = referrerAccountId
        self.code = code
        self.leadAt = leadAt
        self.leadCode = leadCode
        self.friendAccountId = friendAccountId
        self.claimKeys = claimKeys
        self.contactKeys = contactKeys
        self.milestoneAt = milestoneAt
    }

    /// The (code, UTC day) ranking the referral is a member of: only when the lead's own code is
    /// the one it was bound with (the rules rank a lead among the leads carrying its code).
    public var codeDay: CodeDay? { leadCode == code ? CodeDay(code: code, day: leadAt.utcDay) : nil }
    /// The (referrer, UTC year) cap ranking the referral holds a slot in.
    public var capYear: CapYear? { milestoneAt.map { CapYear(referrer: referrerAccountId, year: $0.utcYear) } }

    public struct CodeDay: Hashable, Sendable {
        public var code: String
        public var day: Int64
        /// The day's first instant and the next day's, for range scans.
        public var bounds: (from: Instant, to: Instant) {
            (Instant(utcDay: day), Instant(utcDay: day + 1))
        }
    }

    public struct CapYear: Hashable, Sendable {
        public var referrer: String
        public var year: Int64
        public var bounds: (from: Instant, to: Instant) { (Instant.yearStart(year), Instant.yearStart(year + 1)) }
    }
}

/// A lead that claims a friend key.
public struct Claim: Hashable, Sendable, Comparable {
    public var at: Instant
    public var leadId: String
    public init(at: Instant, leadId: String) {
        self.at = at
        self.leadId = leadId
    }
    public static func < (a: Claim, b: Claim) -> Bool { (a.at, a.leadId) < (b.at, b.leadId) }
}

/// The competition ranks of the referrals a decision judges. Counts stop at the limit that
/// judges them: only "is it past the limit?" is ever asked.
public struct Competition: Sendable {
    /// Per lead id: leads with its code on its UTC day before it (by time, then id).
    public var codeDayEarlier: [String: Int] = [:]
    /// Per friend key: the lead that claims it.
    public var claimWinners: [String: Claim] = [:]
    /// Per lead id: its referrer's referrals whose milestone came before its own in the same UTC
    /// year (by milestone time, then lead id).
    public var capEarlier: [String: Int] = [:]

    public init(
        codeDayEarlier: [String: Int] = [:], claimWinners: [String: Claim] = [:], capEarlier: [String: Int] = [:]
    ) {
        self.codeDayEarlier = codeDayEarlier
        self.claimWinners = claimWinners
        self.capEarlier = capEarlier
    }
}

/// A set of referrals whose outcome a change of standings may have moved: the entries at a
/// ranking's limit, or the first claimants of a key. The store answers them with index scans;
/// `StandingTable.resolve` in memory.
public enum BoundaryQuery: Hashable, Sendable {
    /// Members at these 0-based ranks (by lead time, then lead id).
    case codeDay(CodeDayRank)
    /// The first `count` claimants of the key.
    case claim(key: String, count: Int)
    /// Members at these 0-based ranks (by milestone time, then lead id).
    case cap(CapRank)
    /// The referrer's referrals whose lead came at or after its cancellation.
    case referrerCancelled(referrer: String, since: Instant)
    /// The referrer's referrals with any of these `h:` / `c:` keys.
    case referrerPersonal(referrer: String, keys: [String])

    public struct CodeDayRank: Hashable, Sendable {
        public var codeDay: ReferralStanding.CodeDay
        public var ranks: Range<Int>
    }
    public struct CapRank: Hashable, Sendable {
        public var capYear: ReferralStanding.CapYear
        public var ranks: Range<Int>
    }
}

extension Lifecycle {
    /// The standing of each referral, from its own facts (`facts` must hold every fact of its
    /// lead and of its friend's account). Referrals whose lead has no fact yet are left out.
    public static func standings(facts: [Fact], referrals: [ReferralBinding]) -> [ReferralStanding] {
        let index = FactIndex(facts)
        return referrals.compactMap { index.standing(of: $0) }
    }

    /// Which referrals a batch must re-decide besides those it touched: for every ranking a
    /// changed standing left or joined, the entries that may have crossed its limit (k changes
    /// can move at most the k entries on either side of it), and for every friend key, its first
    /// claimants (the old winner loses to an earlier claimant). `limits` are every limit any
    /// program version in use has, since members of one ranking may be bound to different ones.
    public static func boundaries(
        changes: [(old: ReferralStanding?, new: ReferralStanding)],
        leadLimits: Set<Int>, capLimits: Set<Int>
    ) -> [BoundaryQuery] {
        var codeDays: [ReferralStanding.CodeDay: Int] = [:]
        var caps: [ReferralStanding.CapYear: Int] = [:]
        var keys: [String: Int] = [:]
        for (old, new) in changes where old != new {
            let leadMoved = old.map { ($0.leadAt, $0.leadCode) != (new.leadAt, new.leadCode) } ?? true
            if leadMoved {
                for cd in Set([old?.codeDay, new.codeDay].compactMap { $0 }) { codeDays[cd, default: 0] += 1 }
            }
            if leadMoved || old?.milestoneAt != new.milestoneAt {
                for cy in Set([old?.capYear, new.capYear].compactMap { $0 }) { caps[cy, default: 0] += 1 }
            }
            let oldKeys = Set(old?.claimKeys ?? [])
            let changedKeys = leadMoved ? oldKeys.union(new.claimKeys) : oldKeys.symmetricDifference(new.claimKeys)
            for key in changedKeys { keys[key, default: 0] += 1 }
        }
        var out: [BoundaryQuery] = []
        for (cd, k) in codeDays.sorted(by: { ($0.key.code, $0.key.day) < ($1.key.code, $1.key.day) }) {
            for limit in leadLimits.sorted() {
                out.append(.codeDay(.init(codeDay: cd, ranks: max(0, limit - k)..<(limit + k))))
            }
        }
        for (cy, k) in caps.sorted(by: { ($0.key.referrer, $0.key.year) < ($1.key.referrer, $1.key.year) }) {
            for limit in capLimits.sorted() {
                out.append(.cap(.init(capYear: cy, ranks: max(0, limit - k)..<(limit + k))))
            }
        }
        for (key, k) in keys.sorted(by: { $0.key < $1.key }) { out.append(.claim(key: key, count: k + 1)) }
        return out
    }

    /// Boundaries that facts about a referrer's own account open: its cancellation rejects the
    /// leads from then on; a household or contact of its own rejects friends that share it.
    public static func referrerBoundaries(_ facts: [Fact]) -> [BoundaryQuery] {
        var seen: Set<BoundaryQuery> = []
        var out: [BoundaryQuery] = []
        for fact in facts {
            let query: BoundaryQuery
            switch fact {
            case .serviceCancelled(let account, let at):
                query = .referrerCancelled(referrer: account, since: at)
            case .serviceActivated(let account, _, let household, let contact, _):
                let keys = [household.map { "h:\($0)" }, contact.map { "c:\($0)" }].compactMap { $0 }
                if keys.isEmpty { continue }
                query = .referrerPersonal(referrer: account, keys: keys)
            default:
                continue
            }
            if seen.insert(query).inserted { out.append(query) }
        }
        return out
    }
}

extension Lifecycle {
    /// Lock keys for facts about referrers' own accounts (see `referrerBoundaries`): a
    /// cancellation locks the referrer (`r:`), as a new lead with its code does; a household or
    /// contact locks the pair (`p:<account>/<key>`), as a friend gaining that key under that
    /// referrer does (`personalLockKeys`). Two batches that could each miss the other's fact
    /// then queue; unrelated ones do not.
    public static func referrerLockKeys(_ facts: [Fact]) -> [String] {
        var out: Set<String> = []
        for fact in facts {
            switch fact {
            case .serviceCancelled(let a, _):
                out.insert("r:\(a)")
            case .serviceActivated(let a, _, let hh, let contact, _):
                if let hh { out.insert("p:\(a)/h:\(hh)") }
                if let contact { out.insert("p:\(a)/c:\(contact)") }
            default:
                break
            }
        }
        return out.sorted()
    }

    /// The `p:` keys of a standing's new household and contact keys under its referrer.
    public static func personalLockKeys(_ change: (old: ReferralStanding?, new: ReferralStanding)) -> [String] {
        let old = Set((change.old?.claimKeys ?? []) + (change.old?.contactKeys ?? []))
        return (change.new.claimKeys + change.new.contactKeys)
            .filter { !$0.hasPrefix("a:") && !old.contains($0) }
            .map { "p:\(change.new.referrerAccountId)/\($0)" }
    }
}

extension Fact {
    /// The lead a fact is about (a lead's versions and its order).
    public var leadId: String? {
        switch self {
        case .leadCreated(let l, _, _, _, _, _), .orderPlaced(let l, _, _), .operatorRejected(let l, _): return l
        default: return nil
        }
    }

    /// The reward billing answered about.
    public var rewardId: String? {
        switch self {
        case .creditApplied(let r, _, _, _, _), .creditRejected(let r, _, _), .operatorReversed(let r, _): return r
        default: return nil
        }
    }

    /// The account whose referrals (as friend) this fact can change. Billing's answers name the
    /// beneficiary, often a referrer with thousands of referrals: they touch their reward's
    /// referral only, never every referral of the account.
    public var friendAccountTouched: String? {
        switch self {
        case .creditApplied, .creditRejected: return nil
        default: return accountId
        }
    }
}

extension Lifecycle {
    /// The referrals these facts touch directly: by lead, by friend account, by reward.
    public static func touched(by facts: [Fact], in referrals: [ReferralBinding], standings: StandingTable) -> Set<
        String
    > {
        let leads = Set(facts.compactMap(\.leadId))
        let accounts = Set(facts.compactMap(\.friendAccountTouched))
        let rewards = Set(facts.compactMap(\.rewardId))
        var out: Set<String> = []
        for b in referrals {
            if leads.contains(b.leadId)
                || standings[b.referralId]?.friendAccountId.map(accounts.contains) == true
                || Beneficiary.allCases.contains(where: {
                    rewards.contains(rewardId(referralId: b.referralId, beneficiary: $0))
                })
            {
                out.insert(b.referralId)
            }
        }
        return out
    }
}
