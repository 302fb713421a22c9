import ArgumentParser
import Foundation
import Logging
import ReferralCore
import ReferralWorker

@main
struct Referrald: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "referrald",
        abstract: "The referral program worker: consumes provisioning, billing and CRM events, publishes rewards.",
        discussion: """
            Configuration comes from environment variables and from the file given with --config
            (the same KEY=VALUE lines; the environment wins). Keys:

            \(Settings.keys.map { "  \($0.name)\($0.defaultValue.map { " (default \($0))" } ?? " (required)")\n      \($0.help)" }.joined(separator: "\n"))
            """,
        version: BuildInfo.version,
        subcommands: [
            Run.self, Check.self, Migrate.self, TopologyCommand.self, ExplainCommand.self, DeadLetters.self,
            ReportCommand.self, SimulateCommand.self, ExportEventsCommand.self, EnrollCommand.self,
            ReconcileCommand.self, PruneCommand.self, DemoCommand.self,
            CodeCommand.self, ReferralCommand.self, RewardCommand.self, RewardsCommand.self, ProgramsCommand.self,
            LedgerCommand.self,
        ],
        defaultSubcommand: nil)
}

/// Options every subcommand shares.
struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: "A KEY=VALUE file with the same keys as the environment; the environment wins.")
    var config: String?

    func settings(requireAll: Bool = true) async throws -> Settings {
        try await Settings.load(
            configFile: config, environment: ProcessInfo.processInfo.environment,
            requireAll: requireAll)
    }

    func logger(_ settings: Settings, label: String = "referrald") -> Logger {
        let level = Logger.Level(rawValue: settings.logLevel) ?? .info
        let format = LineLogHandler.Format(rawValue: settings.logFormat) ?? .logfmt
        return Logger(label: label) { label in LineLogHandler(label: label, level: level, format: format) }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Consume the inbox and publish referral events until SIGTERM or SIGINT.",
        discussion: """
            Refuses to start while the database schema is older than this binary: run `referrald
            migrate` first. Exit codes: 0 stopped by a signal; 78 (EX_CONFIG) an error in the
            configuration or the programs file (also a file older than the newest program version
            the database knows: see --allow-older), which a restart cannot mend (the unit's
            RestartPreventExitStatus); 75 (EX_TEMPFAIL) a schema older than the binary, or the
            inbox queue or an exchange it publishes to missing on the broker, which `referrald
            migrate` or `referrald topology` mend (so the unit restarts it until then); 1 anything
            else. `run` declares nothing on the broker (the runtime user needs no configure right).
            """)

    @OptionGroup var options: CommonOptions

    @Flag(
        help:
            "Start even when the programs file is older than the newest program version the database knows (its version is registered at its own effective time; newer versions still bind the leads after theirs)."
    )
    var allowOlder = false

    func run() async throws {
        do {
            var settings = try await options.settings()
            settings.allowOlderPrograms = allowOlder
            let logger = options.logger(settings)
            let programs = try ProgramBook.load(path: settings.programsFile)
            logger.info("starting", metadata: ["programs": "\(programs.summary)", "version": "\(BuildInfo.version)"])
            try await Daemon(settings: settings, programs: programs, logger: logger).run()
        } catch let error as SettingsError {
            throw ExitStatus.config.exit(error)
        } catch let error as ProgramError {
            throw ExitStatus.config.exit(error)
        } catch let error as SchemaError {
            throw ExitStatus.notDeployedYet.exit(error)
        } catch let error as TopologyError {
            throw ExitStatus.notDeployedYet.exit(error)
        }
    }
}

/// The exit codes systemd tells apart (sysexits.h): a configuration error stops the restart
/// loop (`RestartPreventExitStatus=78`); a schema behind the binary or broker objects not yet
/// declared do not, as `referrald migrate` / `referrald topology` mend them while it restarts.
enum ExitStatus: Int32 {
    case config = 78
    case notDeployedYet = 75

    func exit(_ error: any Error) -> ExitCode {
        FileHandle.standardError.write(Data("referrald: \(error)\n".utf8))
        return ExitCode(rawValue)
    }
}

