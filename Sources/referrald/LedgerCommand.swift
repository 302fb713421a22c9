import ArgumentParser
import Foundation
import ReferralWorker

extension Ledger.Format: ExpressibleByArgument {}

/// `referrald ledger export|totals`: the reward ledger for billing and for tax (deploy/README.md).
struct LedgerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger",
        abstract: "The reward ledger: every reward with its history (billing), totals per account and year (tax).",
        discussion: "Both read one consistent snapshot of the database (REPEATABLE READ READ ONLY) and write nothing; "
            + "output goes to stdout as it is read, the count to stderr.",
        subcommands: [Export.self, Totals.self])

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "List every reward issued in [--from, --to): ids, beneficiary account, kind, amount, currency, program, state and history.",
            discussion:
                "In reward_id order. CSV (RFC 4180, CRLF, a header) or JSON Lines. History times: when referrald "
                + "recorded each change, and for applied, failed and mismatch the time billing's event gave "
                + "(billing_at).")

        @OptionGroup var options: CommonOptions
        @Option(help: "Only rewards issued at or after this (YYYY-MM-DD is UTC midnight, or RFC 3339).")
        var from: String?
        @Option(help: "Only rewards issued before this (YYYY-MM-DD or RFC 3339).")
        var to: String?
        @Option(help: "csv or json (JSON Lines).")
        var format: Ledger.Format = .csv

        func run() async throws {
            let settings = try await options.settings(requireAll: false)
            let out = FileHandle.standardOutput
            let n = try await Ledger.export(
                settings: settings, from: from, to: to, format: format,
                logger: options.logger(settings)
            ) { bytes in out.write(Data(bytes)) }
            FileHandle.standardError.write(Data("ledger export: \(n) rewards\n".utf8))
        }
    }

    struct Totals: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Totals per beneficiary account and currency of the rewards issued in a UTC calendar year: issued, reversed, net.",
            discussion: "Reversed counts the year's rewards reversed by now, whenever the reversal was; net = issued - "
                + "reversed; failed is the part billing rejected and has not applied since. In account_id, currency "
                + "order. CSV (RFC 4180) or JSON Lines.")

        @OptionGroup var options: CommonOptions
        @Option(help: "The UTC calendar year of issue (YYYY).")
        var year: Int
        @Option(help: "Only this reward kind: cash or bill_credit. Default: both.")
        var kind: String?
        @Option(help: "Only accounts whose net, in minor units of its currency, is at least this.")
        var minAmount: Int64?
        @Option(help: "csv or json (JSON Lines).")
        var format: Ledger.Format = .csv

        func run() async throws {
            let settings = try await options.settings(requireAll: false)
            let out = FileHandle.standardOutput
            let n = try await Ledger.totals(
                settings: settings, year: year, kind: kind, minAmount: minAmount, format: format,
                logger: options.logger(settings)
            ) { bytes in out.write(Data(bytes)) }
            FileHandle.standardError.write(Data("ledger totals: \(n) rows\n".utf8))
        }
    }
}
