/// Standings in memory, indexed as the store indexes them: the oracle's competition (over the
/// whole neighbourhood it is given) and the incremental engine's state.
public struct StandingTable: Sendable {
    public private(set) var standings: [String: ReferralStanding] = [:]
    private var codeDays: [ReferralStanding.CodeDay: [Claim]] = [:]
    private var caps: [ReferralStanding.CapYear: [Claim]] = [:]
    private var claimants: [String: [Claim]] = [:]
    private var byLead: [String: String] = [:]

    public init(_ standings: [ReferralStanding] = []) {
        for s in standings { upsert(s) }
    }

    public subscript(referralId: String) -> ReferralStanding? { standings[referralId] }

    /// Replaces a referral's standing; returns the old one.
    @discardableResult
    public mutating func upsert(_ s: ReferralStanding) -> ReferralStanding? {
        let old = standings[s.referralId]
        if old == s { return old }
        if let old { remove(old) }
        standings[s.referralId] = s
        byLead[s.leadId] = s.referralId
        let lead = Claim(at: s.leadAt, leadId: s.leadId)
        if let cd = s.codeDay { Self.insert(lead, into: &codeDays[cd, default: []]) }
        if let cy = s.capYear, let m = s.milestoneAt {
            Self.insert(Claim(at: m, leadId: s.leadId), into: &caps[cy, default: []])
        }
        for key in s.claimKeys { Self.insert(lead, into: &claimants[key, default: []]) }
        return old
    }

    private mutating func remove(_ s: ReferralStanding) {
        let lead = Claim(at: s.leadAt, leadId: s.leadId)
        if let cd = s.codeDay { codeDays[cd]?.removeAll { $0 == lead } }
        if let cy = s.capYear, let m = s.milestoneAt { caps[cy]?.removeAll { $0 == Claim(at: m, leadId: s.leadId) } }
        for key in s.claimKeys { claimants[key]?.removeAll { $0 == lead } }
    }

    private static func insert(_ c: Claim, into list: inout [Claim]) {
        list.insert(c, at: rank(of: c, in: list))
    }

    /// Entries of the sorted list strictly before `c`.
    private static func rank(of c: Claim, in list: [Claim]) -> Int {
        var lo = 0
        var hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if list[mid] < c { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// The ranks the rules read for these referrals.
    public func competition(for referrals: [ReferralBinding]) -> Competition {
        var out = Competition()
        for b in referrals {
            guard let s = standings[b.referralId] else { continue }
            let lead = Claim(at: s.leadAt, leadId: s.leadId)
            if let cd = s.codeDay {
                out.codeDayEarlier[s.leadId] = min(
                    Self.rank(of: lead, in: codeDays[cd] ?? []), b.program.limits.maxLeadsPerCodePerDay)
            }
            if let cy = s.capYear, let m = s.milestoneAt {
                out.capEarlier[s.leadId] = min(
                    Self.rank(of: Claim(at: m, leadId: s.leadId), in: caps[cy] ?? []),
                    b.program.limits.maxRewardsPerReferrerPerYear)
            }
            for key in s.claimKeys { out.claimWinners[key] = claimants[key]?.first }
        }
        return out
    }

    /// The referral ids a boundary query names.
    public func resolve(_ q: BoundaryQuery) -> [String] {
        func ids(_ claims: ArraySlice<Claim>) -> [String] { claims.compactMap { byLead[$0.leadId] } }
        switch q {
        case .codeDay(let r):
            let list = codeDays[r.codeDay] ?? []
            return ids(list[min(r.ranks.lowerBound, list.count)..<min(r.ranks.upperBound, list.count)])
        case .cap(let r):
            let list = caps[r.capYear] ?? []
            return ids(list[min(r.ranks.lowerBound, list.count)..<min(r.ranks.upperBound, list.count)])
        case .claim(let key, let count):
            return ids((claimants[key] ?? []).prefix(count))
        case .referrerCancelled(let referrer, let since):
            return standings.values.filter { $0.referrerAccountId == referrer && $0.leadAt >= since }.map(\.referralId)
        case .referrerPersonal(let referrer, let keys):
            return standings.values.filter {
                $0.referrerAccountId == referrer && !Set($0.claimKeys + $0.contactKeys).isDisjoint(with: keys)
            }.map(\.referralId)
        }
    }
}

extension FactIndex {
    /// What the referral contributes to the competition rules, from its own facts; nil until its
    /// lead has a fact.
    func standing(of b: ReferralBinding) -> ReferralStanding? {
        guard let lead = leads[b.leadId] else { return nil }
        let friend = friendAccount(of: b.leadId)
        var contacts = friend.map { self.contacts(of: $0) } ?? []
        if let c = leadPersonal(b.leadId).contact { contacts.insert(c) }
        let p = b.program
        let milestone = self.milestone(p.qualify.milestone, of: friend).flatMap {
            $0 <= lead.at + p.attributionWindow ? $0 : nil
        }
        return ReferralStanding(
            referralId: b.referralId, leadId: b.leadId, referrerAccountId: b.referrerAccountId,
            code: b.code, leadAt: lead.at, leadCode: lead.code, friendAccountId: friend,
            claimKeys: Array(Set(friendKeys(b.leadId))).sorted(),
            contactKeys: contacts.sorted().map { "c:\($0)" }, milestoneAt: milestone)
    }
}
