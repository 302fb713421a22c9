import ArgumentParser
import ReferralCore
import ReferralWorker

/// `referrald programs`: the program versions the database holds.
struct ProgramsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "programs", abstract: "Program versions.", subcommands: [List.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List every program version the database knows, with its effective and registered times.",
            discussion: """
                A lead is bound to the version of its program in force at the lead's own time: the
                greatest effective_from not after it (a lead dated before every version gets the
                earliest). "in force now" marks the version a lead dated now gets. Read from the
                database, so every instance's answer is the same whatever programs file it holds.
                """)

        @OptionGroup var options: CommonOptions

        func run() async throws {
            let settings = try await options.settings(requireAll: false)
            let rows = try await ProgramVersionsListing.rows(
                settings: settings, now: SystemClock().now(),
                logger: options.logger(settings))
            print(ProgramVersionsListing.table(rows), terminator: "")
        }
    }
}
