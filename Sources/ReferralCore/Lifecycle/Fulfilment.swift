extension DecisionRun {
    /// A reward's status from billing's answers (`LifecycleRules.md`, "Fulfilment"): applied,
    /// mismatched (reported, left `issued`), or rejected and retried with back-off measured from
    /// the rejection's own time. Emits the mismatches, failures and retries the answers call for.
    mutating func fulfilmentStatus(_ g: RewardGrant) -> RewardStatus {
        guard let sent = issued[g.rewardId] else { return .pending }
        if reversed.contains(g.rewardId) { return .reversed }
        var status = RewardStatus.issued
        let applications = facts.applied[g.rewardId] ?? []
        for a in applications.sorted(by: {
            ($0.accountId, $0.amountMinor, $0.currency) < ($1.accountId, $1.amountMinor, $1.currency)
        }) {
            if a.accountId == sent.accountId && a.amountMinor == sent.amountMinor && a.currency == sent.currency {
                status = .applied
            } else {
                emit(
                    .rewardMismatch(
                        rewardId: g.rewardId, accountId: a.accountId, amountMinor: a.amountMinor, currency: a.currency))
            }
        }
        if status == .applied {
            emit(.rewardApplied(rewardId: g.rewardId))
            return .applied
        }
        let rejections = (facts.rejections[g.rewardId] ?? []).sorted { ($0.at, $0.reason) < ($1.at, $1.reason) }
        guard !rejections.isEmpty else { return .issued }
        let maxRetries = input.policy.maxRetries
        for (i, r) in rejections.enumerated() {
            emit(.rewardFailed(rewardId: g.rewardId, failure: i + 1, reason: r.reason, final: i + 1 > maxRetries))
        }
        // One retry per rejection up to `maxRetries`, each once its back-off has passed; the
        // first not yet due sets the timer.
        var done = retries[g.rewardId] ?? 0
        while done < min(rejections.count, maxRetries) {
            let due = rejections[done].at + input.policy.backoff(afterFailure: done + 1)
            guard due <= now else {
                noteWake(due)
                break
            }
            done += 1
            emit(.rewardRetried(sent, attempt: done))
            retries[g.rewardId] = done
        }
        return rejections.count > done ? .failed : .issued
    }
}
