import AMQP
import Configuration
import Foundation
import ReferralCore
import ReferralStore
import SystemPackage

/// Everything an operator can set, with its default and why that default.
///
/// Sources, highest priority first: the process environment, then the file given with
/// `--config` (the same `KEY=VALUE` lines as a systemd `EnvironmentFile=`). Keys are the
/// environment names (`REFERRALD_AMQP_URL`); the README's configuration reference is this table.
public struct Settings: Sendable {
    public var amqpURL: String
    /// Where the next connection starts among the nodes of `amqpURL`.
    public let amqpNodes = AMQPNodeRotation()
    /// PEM files for `amqps://`; nil when not set. See `amqpTLS`.
    public var amqpCAFile: String?
    public var amqpCertFile: String?
    public var amqpKeyFile: String?
    public var databaseURL: String
    public var programsFile: String
    public var httpPort: Int
    public var httpHost: String
    public var inboxQueue: String
    public var deadLetterExchange: String
    public var deadLetterQueue: String
    public var parkedQueue: String
    public var eventsExchange: String
    public var upstreamExchanges: [String]
    public var batchSize: Int
    public var batchMaxBytes: Int
    public var batchWaitMilliseconds: Int
    public var prefetch: Int
    public var workers: Int
    public var maxBodyBytes: Int
    public var memoryBudgetBytes: Int
    /// Statements a worker connection prepares and reuses (0: none).
    public var statementCache: Int
    public var statementTimeout: Span
    public var lockTimeout: Span
    public var idleInTransactionTimeout: Span
    public var heartbeatSeconds: Int
    public var deliveryLimit: Int
    public var logLevel: String
    public var logFormat: String
    /// Billing rejections of a reward that are retried (re-issued with the same reward_id).
    public var rewardRetries: Int
    public var rewardRetryBackoff: Span
    public var rewardRetryBackoffMax: Span
    /// `--allow-older`, not an environment key: register a programs file older than the newest
    /// version the database knows instead of refusing it (`ProgramVersions.registration`). A
    /// flag for one start, so that a forgotten setting cannot let every later rollback through.
    public var allowOlderPrograms = false

    /// The lifecycle's retry rules, from the reward retry keys.
    public var lifecyclePolicy: LifecyclePolicy {
        LifecyclePolicy(
            maxRetries: rewardRetries, retryBackoff: rewardRetryBackoff, maxRetryBackoff: rewardRetryBackoffMax)
    }
    public var drainTimeoutSeconds: Int
    public var stopTimeoutSeconds: Int
    public var healthStallSeconds: Int
    /// Retention in days (0: kept for ever), applied by `referrald prune`.
    public var retentionInboxBodyDays: Int
    public var retentionInboxKeyDays: Int
    public var retentionReferralDays: Int
    public var retentionLedgerDays: Int

    /// One documented key. `defaultValue` nil means the key is required.
    public struct Key: Sendable {
        public let name: String
        public let defaultValue: String?
        public let help: String
        public let secret: Bool
    }

