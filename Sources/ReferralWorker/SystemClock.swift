import Foundation
import ReferralCore

/// The only place the daemon reads the wall clock; the core gets its time from here.
public struct SystemClock: ReferralCore.Clock {
    public init() {}
    public func now() -> Instant {
        Instant(microseconds: Int64((Date().timeIntervalSince1970 * 1_000_000).rounded()))
    }
}
