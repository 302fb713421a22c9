/// A YAML document as the worker hands it over after parsing with Yams: the core stays free of
/// the YAML library, and every scalar is kept as its text so that validation (not the parser's
/// type guessing) decides what `30`, `30d` or `yes` mean.
public indirect enum ConfigNode: Sendable {
    case scalar(String)
    case sequence([ConfigNode])
    /// Keys in file order; a repeated key is reported, not silently overwritten.
    case mapping([(key: String, value: ConfigNode)])
}

/// A programs file that cannot be used. `field` is the dotted path from the document root
/// (`programs[0].qualify.hold`); the description names the file, the program and the field
/// relative to the program, so an operator can fix the file without reading code:
/// `programs.yaml: program "consumer": qualify.hold: "30" has no unit (use s, m, h or d)`.
public struct ProgramError: Error, Hashable, Sendable, CustomStringConvertible {
    public var file: String
    /// The program's id when it could be read.
    public var program: String?
    public var field: String
    public var message: String

    public init(file: String, program: String?, field: String, message: String) {
        self.file = file
        self.program = program
        self.field = field
        self.message = message
    }

    public var description: String {
        guard let program else { return "\(file): \(field): \(message)" }
        var relative = Substring(field)
        if relative.hasPrefix("programs["), let close = relative.firstIndex(of: "]") {
            relative = relative[relative.index(after: close)...]
            if relative.hasPrefix(".") { relative = relative.dropFirst() }
        }
        return "\(file): program \"\(program)\": \(relative.isEmpty ? field[...] : relative): \(message)"
    }
}

/// Reads and validates a programs file. Everything is checked, and unknown keys are refused:
/// a typo such as `clawbak: none` must not silently leave the default in force for months.
/// Throws the first problem in file order.
public func loadPrograms(_ root: ConfigNode, file: String) throws -> [Program] {
    let top = try Fields(root, path: "", allowed: ["programs"], file: file, program: nil)
    let list = try top.required("programs")
    guard case .sequence(let items) = list.node else {
        throw ProgramError(
            file: file, program: nil, field: "programs",
            message: "expected a list of programs, got \(kindName(list.node))")
    }
    guard !items.isEmpty else {
        throw ProgramError(
            file: file, program: nil, field: "programs", message: "is empty: at least one program is needed")
    }
    var programs: [Program] = []
    var idAt: [String: Int] = [:]
    var segmentOwner: [Segment: String] = [:]
    for (i, item) in items.enumerated() {
        let path = "programs[\(i)]"
        let program = try readProgram(item, path: path, file: file)
        if let first = idAt[program.id] {
            throw ProgramError(
                file: file, program: program.id, field: "\(path).id",
                message: "duplicate id \"\(program.id)\" (also programs[\(first)])")
        }
        if let owner = segmentOwner[program.segment] {
            throw ProgramError(
                file: file, program: program.id, field: "\(path).segment",
                message:
                    "segment \"\(program.segment.rawValue)\" already has program \"\(owner)\" (one program per segment)"
            )
        }
        idAt[program.id] = i
        segmentOwner[program.segment] = program.id
        programs.append(program)
    }
    return programs
}

private let programKeys = [
    "id", "segment", "currency", "share_url", "friend_offer_text", "referrer_reward",
    "friend_reward", "qualify", "attribution_window", "clawback_window", "clawback",
    "limits", "fraud", "asks", "followup", "budget", "effective_from",
]