    public static let keys: [Key] = [
        Key(
            name: "REFERRALD_AMQP_URL", defaultValue: nil,
            help:
                "amqp:// or amqps:// URL of the broker: user, password, host, port, vhost. Several nodes of one cluster go comma-separated in place of the host (amqp://u:p@node1,node2:5673,node3/vhost); a connection starts at the node after the last one used and tries each in turn.",
            secret: true),
        Key(
            name: "REFERRALD_AMQP_CA_FILE", defaultValue: "",
            help:
                "PEM file of the CA(s) that sign the broker's certificate; required with amqps:// (for a public CA, the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt). The certificate and the URL's host name are always verified.",
            secret: false),
        Key(
            name: "REFERRALD_AMQP_CERT_FILE", defaultValue: "",
            help: "PEM client certificate for amqps:// when the broker asks for one (with REFERRALD_AMQP_KEY_FILE).",
            secret: false),
        Key(
            name: "REFERRALD_AMQP_KEY_FILE", defaultValue: "",
            help:
                "PEM private key (unencrypted) of REFERRALD_AMQP_CERT_FILE; keep it readable by the daemon's user only.",
            secret: false),
        Key(
            name: "REFERRALD_DATABASE_URL", defaultValue: nil,
            help: "postgres:// URL of the database (sslmode etc. as query parameters).", secret: true),
        Key(
            name: "REFERRALD_PROGRAMS_FILE", defaultValue: nil,
            help: "YAML file of referral programs (see deploy/programs.example.yaml).", secret: false),
        Key(
            name: "REFERRALD_HTTP_PORT", defaultValue: "9464",
            help: "Port of /healthz, /readyz and /metrics; 0 turns the endpoint off.", secret: false),
        Key(
            name: "REFERRALD_HTTP_HOST", defaultValue: "127.0.0.1",
            help:
                "Numeric address the HTTP endpoint binds; loopback keeps /metrics off the network unless a scraper needs it.",
            secret: false),
        Key(
            name: "REFERRALD_INBOX_QUEUE", defaultValue: "referrald.inbox",
            help: "Quorum queue the worker consumes.", secret: false),
        Key(
            name: "REFERRALD_DLX", defaultValue: "referrald.dlx",
            help: "Fanout exchange for messages the worker cannot process.", secret: false),
        Key(
            name: "REFERRALD_DLQ", defaultValue: "referrald.dlq",
            help: "Quorum queue bound to the dead-letter exchange.", secret: false),
        Key(
            name: "REFERRALD_PARKED_QUEUE", defaultValue: "referrald.parked",
            help:
                "Quorum queue where a dead letter the broker refused (DLQ deleted, unbound or full) waits, published through the default exchange; retried into the dead-letter exchange with back-off.",
            secret: false),
        Key(
            name: "REFERRALD_EVENTS_EXCHANGE", defaultValue: "referral.events",
            help: "Topic exchange the worker publishes on.", secret: false),
        Key(
            name: "REFERRALD_UPSTREAM_EXCHANGES", defaultValue: "provisioning.events,billing.events,crm.events",
            help: "Upstream topic exchanges, in the order provisioning, billing, crm.", secret: false),
        Key(
            name: "REFERRALD_BATCH_SIZE", defaultValue: "512",
            help: "Deliveries per database transaction; larger batches trade latency for throughput.", secret: false),
        Key(
            name: "REFERRALD_BATCH_MAX_BYTES", defaultValue: "8388608",
            help:
                "Body bytes per batch (8 MiB): a delivery that would pass it ends the batch and starts the next (a larger body goes alone). A batch takes a few times its bodies in memory while it is applied; everyday events (about 1 KiB) never reach it.",
            secret: false),
        Key(
            name: "REFERRALD_BATCH_WAIT_MS", defaultValue: "20",
            help: "How long a partial batch waits for more deliveries before it is processed.", secret: false),
        Key(
            name: "REFERRALD_PREFETCH", defaultValue: "512",
            help:
                "Unacknowledged deliveries the broker may push to the process's consumer: what it holds, up to REFERRALD_MAX_BODY_BYTES each (RabbitMQ has no byte-based prefetch). This × REFERRALD_MAX_BODY_BYTES must fit REFERRALD_MEMORY_BUDGET_BYTES. The lanes' batches together hold at most this many; with small bodies, (REFERRALD_WORKERS + 1) × REFERRALD_BATCH_SIZE keeps every lane's batch full and one read ahead.",
            secret: false),
        Key(
            name: "REFERRALD_WORKERS", defaultValue: "2",
            help:
                "Lanes in this process: each applies batches in its own transaction on its own database connection and publishes on its own channel, taking from one shared consumer batches that share no key with another lane's. Two keep two cores busy (one lane's decisions run while the other's statements do); 1 applies batches one after the other.",
            secret: false),
        Key(
            name: "REFERRALD_MAX_BODY_BYTES", defaultValue: "262144",
            help: "Bodies longer than this are dead-lettered as too_large before parsing.", secret: false),
        Key(
            name: "REFERRALD_MEMORY_BUDGET_BYTES", defaultValue: "268435456",
            help:
                "Bytes of message bodies the process may hold at once (256 MiB): REFERRALD_PREFETCH × REFERRALD_MAX_BODY_BYTES must not exceed it, or the daemon refuses to start. The defaults take 128 MiB of it; with the batch copies (about 3 × REFERRALD_BATCH_MAX_BYTES per lane) and the daemon's own 50-100 MiB, it fits the unit's MemoryMax=1G with room to spare.",
            secret: false),
        Key(
            name: "REFERRALD_DB_STATEMENT_CACHE", defaultValue: "256",
            help:
                "Statements each worker connection prepares once and reuses, so the server plans them once (planning was 14 % of its time). 0 sends every statement unnamed: needed behind PgBouncer in transaction mode before 1.21, which hands a session's prepared statements to other clients.",
            secret: false),
        Key(
            name: "REFERRALD_DB_STATEMENT_TIMEOUT", defaultValue: "60s",
            help:
                "statement_timeout of the worker's sessions. A batch's slowest statement takes tens of milliseconds (a hot referrer's batch before the incremental state, seconds): a minute never fails a legitimate batch, and ends one stuck behind something else. A statement also gives up waiting for an answer 10 s after this (a network that swallows it silently).",
            secret: false),
        Key(
            name: "REFERRALD_DB_LOCK_TIMEOUT", defaultValue: "30s",
            help:
                "lock_timeout of the worker's sessions: a batch waiting this long for another's locks (another instance's batch takes under a second; a vanished connection's until the server ends it) is retried with back-off instead of waiting on.",
            secret: false),
        Key(
            name: "REFERRALD_DB_IDLE_IN_TRANSACTION_TIMEOUT", defaultValue: "60s",
            help:
                "idle_in_transaction_session_timeout of the worker's sessions: the server ends a transaction whose client fell silent (a partition, a frozen process) and releases its locks. The worker never pauses inside a transaction for more than the decisions' few milliseconds.",
            secret: false),
        Key(
            name: "REFERRALD_HEARTBEAT_SECONDS", defaultValue: "30",
            help: "AMQP heartbeat; a silent broker is detected after about twice this.", secret: false),
        Key(
            name: "REFERRALD_DELIVERY_LIMIT", defaultValue: "5",
            help:
                "Deliveries of a message whose processing fails before it is dead-lettered as processing_failed (1-19, below the inbox's broker-side x-delivery-limit of 20).",
            secret: false),
        Key(
            name: "REFERRALD_REWARD_RETRIES", defaultValue: "3",
            help: "How often a reward billing rejected is re-issued (same reward_id) before it stays failed.",
            secret: false),
        Key(
            name: "REFERRALD_REWARD_RETRY_BACKOFF", defaultValue: "1h",
            help: "Wait after billing's first rejection of a reward, doubled after each further one.", secret: false),
        Key(
            name: "REFERRALD_REWARD_RETRY_BACKOFF_MAX", defaultValue: "1d",
            help: "Ceiling of the doubled wait between reward retries.", secret: false),
        Key(
            name: "REFERRALD_LOG_LEVEL", defaultValue: "info",
            help: "trace, debug, info, notice, warning, error or critical.", secret: false),
        Key(
            name: "REFERRALD_LOG_FORMAT", defaultValue: "logfmt",
            help: "logfmt (one key=value line per event) or json.", secret: false),
        Key(
            name: "REFERRALD_DRAIN_TIMEOUT_SECONDS", defaultValue: "20",
            help:
                "After SIGTERM, how long the batch in hand may take to commit, publish and ack before the worker is cancelled (its unacked deliveries are then redelivered). Must be below REFERRALD_STOP_TIMEOUT_SECONDS.",
            secret: false),
        Key(
            name: "REFERRALD_STOP_TIMEOUT_SECONDS", defaultValue: "30",
            help:
                "The unit's TimeoutStopSec, after which systemd sends SIGKILL; only used to check the drain timeout against it.",
            secret: false),
        Key(
            name: "REFERRALD_HEALTH_STALL_SECONDS", defaultValue: "30",
            help:
                "/healthz answers 503 when a pipeline's consume loop has not completed an iteration (with its database and broker up) for this long: the unit's WatchdogSec, so that a container's liveness probe restarts what systemd would.",
            secret: false),
        Key(
            name: "REFERRALD_RETENTION_INBOX_BODY_DAYS", defaultValue: "0",
            help:
                "referrald prune empties inbox bodies received more than this many days ago (0: kept for ever). export-events and simulate then see only the bodies retained; the (source, id) key stays for deduplication.",
            secret: false),
        Key(
            name: "REFERRALD_RETENTION_INBOX_KEY_DAYS", defaultValue: "0",
            help:
                "referrald prune deletes inbox rows (the deduplication keys) received more than this many days ago (0: kept for ever). A redelivery or a DLQ replay of an event older than this is applied a second time. At least REFERRALD_RETENTION_INBOX_BODY_DAYS, which must be set with it.",
            secret: false),
        Key(
            name: "REFERRALD_RETENTION_REFERRAL_DAYS", defaultValue: "0",
            help:
                "referrald prune deletes referrals that ended (rejected, expired, lost, reversed) more than this many days ago, with their leads' facts, effects, follow-ups, timers and links, once every referral ranked against them may go too (0: kept for ever). reconcile and explain no longer know them.",
            secret: false),
        Key(
            name: "REFERRALD_RETENTION_LEDGER_DAYS", defaultValue: "0",
            help:
                "The reward ledger's retention: a pruned referral's rewards go only when none changed within this many days (0: kept for ever, and so is every referral that has a reward). Keep it at what billing and tax rules require (often 7-10 years).",
            secret: false),
    ]

