// Contract enums that the Programs and Lifecycle code (branch wt-life: Programs/Program.swift,
// Lifecycle/Effect.swift) also declare, with the same cases, raw values and conformances. The
// branches are written in parallel and each must build alone; when they are merged, delete this
// file and keep those declarations: every use here needs only `rawValue` and `allCases`.

/// Customer segment; selects the program.
public enum Segment: String, Hashable, Sendable, Codable, CaseIterable {
    case consumer, business
}

public enum RewardKind: String, Hashable, Sendable, Codable, CaseIterable {
    case billCredit = "bill_credit"
    case cash
}

/// The moment that made an ask due.
public enum AskMoment: String, Hashable, Sendable, Codable, CaseIterable {
    case postInstall = "post_install"
    case postActivation = "post_activation"
    case speedTest = "speed_test"
    case supportWin = "support_win"
    case billSavings = "bill_savings"
    case periodic
}

/// Referral stages: `lead` -> `ordered` -> `installed` -> `activated` -> `qualified` ->
/// `rewarded`, and the ends `rejected`, `expired`, `lost`, `reversed`.
public enum Stage: String, Hashable, Sendable, Codable, CaseIterable {
    case lead, ordered, installed, activated, qualified, rewarded
    case rejected, expired, lost, reversed

    public var isEnd: Bool { self == .rejected || self == .expired || self == .lost || self == .reversed }
}

public enum Beneficiary: String, Hashable, Sendable, Codable, CaseIterable {
    case referrer, friend
}
