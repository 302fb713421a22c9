import Foundation

/// An isolated world on shared services: a database of its own and broker objects whose names
/// all carry `name`, so that runs in parallel on one broker never see each other's messages.
public enum IsolatedWorld {
    /// The configuration of a daemon in the world named `name`, as environment variables.
    public static func environment(
        name: String, amqpURL: String, databaseURL: String,
        programsFile: String
    ) -> [String: String] {
        [
            "REFERRALD_AMQP_URL": amqpURL,
            "REFERRALD_DATABASE_URL": databaseURL,
            "REFERRALD_PROGRAMS_FILE": programsFile,
            "REFERRALD_INBOX_QUEUE": "\(name).inbox",
            "REFERRALD_DLX": "\(name).dlx",
            "REFERRALD_DLQ": "\(name).dlq",
            "REFERRALD_PARKED_QUEUE": "\(name).parked",
            "REFERRALD_EVENTS_EXCHANGE": "\(name).referral.events",
            "REFERRALD_UPSTREAM_EXCHANGES": "\(name).provisioning,\(name).billing,\(name).crm",
            "REFERRALD_HTTP_PORT": "0",
        ]
    }

    /// `url` with another database name (its path), query parameters kept.
    public static func databaseURL(_ url: String, database: String) -> String {
        var parts = URLComponents(string: url)!
        parts.path = "/" + database
        return parts.string!
    }
}