/// `referrald report --format`.
enum ReportFormat: String, CaseIterable, ExpressibleByArgument {
    case table, json, html
}

/// `referrald simulate --format`.
enum SimulateFormat: String, CaseIterable, ExpressibleByArgument {
    case table, json
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply the database migrations this binary carries (idempotent; safe from several instances at once)."
    )

    @OptionGroup var options: CommonOptions

    func run() async throws {
        let settings = try await options.settings(requireAll: false)
        let logger = options.logger(settings)
        let applied = try await Operations.migrate(settings: settings, logger: logger)
        print(
            applied.isEmpty
                ? "schema already current" : "applied migrations \(applied.map(String.init).joined(separator: ", "))")
    }
}

struct TopologyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topology",
        abstract: "Declare the exchanges, queues, bindings and dead-letter queue of the contract (idempotent).")

    @OptionGroup var options: CommonOptions

    @Flag(help: "Only check that the upstream exchanges exist, for brokers where referrald may not configure them.")
    var passiveUpstream = false

    func run() async throws {
        let settings = try await options.settings(requireAll: false)
        let logger = options.logger(settings)
        try await Operations.declareTopology(settings: settings, passiveUpstream: passiveUpstream, logger: logger)
        print("topology declared")
    }
}

struct ExplainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Show, for support staff, a referral's history and the rule, inputs and times that decided it.",
        discussion:
            "Give a referral id (ref-3001) or an account id: every referral where the account referred or was referred is shown."
    )

    @OptionGroup var options: CommonOptions

    @Argument(help: "A referral id or an account id.")
    var id: String

    func run() async throws {
        let settings = try await options.settings(requireAll: false)
        print(
            try await Explain.run(
                settings: settings, id: id, now: SystemClock().now(), logger: options.logger(settings)), terminator: "")
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Validate the configuration and the programs file, then reach the database (schema version) and the broker (inbox queue).",
        discussion:
            "Exits 0 with a short summary, or non-zero with the key, file or service at fault. Consumes nothing.")

    @OptionGroup var options: CommonOptions

    @Flag(
        help:
            "Accept a programs file older than the newest program version the database knows, as `run --allow-older` does."
    )
    var allowOlder = false

    func run() async throws {
        var settings = try await options.settings()
        settings.allowOlderPrograms = allowOlder
        let logger = options.logger(settings)
        let programs = try ProgramBook.load(path: settings.programsFile)
        print("configuration: ok")
        print("programs: \(programs.summary) (\(settings.programsFile))")
        for line in try await Operations.check(settings: settings, logger: logger) { print(line) }
        // After the schema check: the versions' table has its effective times from migration 19.
        for line in try await ProgramVersionsListing.check(settings: settings, programs: programs, logger: logger) {
            print(line)
        }
        print("ok")
    }
}

