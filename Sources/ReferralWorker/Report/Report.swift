import Foundation
import Logging
import ReferralCore
import ReferralStore

/// `referrald report`: how a program performs over a period, against the industry's rules of
/// thumb. The JSON form is a documented, stable schema (docs/report.md): every key is always
/// present, with `null` where a ratio has no denominator. Version 2 added keys and kept every
/// key of version 1 as it was, so a reader of /1 reads /2.
public struct ProgramReport: Codable, Sendable, Equatable {
    public static let schemaName = "referrald.report/2"
    /// Rules of thumb the program owners compare against.
    public static let benchmarkParticipation = 0.25
    public static let benchmarkLeadsPerReferrerPerYear = 2.0

    public struct Period: Codable, Sendable, Equatable {
        public var from: String
        public var to: String
        public var days: Double
    }
    public struct Benchmarks: Codable, Sendable, Equatable {
        public var participationRate: Double
        public var leadsPerReferrerPerYear: Double
    }
    public struct Moment: Codable, Sendable, Equatable {
        public var moment: String
        public var asks: Int64
        public var customers: Int64
        public var leadsFollowing: Int64
        public var leadsPerAsk: Double?
    }
    public struct Asks: Codable, Sendable, Equatable {
        public var customersAsked: Int64
        public var asksSent: Int64
        public var followWindowDays: Double
        public var byMoment: [Moment]
        /// The moment with the most following leads per ask; nil without asks.
        public var bestMoment: String?
    }
    public struct Participation: Codable, Sendable, Equatable {
        public var referrers: Int64
        public var askedReferrers: Int64
        public var rate: Double?
        public var benchmarkRate: Double
    }
    public struct Unattributed: Codable, Sendable, Equatable {
        public var total: Int64
        public var withoutCode: Int64
        public var unknownCode: Int64
    }
    public struct Leads: Codable, Sendable, Equatable {
        public var total: Int64
        public var referred: Int64
        public var unattributed: Unattributed
        public var perReferrerPerYear: Double?
        public var benchmarkPerReferrerPerYear: Double
    }
    public struct Estimate: Codable, Sendable, Equatable {
        public var customersAsked: Int64
        public var participationRate: Double
        public var leadsPerReferrer: Double
        public var estimatedLeads: Double
        public var actualLeads: Int64
    }
    public struct FunnelStep: Codable, Sendable, Equatable {
        public var stage: String
        public var count: Int64
        public var conversion: Double?
        public var medianSecondsFromPrevious: Double?
    }
    public struct ReasonCount: Codable, Sendable, Equatable {
        public var reason: String
        public var count: Int64
    }
    public struct Outcome: Codable, Sendable, Equatable {
        public var stage: String
        public var reason: String?
        public var count: Int64
    }
    public struct Money: Codable, Sendable, Equatable {
        public var count: Int64
        public var amountMinor: Int64
    }
    public struct Cost: Codable, Sendable, Equatable {
        public var currency: String
        public var issued: Money, applied: Money, pending: Money, reversed: Money, failed: Money
        public var referrerAmountMinor: Int64
        public var friendAmountMinor: Int64
        public var netCostMinor: Int64
        public var activations: Int64
        public var costPerActivationMinor: Double?
    }
    public struct Week: Codable, Sendable, Equatable {
        public var weekStart: String
        public var leads: Int64, activated: Int64, qualified: Int64
    }
    /// The cohort's rewards by the friend's plan (of their first activation; "none").
    public struct PlanCost: Codable, Sendable, Equatable {
        public var plan: String
        public var currency: String
        public var issued: Money, reversed: Money
        /// Issued minus reversed.
        public var netCostMinor: Int64
        public var qualified: Int64
        public var costPerQualifiedMinor: Double?
    }
    /// The cohort's rewards by the ask moment its leads followed ("none": no ask).
    public struct MomentCost: Codable, Sendable, Equatable {
        public var moment: String
        public var currency: String
        public var issued: Money, reversed: Money
        public var netCostMinor: Int64
        public var qualified: Int64
        public var costPerQualifiedMinor: Double?
    }
    public struct Channel: Codable, Sendable, Equatable {
        public var channel: String
        public var leads: Int64, activated: Int64, qualified: Int64
        /// qualified ÷ leads.
        public var conversion: Double?
        public var unattributed: Int64
    }
    public struct BudgetMonth: Codable, Sendable, Equatable {
        public var month: String
        public var program: String
        public var currency: String
        public var issued: Money, reversed: Money
        /// Issued minus reversed in the month.
        public var netSpendMinor: Int64
        public var committedMinor: Int64
        public var budgetMonthlyMinor: Int64?
        public var spentShareOfBudget: Double?
        public var committedShareOfBudget: Double?
    }
    public struct Forecast: Codable, Sendable, Equatable {
        public var month: String
        public var program: String
        public var currency: String
        public var spentMinor: Int64
        public var elapsedFraction: Double
        /// spent ÷ elapsed fraction: the month's spend if it goes on at the rate so far.
        public var forecastMinor: Double?
        public var budgetMonthlyMinor: Int64?
        public var forecastShareOfBudget: Double?
    }
    public struct Budget: Codable, Sendable, Equatable {
        public var months: [BudgetMonth]
        public var forecast: [Forecast]
    }

