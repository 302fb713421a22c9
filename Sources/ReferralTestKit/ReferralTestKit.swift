import Foundation

// What the tests, the benchmark and the fault suite share that needs no service: the seeded
// generator and the fast programs file, one copy each, so a changed program shape reaches all.
// The worlds on the real services are built by ReferralTestWorld; this target stays free of
// the broker and database modules, so the pure core's tests link none of them.

/// SplitMix64: a tiny seeded generator, so a generated run (a workload, a fault plan, a
/// property test) replays exactly from its printed seed.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(state: UInt64) { self.state = state }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A programs file whose durations are seconds instead of days, so holds and retries pass
/// during a run. One `consumer` program; the parameters are what the runs vary.
public enum FastPrograms {
    public static func yaml(
        hold: String = "2s", clawback: String = "referrer",
        milestone: String = "service_activated"
    ) -> String {
        """
        programs:
          - id: fast
            segment: consumer
            currency: USD
            share_url: "https://example.net/r/{code}"
            friend_offer_text: "Use my link for priority installation and a $25 credit."
            referrer_reward: { kind: bill_credit, amount_minor: 5000 }
            friend_reward: { kind: bill_credit, amount_minor: 2500, priority_install: true }
            qualify: { milestone: \(milestone), hold: \(hold) }
            attribution_window: 90d
            clawback_window: 60d
            clawback: \(clawback)
            limits: { max_rewards_per_referrer_per_year: 10, max_leads_per_code_per_day: 5 }
            fraud: { reject_same_household: true, reject_same_contact: true }
            asks:
              moments: [post_install, post_activation, speed_test, support_win, bill_savings, periodic]
              delay_after_install: 1d
              min_gap: 30d
              max_per_year: 4
              periodic_every: 90d
            followup: { stalled_after: 7d }
        """
    }
}
