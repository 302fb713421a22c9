import Foundation
import Testing

@testable import ReferralCore

/// The contract README's program, as the worker's Yams adapter hands it over.
func contractProgramNode(_ edit: (inout [(key: String, value: ConfigNode)]) -> Void = { _ in }) -> ConfigNode {
    func m(_ pairs: [(String, ConfigNode)]) -> ConfigNode { .mapping(pairs.map { (key: $0.0, value: $0.1) }) }
    func s(_ text: String) -> ConfigNode { .scalar(text) }
    var program: [(key: String, value: ConfigNode)] = [
        ("id", s("consumer")), ("segment", s("consumer")), ("currency", s("USD")),
        ("share_url", s("https://example.net/r/{code}")),
        (
            "friend_offer_text",
            s("Use my link and get priority installation plus a $25 bill credit when your service goes live.")
        ),
        ("referrer_reward", m([("kind", s("bill_credit")), ("amount_minor", s("5000"))])),
        (
            "friend_reward",
            m([("kind", s("bill_credit")), ("amount_minor", s("2500")), ("priority_install", s("true"))])
        ),
        ("qualify", m([("milestone", s("service_activated")), ("hold", s("30d"))])),
        ("attribution_window", s("90d")), ("clawback_window", s("60d")), ("clawback", s("referrer")),
        ("limits", m([("max_rewards_per_referrer_per_year", s("10")), ("max_leads_per_code_per_day", s("5"))])),
        ("fraud", m([("reject_same_household", s("true")), ("reject_same_contact", s("true"))])),
        (
            "asks",
            m([
                (
                    "moments",
                    .sequence(
                        ["post_install", "post_activation", "speed_test", "support_win", "bill_savings", "periodic"]
                            .map(s))
                ),
                ("delay_after_install", s("1d")), ("min_gap", s("30d")), ("max_per_year", s("4")),
                ("periodic_every", s("90d")),
            ])
        ),
        ("followup", m([("stalled_after", s("7d"))])),
    ].map { (key: $0.0, value: $0.1) }
    edit(&program)
    return .mapping([(key: "programs", value: .sequence([.mapping(program)]))])
}

private func set(_ key: String, _ value: ConfigNode) -> @Sendable (inout [(key: String, value: ConfigNode)]) -> Void {
    { pairs in
        let path = key.split(separator: ".").map(String.init)
        func apply(_ pairs: inout [(key: String, value: ConfigNode)], _ path: [String]) {
            guard let i = pairs.firstIndex(where: { $0.key == path[0] }) else {
                pairs.append((key: path[0], value: value))
                return
            }
            if path.count == 1 {
                pairs[i].value = value
                return
            }
            guard case .mapping(var inner) = pairs[i].value else { return }
            apply(&inner, Array(path.dropFirst()))
            pairs[i].value = .mapping(inner)
        }
        apply(&pairs, path)
    }
}

@Suite struct ProgramLoadingTests {
    @Test func loadsTheContractProgram() throws {
        let programs = try loadPrograms(contractProgramNode(), file: "programs.yaml")
        let p = try #require(programs.first)
        #expect(programs.count == 1)
        #expect(p.id == "consumer" && p.segment == .consumer && p.currency == "USD")
        #expect(p.referrerReward == .init(kind: .billCredit, amountMinor: 5000))
        #expect(p.friendReward == .init(kind: .billCredit, amountMinor: 2500, priorityInstall: true))
        #expect(p.qualify == .init(milestone: .serviceActivated, hold: .days(30)))
        #expect(p.attributionWindow == .days(90) && p.clawbackWindow == .days(60) && p.clawback == .referrer)
        #expect(p.limits == .init(maxRewardsPerReferrerPerYear: 10, maxLeadsPerCodePerDay: 5))
        #expect(p.fraud == .init(rejectSameHousehold: true, rejectSameContact: true))
        #expect(p.asks.moments.count == 6 && p.asks.minGap == .days(30) && p.asks.maxPerYear == 4)
        #expect(p.followup.stalledAfter == .days(7))
        #expect(p.shareURL(code: "K7QM-42XD-E") == "https://example.net/r/K7QM-42XD-E")
    }