    public var schema: String
    public var generatedAt: String
    public var period: Period
    public var program: String?
    public var benchmarks: Benchmarks
    public var asks: Asks
    public var participation: Participation
    public var leads: Leads
    public var estimate: Estimate
    public var funnel: [FunnelStep]
    public var rejections: [ReasonCount]
    public var outcomes: [Outcome]
    public var rewards: [Cost]
    public var repeatAdvocates: Int64
    public var weekly: [Week]
    public var spendByPlan: [PlanCost]
    public var costPerQualifiedByMoment: [MomentCost]
    public var channels: [Channel]
    public var budget: Budget

    /// Derives the ratios from the database's counts.
    public init(figures f: ReportFigures, scope: ReportScope, generatedAt: Instant) {
        func ratio(_ a: Double, _ b: Double) -> Double? { b > 0 ? a / b : nil }
        let days = Double(scope.to.microseconds - scope.from.microseconds) / 86_400_000_000
        let years = days / 365
        schema = Self.schemaName
        self.generatedAt = generatedAt.rfc3339
        period = Period(from: scope.from.rfc3339, to: scope.to.rfc3339, days: days)
        program = scope.programId
        benchmarks = Benchmarks(
            participationRate: Self.benchmarkParticipation,
            leadsPerReferrerPerYear: Self.benchmarkLeadsPerReferrerPerYear)
        let moments = f.moments.map {
            Moment(
                moment: $0.moment, asks: $0.asks, customers: $0.customers, leadsFollowing: $0.leadsFollowing,
                leadsPerAsk: ratio(Double($0.leadsFollowing), Double($0.asks)))
        }
        // Ties go to the moment named first, so the answer does not flip between two runs.
        let best = moments.filter { $0.leadsPerAsk != nil }
            .max { ($0.leadsPerAsk!, $1.moment) < ($1.leadsPerAsk!, $0.moment) }
        asks = Asks(
            customersAsked: f.customersAsked, asksSent: f.asksSent,
            followWindowDays: Double(scope.askFollowWindow.microseconds) / 86_400_000_000,
            byMoment: moments, bestMoment: best?.moment)
        participation = Participation(
            referrers: f.referrers, askedReferrers: f.askedReferrers,
            rate: ratio(Double(f.askedReferrers), Double(f.customersAsked)),
            benchmarkRate: Self.benchmarkParticipation)
        let referred = f.funnel.first?.reached ?? 0
        let unattributed = f.unattributedWithoutCode + f.unattributedUnknownCode
        leads = Leads(
            total: referred + unattributed, referred: referred,
            unattributed: Unattributed(
                total: unattributed, withoutCode: f.unattributedWithoutCode,
                unknownCode: f.unattributedUnknownCode),
            perReferrerPerYear: years > 0 ? ratio(Double(referred), Double(f.referrers)).map { $0 / years } : nil,
            benchmarkPerReferrerPerYear: Self.benchmarkLeadsPerReferrerPerYear)
        let perReferrer = Self.benchmarkLeadsPerReferrerPerYear * years
        estimate = Estimate(
            customersAsked: f.customersAsked, participationRate: Self.benchmarkParticipation,
            leadsPerReferrer: perReferrer,
            estimatedLeads: Double(f.customersAsked) * Self.benchmarkParticipation * perReferrer,
            actualLeads: referred)
        funnel = f.funnel.enumerated().map { i, s in
            FunnelStep(
                stage: s.stage, count: s.reached,
                conversion: i == 0 ? nil : ratio(Double(s.reached), Double(f.funnel[i - 1].reached)),
                medianSecondsFromPrevious: s.medianSecondsFromPrevious)
        }
        rejections = f.outcomes.filter { $0.stage == Stage.rejected.rawValue }
            .map { ReasonCount(reason: $0.reason ?? "unspecified", count: $0.count) }
        outcomes = f.outcomes.map { Outcome(stage: $0.stage, reason: $0.reason, count: $0.count) }
        let activations = f.funnel.first { $0.stage == "activated" }?.reached ?? 0
        rewards = f.costs.map { c in
            // Net cost: what was credited or still will be. Reversed and failed rewards are
            // issued but not money the program spends.
            let net = c.issued.amountMinor - c.reversed.amountMinor - c.failed.amountMinor
            func m(_ x: ReportFigures.Money) -> Money { Money(count: x.count, amountMinor: x.amountMinor) }
            return Cost(
                currency: c.currency, issued: m(c.issued), applied: m(c.applied), pending: m(c.pending),
                reversed: m(c.reversed), failed: m(c.failed), referrerAmountMinor: c.referrerAmountMinor,
                friendAmountMinor: c.friendAmountMinor, netCostMinor: net, activations: activations,
                costPerActivationMinor: ratio(Double(net), Double(activations)))
        }
        repeatAdvocates = f.repeatAdvocates
        weekly = f.weeks.map {
            Week(weekStart: $0.weekStart.rfc3339, leads: $0.leads, activated: $0.activated, qualified: $0.qualified)
        }
        spendByPlan = f.byPlan.map {
            let net = $0.issued.amountMinor - $0.reversed.amountMinor
            return PlanCost(
                plan: $0.group, currency: $0.currency, issued: Money($0.issued), reversed: Money($0.reversed),
                netCostMinor: net, qualified: $0.qualified,
                costPerQualifiedMinor: ratio(Double(net), Double($0.qualified)))
        }
        costPerQualifiedByMoment = f.byMoment.map {
            let net = $0.issued.amountMinor - $0.reversed.amountMinor
            return MomentCost(
                moment: $0.group, currency: $0.currency, issued: Money($0.issued), reversed: Money($0.reversed),
                netCostMinor: net, qualified: $0.qualified,
                costPerQualifiedMinor: ratio(Double(net), Double($0.qualified)))
        }
        channels = f.channels.map {
            Channel(
                channel: $0.channel, leads: $0.leads, activated: $0.activated, qualified: $0.qualified,
                conversion: ratio(Double($0.qualified), Double($0.leads)), unattributed: $0.unattributed)
        }
        budget = Self.budget(f, now: generatedAt)
    }

