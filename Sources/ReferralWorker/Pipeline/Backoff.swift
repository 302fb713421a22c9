/// Capped exponential back-off with full jitter, for reconnecting to the broker and the database.
///
/// Jitter keeps several instances that lost the same server at the same moment from
/// reconnecting in lock-step and knocking it over again as it comes back.
public struct Backoff: Sendable {
    public var base: Duration
    public var cap: Duration
    public private(set) var attempt = 0

    public init(base: Duration = .milliseconds(200), cap: Duration = .seconds(10)) {
        self.base = base
        self.cap = cap
    }

    /// The next delay: uniform in [0, min(cap, base * 2^attempt)].
    public mutating func next<R: RandomNumberGenerator>(using rng: inout R) -> Duration {
        let exponent = min(attempt, 20)
        attempt += 1
        let ceiling = min(cap, base * (1 << exponent))
        let ms = ceiling.components.seconds * 1000 + ceiling.components.attoseconds / 1_000_000_000_000_000
        return .milliseconds(Int64.random(in: 0...max(ms, 1), using: &rng))
    }

    public mutating func reset() { attempt = 0 }
}
