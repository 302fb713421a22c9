extension DecisionRun {
    /// The way forward, in order; the end stages are not on it.
    static let forward: [Stage] = [.lead, .ordered, .installed, .activated, .qualified, .rewarded]

    /// Publishes the changes from the last published stage to `stage`: one
    /// `referral.status.changed` per stage passed (`LifecycleRules.md`, "Stage graph").
    mutating func publishStatus(
        _ b: ReferralBinding, friend: String?, stage: Stage, reason: String?, newlyIssued: Bool
    ) {
        let last = lastStatus[b.referralId]
        guard last?.stage != stage else { return }
        var from = last?.stage
        var sequence = (last?.count ?? 0) + 1
        // A forward jump (install and activation in one batch, or arriving out of order) still
        // tells consumers every stage the facts show it passed, in order: a stage is only
        // reported when its fact exists, so "installed" never appears without an install.
        if let f = from, let a = Self.forward.firstIndex(of: f), let z = Self.forward.firstIndex(of: stage), z > a + 1 {
            let info = friend.flatMap { facts.accounts[$0] }
            for s in Self.forward[(a + 1)..<z] where s != .qualified {
                let passed =
                    switch s {
                    case .ordered: friend != nil
                    case .installed: info?.installedAt != nil
                    case .activated: info?.activatedAt != nil
                    default: false
                    }
                if passed {
                    emitStatus(b, friend, from: from, to: s, reason: nil, sequence: sequence)
                    from = s
                    sequence += 1
                }
            }
        }
        // Rewards going out now: `qualified` is published before `rewarded`.
        if stage == .rewarded, from != .qualified, newlyIssued {
            emitStatus(b, friend, from: from, to: .qualified, reason: nil, sequence: sequence)
            from = .qualified
            sequence += 1
        }
        emitStatus(
            b, friend, from: from, to: stage, reason: stage.isEnd ? (reason ?? "unspecified") : nil,
            sequence: sequence)
    }

    private mutating func emitStatus(
        _ b: ReferralBinding, _ friend: String?, from: Stage?, to: Stage, reason: String?, sequence: Int
    ) {
        emit(
            .statusChanged(
                StatusChange(
                    referralId: b.referralId, referrerAccountId: b.referrerAccountId, leadId: b.leadId,
                    friendAccountId: friend, from: from, to: to, reason: reason, sequence: sequence)))
        lastStatus[b.referralId] = (to, reason, sequence)
    }
}