private func readProgram(_ node: ConfigNode, path: String, file: String) throws -> Program {
    // The id is read first so that every later error can name the program.
    var name: String?
    if case .mapping(let pairs) = node, let idNode = pairs.first(where: { $0.key == "id" })?.value,
        case .scalar(let text) = idNode, isId(text)
    {
        name = text
    }
    let f = try Fields(node, path: path, allowed: programKeys, file: file, program: name)
    let id = try f.required("id").string()
    guard isId(id) else { throw f.error("id", "\"\(id)\" is not an id (1-128 printable ASCII characters)") }
    let segment: Segment = try f.required("segment").choice()
    let currency = try f.required("currency").string()
    guard currency.utf8.count == 3, currency.utf8.allSatisfy({ $0 >= 65 && $0 <= 90 }) else {
        throw f.error("currency", "\"\(currency)\" is not an ISO 4217 code (three upper-case letters, e.g. USD)")
    }
    let shareURL = try f.required("share_url").string()
    guard shareURL.hasPrefix("https://") || shareURL.hasPrefix("http://") else {
        throw f.error("share_url", "\"\(shareURL)\" is not an http(s) URL")
    }
    guard shareURL.contains("{code}") else {
        throw f.error("share_url", "\"\(shareURL)\" has no {code} placeholder")
    }
    let offerText = try f.required("friend_offer_text").string()

    let rr = try Fields(f.required("referrer_reward"), allowed: ["kind", "amount_minor", "by_plan"], in: f)
    let referrerReward = Program.Reward(
        kind: try rr.required("kind").choice(),
        amountMinor: try rr.required("amount_minor").amount(),
        byPlan: try rr.optional("by_plan")?.byPlan() ?? [:])

    let fr = try Fields(
        f.required("friend_reward"), allowed: ["kind", "amount_minor", "priority_install", "by_plan"], in: f)
    let friendReward = Program.FriendReward(
        kind: try fr.required("kind").choice(),
        amountMinor: try fr.required("amount_minor").amount(),
        priorityInstall: try fr.required("priority_install").bool(),
        byPlan: try fr.optional("by_plan")?.byPlan() ?? [:])

    var budget: Program.Budget?
    if let b = f.optional("budget") {
        let bf = try Fields(b, allowed: ["monthly_minor", "pause_asks_at"], in: f)
        budget = Program.Budget(
            monthlyMinor: try bf.required("monthly_minor").amount(),
            pauseAsksAt: try bf.required("pause_asks_at").fraction())
    }

    let qf = try Fields(f.required("qualify"), allowed: ["milestone", "hold"], in: f)
    let qualify = Program.Qualify(
        milestone: try qf.required("milestone").choice(), hold: try qf.required("hold").span())

    let attribution = try f.required("attribution_window").span(positive: true)
    let clawbackWindow = try f.required("clawback_window").span()
    let clawback: ClawbackMode = try f.required("clawback").choice()

    let lf = try Fields(
        f.required("limits"), allowed: ["max_rewards_per_referrer_per_year", "max_leads_per_code_per_day"], in: f)
    let limits = Program.Limits(
        maxRewardsPerReferrerPerYear: try lf.required("max_rewards_per_referrer_per_year").count(min: 1),
        maxLeadsPerCodePerDay: try lf.required("max_leads_per_code_per_day").count(min: 1))

    let ff = try Fields(f.required("fraud"), allowed: ["reject_same_household", "reject_same_contact"], in: f)
    let fraud = Program.Fraud(
        rejectSameHousehold: try ff.required("reject_same_household").bool(),
        rejectSameContact: try ff.required("reject_same_contact").bool())

    let af = try Fields(
        f.required("asks"), allowed: ["moments", "delay_after_install", "min_gap", "max_per_year", "periodic_every"],
        in: f)
    let momentsField = try af.required("moments")
    guard case .sequence(let momentNodes) = momentsField.node else {
        throw momentsField.fail("expected a list of moments, got \(kindName(momentsField.node))")
    }
    var moments: [AskMoment] = []
    for (i, m) in momentNodes.enumerated() {
        let item = Field(node: m, path: "\(momentsField.path)[\(i)]", file: file, program: name)
        let moment: AskMoment = try item.choice()
        guard !moments.contains(moment) else { throw item.fail("\"\(moment.rawValue)\" is listed twice") }
        moments.append(moment)
    }
    let asks = Program.Asks(
        moments: moments,
        delayAfterInstall: try af.required("delay_after_install").span(),
        minGap: try af.required("min_gap").span(),
        maxPerYear: try af.required("max_per_year").count(min: 0),
        periodicEvery: try af.required("periodic_every").span(positive: true))

    // Optional, so that files written before versions had times keep working: such a version is
    // in force from when the store first registers it (`Program.effectiveFrom`).
    let effectiveFrom = try f.optional("effective_from")?.instant()

    let uf = try Fields(f.required("followup"), allowed: ["stalled_after"], in: f)
    let followup = Program.Followup(stalledAfter: try uf.required("stalled_after").span(positive: true))

    return Program(
        id: id, segment: segment, currency: currency, shareURL: shareURL, friendOfferText: offerText,
        referrerReward: referrerReward, friendReward: friendReward, qualify: qualify,
        attributionWindow: attribution, clawbackWindow: clawbackWindow, clawback: clawback,
        limits: limits, fraud: fraud, asks: asks, followup: followup, budget: budget,
        effectiveFrom: effectiveFrom)
}

private func isId(_ s: String) -> Bool {
    !s.isEmpty && s.utf8.count <= 128 && s.utf8.allSatisfy { $0 >= 0x20 && $0 <= 0x7E }
}

private func kindName(_ node: ConfigNode) -> String {
    switch node {
    case .scalar(let s): return "\"\(s)\""
    case .sequence: return "a list"
    case .mapping: return "a mapping"
    }
}

/// One value with its path, so that every conversion error names where it came from.
private struct Field {
    let node: ConfigNode
    let path: String
    let file: String
    let program: String?

    func fail(_ message: String) -> ProgramError {
        ProgramError(file: file, program: program, field: path, message: message)
    }

    func string() throws -> String {
        guard case .scalar(let s) = node else { throw fail("expected text, got \(kindName(node))") }
        guard !s.isEmpty else { throw fail("is empty") }
        return s
    }