    public enum Format: String, CaseIterable, Sendable { case table, json, html }

    public func render(_ format: Format) -> String {
        switch format {
        case .table: return ReportTable.render(self)
        case .json: return json() + "\n"
        case .html: return ReportHTML.render(self)
        }
    }

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        // The model has nothing that can fail to encode (no NaN: every ratio checks its denominator).
        return String(decoding: try! encoder.encode(self), as: UTF8.self)
    }

    public static func decode(json: String) throws -> ProgramReport {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(ProgramReport.self, from: Data(json.utf8))
    }

    /// Connects, reads the figures in one snapshot and builds the report.
    public static func run(settings: Settings, scope: ReportScope, now: Instant, logger: Logger) async throws
        -> ProgramReport
    {
        let db = try await settings.connectDatabase(name: "referrald report", logger: logger)
        defer { Task { await db.close() } }
        return try await make(db, scope: scope, now: now)
    }

    /// `now` also dates the forecast's month-to-date.
    public static func make(_ db: Database, scope: ReportScope, now: Instant) async throws -> ProgramReport {
        let figures = try await db.report(scope, now: now)
        return ProgramReport(figures: figures, scope: scope, generatedAt: now)
    }

    /// `2026-03-01` (midnight UTC) or a full RFC 3339 time.
    public static func parseTime(_ text: String) -> Instant? {
        Instant(rfc3339: text) ?? Instant(rfc3339: text + "T00:00:00Z")
    }
}

/// Optional keys are written as `null` rather than left out: a consumer of the JSON schema can
/// rely on every key being present, and "no denominator" is not mistaken for "old version".
extension KeyedEncodingContainer {
    fileprivate mutating func encodeIfPresent(_ value: Double?, forKey key: Key) throws {
        if let value { try encode(value, forKey: key) } else { try encodeNil(forKey: key) }
    }

    fileprivate mutating func encodeIfPresent(_ value: String?, forKey key: Key) throws {
        if let value { try encode(value, forKey: key) } else { try encodeNil(forKey: key) }
    }

    fileprivate mutating func encodeIfPresent(_ value: Int64?, forKey key: Key) throws {
        if let value { try encode(value, forKey: key) } else { try encodeNil(forKey: key) }
    }
}