    /// Reads the settings from the environment and an optional `KEY=VALUE` file.
    /// Errors name the key and where its value came from; values of secret keys are never shown.
    public static func load(
        configFile: String?, environment: [String: String], requireAll: Bool = true
    ) async throws -> Settings {
        var providers: [any ConfigProvider] = [EnvironmentVariablesProvider(environmentVariables: environment)]
        // systemd credentials (`LoadCredential=REFERRALD_DATABASE_URL:/etc/...`): one file per key
        // in $CREDENTIALS_DIRECTORY, read after the environment and before the file, so secrets
        // never need to be in the environment or the config file. Marked secret throughout.
        if let directory = environment["CREDENTIALS_DIRECTORY"], !directory.isEmpty {
            var credentials: [String: String] = [:]
            for key in keys {
                let path = directory + "/" + key.name
                guard FileManager.default.fileExists(atPath: path) else { continue }
                guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                    throw SettingsError(key: key.name, source: "credential \(path)", message: "cannot be read")
                }
                credentials[key.name] = text.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            providers.append(EnvironmentVariablesProvider(environmentVariables: credentials, secretsSpecifier: .all))
        }
        if let configFile {
            do {
                providers.append(try await EnvironmentVariablesProvider(environmentFilePath: FilePath(configFile)))
            } catch {
                throw SettingsError(
                    key: nil, source: configFile, message: "cannot read the configuration file (\(error))")
            }
        }
        let reader = ConfigReader(providers: providers)
        let source = ["environment", environment["CREDENTIALS_DIRECTORY"].map { "credentials in \($0)" }, configFile]
            .compactMap { $0 }.joined(separator: " or ")
        func value(_ name: String) throws -> String {
            let key = keys.first { $0.name == name }!
            let configKey = ConfigKey(name.lowercased().split(separator: "_").map(String.init))
            if let v = reader.string(forKey: configKey, isSecret: key.secret), !v.isEmpty { return v }
            if let d = key.defaultValue { return d }
            if !requireAll { return "" }
            throw SettingsError(key: name, source: source, message: "is required: \(key.help)")
        }
        func int(_ name: String, _ range: ClosedRange<Int>) throws -> Int {
            let text = try value(name)
            guard let n = Int(text), range.contains(n) else {
                throw SettingsError(
                    key: name, source: source,
                    message: "\"\(text)\" is not a whole number in \(range.lowerBound)...\(range.upperBound)")
            }
            return n
        }
        let upstream = try value("REFERRALD_UPSTREAM_EXCHANGES").split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        guard upstream.count == 3, upstream.allSatisfy({ !$0.isEmpty }) else {
            throw SettingsError(
                key: "REFERRALD_UPSTREAM_EXCHANGES", source: source,
                message: "needs three comma-separated names: provisioning, billing, crm")
        }
        func span(_ name: String) throws -> Span {
            let text = try value(name)
            guard let span = Span(text), span.microseconds > 0 else {
                throw SettingsError(
                    key: name, source: source, message: "\"\(text)\" is not a duration with a unit (45s, 10m, 36h, 30d)"
                )
            }
            return span
        }
        func path(_ name: String) throws -> String? {
            let text = try value(name)
            return text.isEmpty ? nil : text
        }
        let settings = Settings(
            amqpURL: try value("REFERRALD_AMQP_URL"),
            amqpCAFile: try path("REFERRALD_AMQP_CA_FILE"),
            amqpCertFile: try path("REFERRALD_AMQP_CERT_FILE"),
            amqpKeyFile: try path("REFERRALD_AMQP_KEY_FILE"),
            databaseURL: try value("REFERRALD_DATABASE_URL"),
            programsFile: try value("REFERRALD_PROGRAMS_FILE"),
            httpPort: try int("REFERRALD_HTTP_PORT", 0...65535),
            httpHost: try value("REFERRALD_HTTP_HOST"),
            inboxQueue: try value("REFERRALD_INBOX_QUEUE"),
            deadLetterExchange: try value("REFERRALD_DLX"),
            deadLetterQueue: try value("REFERRALD_DLQ"),
            parkedQueue: try value("REFERRALD_PARKED_QUEUE"),
            eventsExchange: try value("REFERRALD_EVENTS_EXCHANGE"),
            upstreamExchanges: upstream,
            batchSize: try int("REFERRALD_BATCH_SIZE", 1...4096),
            batchMaxBytes: try int("REFERRALD_BATCH_MAX_BYTES", 1024...1_073_741_824),
            batchWaitMilliseconds: try int("REFERRALD_BATCH_WAIT_MS", 0...60_000),
            prefetch: try int("REFERRALD_PREFETCH", 1...65535),
            workers: try int("REFERRALD_WORKERS", 1...16),
            maxBodyBytes: try int("REFERRALD_MAX_BODY_BYTES", 1024...16_777_216),
            memoryBudgetBytes: try int("REFERRALD_MEMORY_BUDGET_BYTES", 1_048_576...1 << 40),
            statementCache: try int("REFERRALD_DB_STATEMENT_CACHE", 0...4096),
            statementTimeout: try span("REFERRALD_DB_STATEMENT_TIMEOUT"),
            lockTimeout: try span("REFERRALD_DB_LOCK_TIMEOUT"),
            idleInTransactionTimeout: try span("REFERRALD_DB_IDLE_IN_TRANSACTION_TIMEOUT"),
            heartbeatSeconds: try int("REFERRALD_HEARTBEAT_SECONDS", 0...600),
            deliveryLimit: try int("REFERRALD_DELIVERY_LIMIT", 1...19),
            logLevel: try value("REFERRALD_LOG_LEVEL"),
            logFormat: try value("REFERRALD_LOG_FORMAT"),
            rewardRetries: try int("REFERRALD_REWARD_RETRIES", 0...100),
            rewardRetryBackoff: try span("REFERRALD_REWARD_RETRY_BACKOFF"),
            rewardRetryBackoffMax: try span("REFERRALD_REWARD_RETRY_BACKOFF_MAX"),
            drainTimeoutSeconds: try int("REFERRALD_DRAIN_TIMEOUT_SECONDS", 1...3600),
            stopTimeoutSeconds: try int("REFERRALD_STOP_TIMEOUT_SECONDS", 1...3600),
            healthStallSeconds: try int("REFERRALD_HEALTH_STALL_SECONDS", 5...3600),
            retentionInboxBodyDays: try int("REFERRALD_RETENTION_INBOX_BODY_DAYS", 0...36_500),
            retentionInboxKeyDays: try int("REFERRALD_RETENTION_INBOX_KEY_DAYS", 0...36_500),
            retentionReferralDays: try int("REFERRALD_RETENTION_REFERRAL_DAYS", 0...36_500),
            retentionLedgerDays: try int("REFERRALD_RETENTION_LEDGER_DAYS", 0...36_500))
        try settings.validate(source: source)
        return settings
    }