struct DeadLetters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq", abstract: "Dead letters.", subcommands: [Replay.self, Erase.self])

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move dead letters back to the inbox (body unchanged), once their cause is fixed.",
            discussion:
                "Replays what is in the dead-letter queue now; each is acked there only after the broker confirmed its copy in the inbox."
        )

        @OptionGroup var options: CommonOptions

        @Option(help: "Only dead letters with this x-referrald-error (e.g. processing_failed).")
        var error: String?

        @Option(help: "At most this many.")
        var limit: Int?

        func run() async throws {
            let settings = try await options.settings(requireAll: false)
            let result = try await DeadLetterReplay.run(
                settings: settings, onlyError: error, limit: limit,
                logger: options.logger(settings))
            print("replayed \(result.replayed), kept \(result.kept)")
        }
    }

    struct Erase: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Remove an erased customer's personal data from the dead letters (crm.customer.erased does not reach the DLQ).",
            discussion: """
                Reads every dead letter waiting now, once. One that concerns the account (its
                account id, or one of the leads it ordered or rewards it was paid, as the database
                knows them) is replaced by a scrubbed copy, which keeps ids, times and amounts and
                can still be replayed; one that is not a JSON object and names any of those ids is
                dropped. The others go back to the DLQ unchanged (republished at its tail). Each
                original is acked only after the broker confirmed its copy. Needs write on
                amq.default, as `dlq replay`. Exits 0 with a summary; 1 when the broker refused a
                copy (the originals stay: run it again).
                """)

        @OptionGroup var options: CommonOptions

        @Option(help: "The erased account's id.")
        var account: String

        func validate() throws {
            if account.isEmpty { throw ValidationError("--account needs an account id") }
        }

        func run() async throws {
            let settings = try await options.settings(requireAll: false)
            // Pass after pass until one scrubs and drops nothing: RabbitMQ does not confirm acks,
            // and an original whose ack was dropped as the reader closed is back in the DLQ, its
            // personal data with it. Bounded, so a broker that keeps dropping acks ends in an error.
            for n in 1...5 {
                let result = try await DeadLetterErase.run(
                    settings: settings, account: account, logger: options.logger(settings))
                print("pass \(n): \(result)")
                if result.scrubbed == 0 && result.dropped == 0 { return }
            }
            FileHandle.standardError.write(
                Data(
                    "referrald: the account's dead letters were still found after 5 passes: run the command again\n"
                        .utf8))
            throw ExitCode.failure
        }
    }
}

struct ReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract:
            "Measure a referral program over a period: asks, participation, funnel, cost, moments (docs/report.md).")

    @OptionGroup var options: CommonOptions
    @Option(
        help: "Start of the period (inclusive): YYYY-MM-DD (UTC midnight) or RFC 3339. Default: 90 days before --to.")
    var from: String?
    @Option(help: "End of the period (exclusive): YYYY-MM-DD or RFC 3339. Default: now.")
    var to: String?
    @Option(help: "Only this program id. Default: every program.")
    var program: String?
    @Option(help: "Output format.")
    var format: ReportFormat = .table

    func run() async throws {
        let settings = try await options.settings(requireAll: false)
        print(
            try await ReportCommands.report(
                settings: settings, from: from, to: to, program: program, format: format.rawValue,
                logger: options.logger(settings)), terminator: "")
    }
}

struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract:
            "Replay exported events under candidate programs and under the current ones (REFERRALD_PROGRAMS_FILE); print the difference.",
        discussion:
            "Reads only the two programs files and the events file: nothing is written to the database or the broker.")

    @OptionGroup var options: CommonOptions
    @Option(help: "The candidate programs file (YAML, same format as REFERRALD_PROGRAMS_FILE).")
    var programs: String
    @Option(help: "An NDJSON file written by `referrald export-events`.")
    var events: String
    @Option(help: "Run the replay clock until this time (YYYY-MM-DD or RFC 3339). Default: the last event's time.")
    var until: String?
    @Option(help: "Output format.")
    var format: SimulateFormat = .table

    func run() async throws {
        let settings = try await options.settings(requireAll: false)
        print(
            try ReportCommands.simulate(
                currentPrograms: settings.programsFile, candidatePrograms: programs, events: events,
                until: until, format: format.rawValue), terminator: "")
    }
}

struct ExportEventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-events",
        abstract:
            "Write the stored events as NDJSON (code snapshot lines, then inbox bodies in received order) for `simulate`."
    )

    @OptionGroup var options: CommonOptions
    @Option(help: "Only events whose fact time is at or after this (YYYY-MM-DD or RFC 3339).")
    var from: String?
    @Option(help: "Only events whose fact time is before this.")
    var to: String?

    func run() async throws {
        let settings = try await options.settings(requireAll: false)
        let out = FileHandle.standardOutput
        try await ReportCommands.exportEvents(settings: settings, from: from, to: to, logger: options.logger(settings))
        { bytes in
            out.write(Data(bytes))
        }
    }
}

