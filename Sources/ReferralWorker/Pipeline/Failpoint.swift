import Foundation

/// Crash points for the fault tests: with `REFERRALD_FAILPOINT=after-commit` (or
/// `after-publish`) the process exits abruptly at that point, as a `kill -9` would stop it
/// there, so the tests can show that a restart neither loses nor doubles an effect.
/// Unset in production, where `hit` is a comparison and nothing else.
struct Failpoint: Sendable {
    enum Point: String, Sendable {
        /// After the batch's transaction committed, before its outbox is published or it is acked.
        case afterCommit = "after-commit"
        /// After the broker confirmed outbox rows, before they are marked published.
        case afterPublish = "after-publish"
    }

    let armed: Point?

    static func fromEnvironment() -> Failpoint {
        Failpoint(armed: ProcessInfo.processInfo.environment["REFERRALD_FAILPOINT"].flatMap(Point.init(rawValue:)))
    }

    func hit(_ point: Point) {
        guard armed == point else { return }
        // _exit skips atexit handlers and buffered output, like a crash would.
        _exit(86)
    }
}
