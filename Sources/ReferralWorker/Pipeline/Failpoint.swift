import Foundation

/// Crash points for the fault tests: with `REFERRALD_FAILPOINT=after-commit` (or
/// `after-publish`) the process exits abruptly at that point, as a `kill -9` would stop it
/// there, so the tests can show that a restart neither loses nor doubles an effect. With
/// `poison-event:<id>`, every transaction that applies the event with that CloudEvents id fails
/// after its writes, as an event the database cannot store would: the fault suite's poison
/// check shows that the batch around it is still applied and the event alone dead-lettered.
/// Unset in production, where `hit` and `poison` are a comparison and nothing else.
struct Failpoint: Sendable {
    enum Point: String, Sendable {
        /// After the batch's transaction committed, before its outbox is published or it is acked.
        case afterCommit = "after-commit"
        /// After the broker confirmed outbox rows, before they are marked published.
        case afterPublish = "after-publish"
    }

    let armed: Point?
    let poisonEventId: String?

    static func fromEnvironment() -> Failpoint {
        let text = ProcessInfo.processInfo.environment["REFERRALD_FAILPOINT"]
        let poison = text.flatMap { $0.hasPrefix("poison-event:") ? String($0.dropFirst("poison-event:".count)) : nil }
        return Failpoint(armed: text.flatMap(Point.init(rawValue:)), poisonEventId: poison)
    }

    struct Poisoned: Error, CustomStringConvertible {
        let eventId: String
        var description: String { "failpoint poison-event: event \(eventId) cannot be applied" }
    }

    /// Throws when the poisoned event is among these.
    func poison(_ eventIds: some Sequence<String>) throws {
        guard let poisonEventId, eventIds.contains(poisonEventId) else { return }
        throw Poisoned(eventId: poisonEventId)
    }

    func hit(_ point: Point) {
        guard armed == point else { return }
        // _exit skips atexit handlers and buffered output, like a crash would.
        _exit(86)
    }
}