    /// Checks fields against each other: each is plausible alone, some pairs are not.
    func validate(source: String) throws {
        // Every delivered body is held until its batch is acked, and the broker sends up to
        // `prefetch` of them to the process's one consumer whatever their size (AMQP has no
        // byte-based prefetch): this product is what the daemon may hold. Past MemoryMax that is
        // an OOM kill, then a restart that receives the same bodies again: a crash loop. A
        // prefetch below the batch size is allowed: batches then hold at most what is unacked,
        // and are bounded by REFERRALD_BATCH_MAX_BYTES anyway.
        let held = prefetch * maxBodyBytes
        if held > memoryBudgetBytes {
            throw SettingsError(
                key: "REFERRALD_MEMORY_BUDGET_BYTES", source: source,
                message:
                    "\(memoryBudgetBytes) is below REFERRALD_PREFETCH × REFERRALD_MAX_BODY_BYTES (\(prefetch) × \(maxBodyBytes) = \(held)): lower the prefetch or raise the budget (and MemoryMax with it)"
            )
        }
        // PostgreSQL refuses these past about 24 days (whole milliseconds in an int4), which
        // would surface as a reconnect loop rather than a refusal to start.
        for (key, span) in [
            ("REFERRALD_DB_STATEMENT_TIMEOUT", statementTimeout), ("REFERRALD_DB_LOCK_TIMEOUT", lockTimeout),
            ("REFERRALD_DB_IDLE_IN_TRANSACTION_TIMEOUT", idleInTransactionTimeout),
        ]
        where span.microseconds > 86_400_000_000 {
            throw SettingsError(key: key, source: source, message: "must be at most 1d")
        }
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(logLevel) {
            throw SettingsError(key: "REFERRALD_LOG_LEVEL", source: source, message: "unknown level \"\(logLevel)\"")
        }
        // A drain that may outlast TimeoutStopSec ends in SIGKILL: no STOPPING log line, no
        // clean close, and systemd records the stop as failed. One second of margin covers the
        // close after the drain.
        if drainTimeoutSeconds >= stopTimeoutSeconds {
            throw SettingsError(
                key: "REFERRALD_DRAIN_TIMEOUT_SECONDS", source: source,
                message:
                    "\(drainTimeoutSeconds) must be below REFERRALD_STOP_TIMEOUT_SECONDS (\(stopTimeoutSeconds), the unit's TimeoutStopSec)"
            )
        }
        // URLs are checked here so that every command, `check` included, names the key of a
        // bad one. Their errors never echo the URL: it carries the password.
        if !amqpURL.isEmpty {
            do { _ = try AMQPURL.parseList(amqpURL) } catch {
                throw SettingsError(key: "REFERRALD_AMQP_URL", source: source, message: "is not a valid URL: \(error)")
            }
        }
        if !databaseURL.isEmpty {
            do { _ = try DatabaseURL(parsing: databaseURL) } catch {
                throw SettingsError(
                    key: "REFERRALD_DATABASE_URL", source: source, message: "is not a valid URL: \(error)")
            }
        }
        // Deleting a key deletes its body: keys kept for less time than bodies, or deleted while
        // bodies are kept for ever, would be a body retention the operator did not set.
        if retentionInboxKeyDays > 0 && (retentionInboxBodyDays == 0 || retentionInboxKeyDays < retentionInboxBodyDays)
        {
            throw SettingsError(
                key: "REFERRALD_RETENTION_INBOX_KEY_DAYS", source: source,
                message:
                    "\(retentionInboxKeyDays) needs REFERRALD_RETENTION_INBOX_BODY_DAYS set, and at most this many days (it is \(retentionInboxBodyDays))"
            )
        }
        if !["logfmt", "json"].contains(logFormat) {
            throw SettingsError(key: "REFERRALD_LOG_FORMAT", source: source, message: "must be logfmt or json")
        }
        try validateAMQPTLS(source: source)
    }