    /// The contract's program with `by_plan` and `budget` (README, "Programs"): loaded, kept
    /// through the store's JSON, and a new version only when they are set.
    @Test func loadsRewardsByPlanAndABudget() throws {
        let plain = try #require(try loadPrograms(contractProgramNode(), file: "p.yaml").first)
        let node = contractProgramNode {
            set(
                "referrer_reward.by_plan",
                .mapping([(key: "fiber-1000", value: .scalar("15000")), (key: "fiber-500", value: .scalar("8000"))]))(
                    &$0)
            set("friend_reward.by_plan", .mapping([(key: "fiber-1000", value: .scalar("7500"))]))(&$0)
            set(
                "budget",
                .mapping([
                    (key: "monthly_minor", value: .scalar("2000000")), (key: "pause_asks_at", value: .scalar("0.9")),
                ]))(&$0)
        }
        let p = try #require(try loadPrograms(node, file: "p.yaml").first)
        #expect(p.referrerReward.byPlan == ["fiber-1000": 15000, "fiber-500": 8000])
        #expect(p.friendReward.byPlan == ["fiber-1000": 7500])
        #expect(p.budget == .init(monthlyMinor: 2_000_000, pauseAsksAt: 0.9))
        #expect(p.referrerReward.amount(plans: ["fiber-500"]) == 8000 && p.referrerReward.amount(plans: [nil]) == 5000)
        let back = try JSONDecoder().decode(Program.self, from: try JSONEncoder().encode(p))
        #expect(back == p)
        #expect(p.canonicalForm != plain.canonicalForm && p.canonicalForm.hasPrefix(plain.canonicalForm))
        // A version stored before by_plan existed decodes with an empty map.
        let old = #"{"kind":"bill_credit","amount_minor":5000}"#
        #expect(
            try JSONDecoder().decode(Program.Reward.self, from: Data(old.utf8))
                == .init(kind: .billCredit, amountMinor: 5000))
    }

    @Test func canonicalFormIgnoresKeyOrderAndUnitSpelling() throws {
        let base = try #require(try loadPrograms(contractProgramNode(), file: "p.yaml").first)
        let reordered = try #require(
            try loadPrograms(
                contractProgramNode {
                    $0.reverse()
                    set("qualify.hold", .scalar("720h"))(&$0)
                }, file: "p.yaml"
            ).first)
        let changed = try #require(
            try loadPrograms(contractProgramNode(set("qualify.hold", .scalar("31d"))), file: "p.yaml").first)
        #expect(base.canonicalForm == reordered.canonicalForm)
        #expect(base.canonicalForm != changed.canonicalForm)
        #expect(base.canonicalForm.contains("qualify.hold=30d\n"))
    }

    @Test func codableRoundTripKeepsEverything() throws {
        // Stored JSON must decode to the same program, or a version would change on reload.
        let p = try #require(try loadPrograms(contractProgramNode(), file: "p.yaml").first)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(p)
        #expect(String(decoding: data, as: UTF8.self).contains("\"hold\":\"30d\""))
        let back = try JSONDecoder().decode(Program.self, from: data)
        #expect(back == p)
    }

    struct Mistake: Sendable, CustomStringConvertible {
        let name: String
        let edit: @Sendable (inout [(key: String, value: ConfigNode)]) -> Void
        let field: String
        let described: String
        var description: String { name }
    }

    static let mistakes: [Mistake] = [
        Mistake(
            name: "hold without unit", edit: set("qualify.hold", .scalar("30")), field: "programs[0].qualify.hold",
            described: #"programs.yaml: program "consumer": qualify.hold: "30" has no unit (use s, m, h or d)"#),
        Mistake(
            name: "bad currency", edit: set("currency", .scalar("usd")), field: "programs[0].currency",
            described:
                #"programs.yaml: program "consumer": currency: "usd" is not an ISO 4217 code (three upper-case letters, e.g. USD)"#
        ),
        Mistake(
            name: "typo key", edit: { $0.append((key: "clawbak", value: .scalar("none"))) },
            field: "programs[0].clawbak",
            described:
                #"programs.yaml: program "consumer": clawbak: unknown key (expected one of: id, segment, currency, share_url, friend_offer_text, referrer_reward, friend_reward, qualify, attribution_window, clawback_window, clawback, limits, fraud, asks, followup, budget, effective_from)"#
        ),
        Mistake(
            name: "zero amount", edit: set("referrer_reward.amount_minor", .scalar("0")),
            field: "programs[0].referrer_reward.amount_minor",
            described: #"programs.yaml: program "consumer": referrer_reward.amount_minor: must be positive, got 0"#),
        Mistake(
            name: "bad enum", edit: set("clawback", .scalar("friend")), field: "programs[0].clawback",
            described: #"programs.yaml: program "consumer": clawback: "friend" is not one of referrer, both, none"#),
        Mistake(
            name: "missing field", edit: { $0.removeAll { $0.key == "attribution_window" } },
            field: "programs[0].attribution_window",
            described: #"programs.yaml: program "consumer": attribution_window: is required"#),
        Mistake(
            name: "no placeholder", edit: set("share_url", .scalar("https://example.net/r/")),
            field: "programs[0].share_url",
            described:
                #"programs.yaml: program "consumer": share_url: "https://example.net/r/" has no {code} placeholder"#),
        Mistake(
            name: "bad milestone", edit: set("qualify.milestone", .scalar("installed")),
            field: "programs[0].qualify.milestone",
            described:
                #"programs.yaml: program "consumer": qualify.milestone: "installed" is not one of service_activated, first_invoice_paid"#
        ),
        Mistake(
            name: "bad moment", edit: set("asks.moments", .sequence([.scalar("post_install"), .scalar("birthday")])),
            field: "programs[0].asks.moments[1]",
            described:
                #"programs.yaml: program "consumer": asks.moments[1]: "birthday" is not one of post_install, post_activation, speed_test, support_win, bill_savings, periodic"#
        ),
        Mistake(
            name: "missing id", edit: { $0.removeAll { $0.key == "id" } }, field: "programs[0].id",
            described: #"programs.yaml: programs[0].id: is required"#),
        Mistake(
            name: "plan amount zero",
            edit: set("referrer_reward.by_plan", .mapping([(key: "fiber-1000", value: .scalar("0"))])),
            field: "programs[0].referrer_reward.by_plan.fiber-1000",
            described:
                #"programs.yaml: program "consumer": referrer_reward.by_plan.fiber-1000: must be positive, got 0"#),
        Mistake(
            name: "plan id not printable",
            edit: set("friend_reward.by_plan", .mapping([(key: "fibre\u{7}", value: .scalar("100"))])),
            field: "programs[0].friend_reward.by_plan.fibre\u{7}",
            described:
                "programs.yaml: program \"consumer\": friend_reward.by_plan.fibre\u{7}: plan id \"fibre\u{7}\" is not 1-128 printable ASCII characters"
        ),
        Mistake(
            name: "budget share over 1",
            edit: set(
                "budget",
                .mapping([
                    (key: "monthly_minor", value: .scalar("100000")), (key: "pause_asks_at", value: .scalar("1.5")),
                ])),
            field: "programs[0].budget.pause_asks_at",
            described:
                #"programs.yaml: program "consumer": budget.pause_asks_at: must be above 0 and at most 1, got 1.5"#),
        Mistake(
            name: "bool typo", edit: set("fraud.reject_same_contact", .scalar("yes please")),
            field: "programs[0].fraud.reject_same_contact",
            described:
                #"programs.yaml: program "consumer": fraud.reject_same_contact: "yes please" is not true or false"#),
    ]

    @Test(arguments: mistakes)
    func mistakesNameFileProgramAndField(_ mistake: Mistake) {
        do {
            _ = try loadPrograms(contractProgramNode(mistake.edit), file: "programs.yaml")
            Issue.record("\(mistake.name) was accepted")
        } catch let error as ProgramError {
            #expect(error.file == "programs.yaml")
            #expect(error.field == mistake.field)
            #expect(error.description == mistake.described)
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func duplicateIdsAndSegmentsAreRefused() throws {
        guard case .mapping(let root) = contractProgramNode(), case .sequence(let items) = root[0].value,
            case .mapping(let first) = items[0]
        else {
            Issue.record("fixture shape")
            return
        }
        var second = first
        set("segment", .scalar("business"))(&second)
        let dupId = ConfigNode.mapping([(key: "programs", value: .sequence([.mapping(first), .mapping(second)]))])
        #expect(
            throws: ProgramError(
                file: "f.yaml", program: "consumer", field: "programs[1].id",
                message: "duplicate id \"consumer\" (also programs[0])")
        ) {
            try loadPrograms(dupId, file: "f.yaml")
        }
        var third = first
        set("id", .scalar("consumer-2"))(&third)
        let dupSegment = ConfigNode.mapping([(key: "programs", value: .sequence([.mapping(first), .mapping(third)]))])
        #expect(
            throws: ProgramError(
                file: "f.yaml", program: "consumer-2", field: "programs[1].segment",
                message: "segment \"consumer\" already has program \"consumer\" (one program per segment)")
        ) {
            try loadPrograms(dupSegment, file: "f.yaml")
        }
    }
}
