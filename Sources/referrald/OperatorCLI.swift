import ArgumentParser
import Foundation
import ReferralCore
import ReferralWorker

/// What every operator command takes: who acts, why, and whether only to show what it would do.
struct OperatorOptions: ParsableArguments {
    @Option(help: "Why (required): recorded in operator_actions and shown by explain.")
    var reason: String

    @Option(help: "Who acts (default: the OS user).")
    var actor: String = ProcessInfo.processInfo.environment["USER"] ?? ProcessInfo.processInfo.userName

    @Flag(help: "Run the action's transaction and roll it back: print what it would do, change nothing.")
    var dryRun = false

    var who: OperatorCommands.Who { .init(actor: actor, reason: reason, dryRun: dryRun) }
}

/// Runs one operator command and prints its outcome. A no-op (already blocked, already ended,
/// not paused...) is reported and exits 0: the commands are idempotent by design.
/// The programs file is read only by the actions that decide referrals (`programs`).
private func perform(
    _ options: CommonOptions,
    _ body: (Settings, Instant, _ programs: () throws -> ProgramBook) async throws -> OperatorCommands.Outcome
) async throws {
    let settings = try await options.settings(requireAll: false)
    do {
        print(try await body(settings, SystemClock().now()) { try ProgramBook.load(path: settings.programsFile) })
    } catch let error as OperatorCommands.UsageError {
        throw ValidationError(error.description)
    }
}

struct CodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "code", abstract: "Block or unblock a referral code (a leaked code).",
        subcommands: [Block.self, Unblock.self])

    struct Block: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Stop a code attributing new leads: each is counted unattributed (code_blocked) and gets no friend offer. Referrals that exist are not touched."
        )
        @OptionGroup var options: CommonOptions
        @OptionGroup var who: OperatorOptions
        @Argument(help: "The code, as customers type it.") var code: String
        func run() async throws {
            try await perform(options) { settings, now, _ in
                try await OperatorCommands.blockCode(
                    settings: settings, code: code, who: who.who, now: now,
                    logger: options.logger(settings))
            }
        }
    }

    struct Unblock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Let a blocked code attribute new leads again (leads that arrived while it was blocked stay unattributed)."
        )
        @OptionGroup var options: CommonOptions
        @OptionGroup var who: OperatorOptions
        @Argument(help: "The code.") var code: String
        func run() async throws {
            try await perform(options) { settings, now, _ in
                try await OperatorCommands.unblockCode(
                    settings: settings, code: code, who: who.who, now: now,
                    logger: options.logger(settings))
            }
        }
    }
}

struct ReferralCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "referral", abstract: "Act on one referral.", subcommands: [Reject.self])

    struct Reject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Reject a referral by hand: stage rejected, reason operator; rewards not issued never are, issued ones are reversed (reason operator). A referral that already ended is a no-op."
        )
        @OptionGroup var options: CommonOptions
        @OptionGroup var who: OperatorOptions
        @Argument(help: "The referral id (ref-...).") var referral: String
        func run() async throws {
            try await perform(options) { settings, now, programs in
                try await OperatorCommands.rejectReferral(
                    settings: settings, programs: try programs(), referralId: referral,
                    who: who.who, now: now, logger: options.logger(settings))
            }
        }
    }
}

struct RewardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reward", abstract: "Act on one reward.", subcommands: [Reverse.self])

    struct Reverse: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Reverse an issued reward by hand (referral.reward.reversed, reason operator). Never twice.")
        @OptionGroup var options: CommonOptions
        @OptionGroup var who: OperatorOptions
        @Argument(help: "The reward id (rwd-...).") var reward: String
        func run() async throws {
            try await perform(options) { settings, now, programs in
                try await OperatorCommands.reverseReward(
                    settings: settings, programs: try programs(), rewardId: reward,
                    who: who.who, now: now, logger: options.logger(settings))
            }
        }
    }
}

struct RewardsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rewards", abstract: "Stop and restart payouts (an emergency stop).",
        subcommands: [Pause.self, Resume.self])

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Hold every reward that falls due (referrals wait at qualified); asks, offers and status changes go on. Returns once no decision in flight can still issue one."
        )
        @OptionGroup var options: CommonOptions
        @OptionGroup var who: OperatorOptions
        @Option(help: "Only this program (default: every program).") var program: String?
        func run() async throws {
            try await perform(options) { settings, now, _ in
                try await OperatorCommands.pauseRewards(
                    settings: settings, program: program, who: who.who, now: now,
                    logger: options.logger(settings))
            }
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Lift a pause and issue the rewards it held, under the reward ids they would have had.")
        @OptionGroup var options: CommonOptions
        @OptionGroup var who: OperatorOptions
        @Option(help: "The program paused with --program (default: the pause of every program).") var program: String?
        func run() async throws {
            try await perform(options) { settings, now, programs in
                try await OperatorCommands.resumeRewards(
                    settings: settings, programs: try programs(), program: program,
                    who: who.who, now: now, logger: options.logger(settings))
            }
        }
    }
}
