import Logging
import ReferralCore
import ReferralStore

/// `referrald prune`: applies the REFERRALD_RETENTION_* settings once. Meant for a daily
/// systemd timer, not the worker loop: a prune that runs long or fails then delays nothing.
public enum Prune {
    public struct Summary: Sendable, Equatable, CustomStringConvertible {
        public var count: RetentionStore.PruneCount
        public var description: String {
            "inbox bodies emptied \(count.bodies), inbox keys deleted \(count.keys), referrals deleted \(count.referrals), rewards deleted \(count.rewards)"
        }
    }

    /// `now` comes from the caller's clock, so that tests never depend on today's date.
    public static func run(settings: Settings, now: Instant, logger: Logger) async throws -> Summary {
        func before(_ days: Int) -> Instant? { days > 0 ? now - Span(microseconds: Int64(days) * 86_400_000_000) : nil }
        if settings.databaseURL.isEmpty {
            throw SettingsError(
                key: "REFERRALD_DATABASE_URL", source: "environment, credentials or --config",
                message: "is required by prune")
        }
        // A worker session: its statement, lock and idle timeouts bound what a prune can hold.
        let db = try await settings.connectWorkerDatabase(name: "referrald prune", logger: logger)
        defer { Task { await db.close() } }
        // The SQL is this release's: on an older schema a column it names may not exist yet.
        let version = try await db.schemaVersion()
        guard version >= Schema.latestVersion else { throw SchemaError(found: version, needed: Schema.latestVersion) }
        var count = RetentionStore.PruneCount()
        if let ended = before(settings.retentionReferralDays) {
            count = try await db.pruneReferrals(
                endedBefore: ended, ledgerBefore: before(settings.retentionLedgerDays))
        }
        let inbox = try await db.pruneInbox(
            bodiesBefore: before(settings.retentionInboxBodyDays),
            keysBefore: before(settings.retentionInboxKeyDays))
        count.bodies = inbox.bodies
        count.keys = inbox.keys
        let summary = Summary(count: count)
        logger.info(
            "pruned",
            metadata: [
                "prune.bodies": "\(count.bodies)", "prune.keys": "\(count.keys)",
                "prune.referrals": "\(count.referrals)", "prune.rewards": "\(count.rewards)",
            ])
        return summary
    }
}