    /// TLS files are checked here, not at the first connect: the worker retries connect failures
    /// for ever, so a typo in a path would otherwise be a quiet reconnect loop instead of a refusal
    /// to start.
    private func validateAMQPTLS(source: String) throws {
        let files = [
            ("REFERRALD_AMQP_CA_FILE", amqpCAFile), ("REFERRALD_AMQP_CERT_FILE", amqpCertFile),
            ("REFERRALD_AMQP_KEY_FILE", amqpKeyFile),
        ]
        let usesTLS = amqpURL.lowercased().hasPrefix("amqps://")
        if !usesTLS {
            // Set files with an amqp:// URL mean someone expects encryption that would not happen.
            if let (key, _) = files.first(where: { $0.1 != nil }), !amqpURL.isEmpty {
                throw SettingsError(
                    key: key, source: source,
                    message: "is set but REFERRALD_AMQP_URL is amqp://: use amqps:// to encrypt")
            }
            return
        }
        // librabbitmq 0.11 never loads OpenSSL's default trust store: without a CA file every
        // handshake would fail with a bare "certificate verify failed".
        guard amqpCAFile != nil else {
            throw SettingsError(
                key: "REFERRALD_AMQP_CA_FILE", source: source,
                message:
                    "is required with amqps:// (the system bundle /etc/ssl/certs/ca-certificates.crt for a public CA)")
        }
        if (amqpCertFile == nil) != (amqpKeyFile == nil) {
            throw SettingsError(
                key: amqpCertFile == nil ? "REFERRALD_AMQP_CERT_FILE" : "REFERRALD_AMQP_KEY_FILE",
                source: source,
                message: "is required with the other of REFERRALD_AMQP_CERT_FILE / REFERRALD_AMQP_KEY_FILE")
        }
        for case (let key, let path?) in files where !FileManager.default.isReadableFile(atPath: path) {
            throw SettingsError(key: key, source: source, message: "cannot read \(path)")
        }
    }

    /// What `AMQPConnection.connect` needs for `REFERRALD_AMQP_URL`: nil for `amqp://`. Peer and
    /// host name verification are always on; there is deliberately no setting to turn them off.
    public var amqpTLS: AMQPTLS? {
        guard amqpURL.lowercased().hasPrefix("amqps://") else { return nil }
        return AMQPTLS(caCertificatePath: amqpCAFile, clientCertificatePath: amqpCertFile, clientKeyPath: amqpKeyFile)
    }
}

public struct SettingsError: Error, CustomStringConvertible {
    public let key: String?
    public let source: String
    public let message: String
    public var description: String {
        if let key { return "configuration (\(source)): \(key) \(message)" }
        return "configuration (\(source)): \(message)"
    }
}