struct EnrollCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enroll",
        abstract: "Bring existing customers into the program: a code each, and a first ask spread over a period.",
        discussion: """
            The CSV has a header naming its columns: account_id, segment, activated_at (required),
            household_id, contact_hash (optional). Bad rows are reported with their line number and
            skipped, never half-applied. A re-run of the same file enrols nobody twice. The codes
            are published by the running daemon's outbox relay.
            """)

    @OptionGroup var options: CommonOptions

    @Option(help: "The CSV file.")
    var csv: String

    @Option(help: "Spread the first asks over this period, with a unit: 30d, 12h...")
    var spread: String = "30d"

    @Option(help: "Start of the spread, RFC 3339. Default: now.")
    var start: String?

    func run() async throws {
        let settings = try await options.settings()
        let logger = options.logger(settings)
        guard let span = Span(spread), span.microseconds > 0 else {
            throw ValidationError("--spread \"\(spread)\" is not a duration with a unit (45s, 10m, 36h, 30d)")
        }
        let startAt =
            try start.map { text in
                guard let t = Instant(rfc3339: text) else {
                    throw ValidationError("--start \"\(text)\" is not an RFC 3339 time")
                }
                return t
            } ?? SystemClock().now()
        let programs = try ProgramBook.load(path: settings.programsFile)
        // A progress bar only on a terminal: in a pipe or a journal it would be noise.
        let terminal = isatty(2) == 1
        let bar: @Sendable (Int, Int) -> Void = { done, total in
            let width = 40
            let filled = total == 0 ? width : width * done / total
            let line = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data("\r[\(line)] \(done)/\(total)".utf8))
            if done == total { FileHandle.standardError.write(Data("\n".utf8)) }
        }
        let summary = try await Enroll.run(
            settings: settings, csvPath: csv, start: startAt, span: span, programs: programs, logger: logger,
            progress: terminal ? bar : nil)
        for e in summary.badRows { print("line \(e)") }
        print(summary)
    }
}

struct ReconcileCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reconcile",
        abstract: "Re-derive referrals from their facts, compare with the stored state, and repair what differs.",
        discussion: """
            For each referral: its standing (lead time, friend keys, cap slot) is derived again from
            the stored facts and compared with the stored one, then the referral is decided as the
            worker decides it. A reward that should stand and is missing is issued; one that must
            not stand is reversed; a published effect is never edited. Safe while daemons run (200
            referrals per transaction); the events are published by the daemons' outbox relay.
            Exits 1 when anything had to be fixed, 0 when nothing did.
            """)

    @OptionGroup var options: CommonOptions

    @Option(help: "Only the referrals of this referrer account.")
    var referrer: String?

    @Flag(help: "Every referral.")
    var all = false

    func validate() throws {
        guard (referrer != nil) != all else { throw ValidationError("give either --referrer ID or --all") }
    }

    func run() async throws {
        let settings = try await options.settings()
        let logger = options.logger(settings)
        let programs = try ProgramBook.load(path: settings.programsFile)
        let summary = try await Reconcile.run(
            settings: settings, scope: referrer.map { .referrer($0) } ?? .all,
            programs: programs, logger: logger)
        print(summary)
        if summary.fixes > 0 { throw ExitCode.failure }
    }
}

struct PruneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract:
            "Apply the retention settings (REFERRALD_RETENTION_*) once: empty old inbox bodies, delete old inbox keys and long-ended referrals.",
        discussion: """
            With every retention at 0 (the default) it deletes nothing. Works in short
            transactions (1,000 inbox rows, 200 referrals), safe while daemons run; meant for a
            daily systemd timer (deploy/systemd/referrald-prune.timer). Exit codes: 0 done, with
            a summary; 75 the schema is older than the binary (run `referrald migrate`); 78 an
            error in the configuration; 1 anything else.
            """)

    @OptionGroup var options: CommonOptions

    func run() async throws {
        do {
            // The database alone: the prune unit is given no broker credential.
            let settings = try await options.settings(requireAll: false)
            print(try await Prune.run(settings: settings, now: SystemClock().now(), logger: options.logger(settings)))
        } catch let error as SettingsError {
            throw ExitStatus.config.exit(error)
        } catch let error as SchemaError {
            throw ExitStatus.notDeployedYet.exit(error)
        }
    }
}