    func choice<T: RawRepresentable & CaseIterable>() throws -> T where T.RawValue == String {
        let s = try string()
        guard let value = T(rawValue: s) else {
            throw fail("\"\(s)\" is not one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    func bool() throws -> Bool {
        switch try string() {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        case let s: throw fail("\"\(s)\" is not true or false")
        }
    }

    /// Money in minor units: positive (a zero reward is a configuration mistake, not a feature)
    /// and at most 2^53-1 so that every JSON consumer holds it exactly.
    func amount() throws -> Int64 {
        let s = try string()
        guard s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let v = Int64(s) else {
            throw fail("\"\(s)\" is not a whole number of minor units")
        }
        guard v > 0 else { throw fail("must be positive, got \(s)") }
        guard v <= 9_007_199_254_740_991 else { throw fail("\(s) is over 2^53-1") }
        return v
    }

    /// `by_plan`: plan ids (printable ASCII, as the contract's ids) to positive amounts; an
    /// error names the plan.
    func byPlan() throws -> [String: Int64] {
        guard case .mapping(let pairs) = node else {
            throw fail("expected a mapping of plan id to amount, got \(kindName(node))")
        }
        var out: [String: Int64] = [:]
        for pair in pairs {
            let field = Field(node: pair.value, path: "\(path).\(pair.key)", file: file, program: program)
            guard isId(pair.key) else {
                throw field.fail("plan id \"\(pair.key)\" is not 1-128 printable ASCII characters")
            }
            guard out[pair.key] == nil else { throw field.fail("appears twice") }
            out[pair.key] = try field.amount()
        }
        return out
    }

    /// A share in (0, 1].
    func fraction() throws -> Double {
        let s = try string()
        guard let v = Double(s), v.isFinite else { throw fail("\"\(s)\" is not a number") }
        guard v > 0, v <= 1 else { throw fail("must be above 0 and at most 1, got \(s)") }
        return v
    }

    func count(min: Int) throws -> Int {
        let s = try string()
        guard s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let v = Int(s) else {
            throw fail("\"\(s)\" is not a whole number")
        }
        guard v >= min else { throw fail("must be at least \(min), got \(s)") }
        return v
    }

    /// An RFC 3339 time with its offset (`2027-01-01T00:00:00Z`): a time without a zone would be
    /// read in each host's zone, and instances in different zones would disagree on it.
    func instant() throws -> Instant {
        let s = try string()
        guard let at = Instant(rfc3339: s) else {
            throw fail("\"\(s)\" is not an RFC 3339 time with an offset (e.g. 2027-01-01T00:00:00Z)")
        }
        return at
    }

    func span(positive: Bool = false) throws -> Span {
        let s = try string()
        guard let span = Span(s) else {
            if Int64(s) != nil { throw fail("\"\(s)\" has no unit (use s, m, h or d)") }
            throw fail("\"\(s)\" is not a duration (a whole number with s, m, h or d, e.g. 30d)")
        }
        if positive, span.microseconds == 0 { throw fail("must be longer than 0") }
        return span
    }
}

/// The keys of one mapping, checked against the allowed set as soon as it is opened.
private struct Fields {
    let pairs: [(key: String, value: ConfigNode)]
    let path: String
    let file: String
    let program: String?

    init(_ node: ConfigNode, path: String, allowed: [String], file: String, program: String?) throws {
        self.path = path
        self.file = file
        self.program = program
        guard case .mapping(let pairs) = node else {
            throw ProgramError(
                file: file, program: program, field: path.isEmpty ? "(root)" : path,
                message: "expected a mapping, got \(kindName(node))")
        }
        var seen: Set<String> = []
        for pair in pairs {
            let fieldPath = path.isEmpty ? pair.key : "\(path).\(pair.key)"
            guard allowed.contains(pair.key) else {
                throw ProgramError(
                    file: file, program: program, field: fieldPath,
                    message: "unknown key (expected one of: \(allowed.joined(separator: ", ")))")
            }
            guard seen.insert(pair.key).inserted else {
                throw ProgramError(file: file, program: program, field: fieldPath, message: "appears twice")
            }
        }
        self.pairs = pairs
    }

    init(_ field: Field, allowed: [String], in parent: Fields) throws {
        try self.init(field.node, path: field.path, allowed: allowed, file: parent.file, program: parent.program)
    }

    func error(_ key: String, _ message: String) -> ProgramError {
        ProgramError(file: file, program: program, field: path.isEmpty ? key : "\(path).\(key)", message: message)
    }

    func required(_ key: String) throws -> Field {
        guard let field = optional(key) else { throw error(key, "is required") }
        return field
    }

    func optional(_ key: String) -> Field? {
        guard let node = pairs.first(where: { $0.key == key })?.value else { return nil }
        return Field(node: node, path: path.isEmpty ? key : "\(path).\(key)", file: file, program: program)
    }
}
