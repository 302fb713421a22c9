/// The pure part of `referrald enroll --csv FILE`: bringing existing customers into the programme
/// with a code each and a first ask spread over a chosen period.
public enum Enrolment {
    /// A deterministic instant in `[start, start + span)` for the account's first ask: a hash of
    /// the account id scaled onto the span. Uniform, so a million accounts enrolled at once are
    /// not all asked (and messaging not flooded) in the same minute; deterministic, so a re-run
    /// of the same file with the same period yields the same schedule and the same ask keys.
    public static func firstAskInstant(accountId: String, start: Instant, span: Span) -> Instant {
        guard span.microseconds > 0 else { return start }
        // Scaling the high bits (multiply-high) rather than `hash % span` has no modulo bias.
        let offset = stableHash(accountId).multipliedFullWidth(by: UInt64(span.microseconds)).high
        return start + Span(microseconds: Int64(offset))
    }

    /// FNV-1a over the UTF-8 bytes, then SplitMix64's finaliser: FNV alone leaves similar ids
    /// (`acct-1000001`, `acct-1000002`) with similar high bits, which would bunch them together.
    /// Never Swift's `hashValue`, which is seeded per process and would reshuffle every run.
    static func stableHash(_ s: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        h = (h ^ (h >> 30)) &* 0xBF58_476D_1CE4_E5B9
        h = (h ^ (h >> 27)) &* 0x94D0_49BB_1331_11EB
        return h ^ (h >> 31)
    }

    /// The columns of an enrolment file, named by its header line (any order).
    public static let requiredColumns = ["account_id", "segment", "activated_at"]
    public static let optionalColumns = ["household_id", "contact_hash"]

    /// Parses an enrolment file. The header line is required and names the columns: all of
    /// `requiredColumns`, any of `optionalColumns`, nothing else (a misspelt `contact_hsh` would
    /// otherwise drop the data the fraud rules need, silently). Fields are comma-separated and may
    /// be double-quoted (`""` for a quote inside). Empty optional fields mean absent. Blank lines
    /// are skipped.
    ///
    /// A row is taken whole or not at all: each bad row gives one error naming its line (1 = the
    /// header) and the first bad field, and no row of it. A second row for an account already
    /// listed is an error too, since which one to believe is not ours to guess. A bad header gives
    /// one error and no rows.
    public static func parseCSV(_ text: String) -> (rows: [EnrolmentRow], errors: [EnrolmentError]) {
        // "\r\n" is one Character in Swift, so it is a separator of its own.
        var lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        if lines.last?.isEmpty == true { lines.removeLast() }
        guard let headerLine = lines.first else {
            return ([], [EnrolmentError(line: 1, field: nil, reason: "empty file: a header line is required")])
        }
        var columns: [String: Int] = [:]
        switch splitFields(headerLine, line: 1) {
        case .failure(let error):
            return ([], [error])
        case .success(let names):
            for (i, name) in names.enumerated() {
                guard requiredColumns.contains(name) || optionalColumns.contains(name) else {
                    return ([], [EnrolmentError(line: 1, field: name, reason: "unknown column")])
                }
                guard columns.updateValue(i, forKey: name) == nil else {
                    return ([], [EnrolmentError(line: 1, field: name, reason: "column listed twice")])
                }
            }
        }
        if let missing = requiredColumns.first(where: { columns[$0] == nil }) {
            return ([], [EnrolmentError(line: 1, field: missing, reason: "required column missing from the header")])
        }

        var rows: [EnrolmentRow] = []
        var errors: [EnrolmentError] = []
        var firstLine: [String: Int] = [:]
        for (offset, raw) in lines.enumerated().dropFirst() where !raw.isEmpty {
            let lineNumber = offset + 1
            switch parseRow(raw, line: lineNumber, columns: columns) {
            case .failure(let error):
                errors.append(error)
            case .success(let row):
                if let earlier = firstLine[row.accountId] {
                    errors.append(
                        EnrolmentError(
                            line: lineNumber, field: "account_id",
                            reason: "account already listed on line \(earlier)"))
                } else {
                    firstLine[row.accountId] = lineNumber
                    rows.append(row)
                }
            }
        }
        return (rows, errors)
    }

    private static func parseRow(_ raw: Substring, line: Int, columns: [String: Int]) -> Result<
        EnrolmentRow, EnrolmentError
    > {
        let fields: [String]
        switch splitFields(raw, line: line) {
        case .failure(let error): return .failure(error)
        case .success(let f): fields = f
        }
        guard fields.count == columns.count else {
            return .failure(
                EnrolmentError(
                    line: line, field: nil, reason: "\(fields.count) fields, the header has \(columns.count)"))
        }
        func value(_ name: String) -> String? { columns[name].map { fields[$0] } }
        func fail(_ field: String, _ reason: String) -> Result<EnrolmentRow, EnrolmentError> {
            .failure(EnrolmentError(line: line, field: field, reason: reason))
        }

        let account = value("account_id")!
        if let problem = idProblem(account) { return fail("account_id", problem) }
        let segmentText = value("segment")!
        guard let segment = Segment.allCases.first(where: { Array($0.rawValue.utf8) == Array(segmentText.utf8) }) else {
            return fail("segment", "must be consumer or business, got \"\(segmentText)\"")
        }
        guard let activatedAt = Instant(rfc3339: value("activated_at")!) else {
            return fail("activated_at", "not an RFC 3339 time with an offset (2026-11-23T10:31:07Z)")
        }
        var optional: [String: String] = [:]
        for name in optionalColumns {
            guard let v = value(name), !v.isEmpty else { continue }
            if let problem = idProblem(v) { return fail(name, problem) }
            optional[name] = v
        }
        return .success(
            EnrolmentRow(
                line: line, accountId: account, segment: segment, activatedAt: activatedAt,
                householdId: optional["household_id"], contactHash: optional["contact_hash"]))
    }

    /// The contract's `Id`: 1-128 printable ASCII characters. Edge spaces are refused as well:
    /// `acct-1, consumer` would otherwise enrol an account nobody else calls " consumer".
    private static func idProblem(_ v: String) -> String? {
        if v.isEmpty { return "empty" }
        if v.utf8.count > 128 { return "longer than 128 characters" }
        if !v.utf8.allSatisfy({ (0x20...0x7E).contains($0) }) { return "not printable ASCII" }
        if v.first == " " || v.last == " " { return "leading or trailing space" }
        return nil
    }

    /// One line's fields: comma-separated, optionally double-quoted with `""` inside quotes.
    private static func splitFields(_ line: Substring, line number: Int) -> Result<[String], EnrolmentError> {
        func fail(_ reason: String) -> Result<[String], EnrolmentError> {
            .failure(EnrolmentError(line: number, field: nil, reason: reason))
        }
        var fields: [String] = []
        var current = ""
        var i = line.startIndex
        var quoted = false
        var fieldStart = true
        while i < line.endIndex {
            let c = line[i]
            if quoted {
                if c == "\"" {
                    let next = line.index(after: i)
                    if next < line.endIndex, line[next] == "\"" {
                        current.append("\"")
                        i = next
                    } else {
                        quoted = false
                        if next < line.endIndex, line[next] != "," { return fail("text after a closing quote") }
                    }
                } else {
                    current.append(c)
                }
            } else if c == "," {
                fields.append(current)
                current = ""
                fieldStart = true
                i = line.index(after: i)
                continue
            } else if c == "\"" {
                guard fieldStart else { return fail("quote inside an unquoted field") }
                quoted = true
            } else {
                current.append(c)
            }
            fieldStart = false
            i = line.index(after: i)
        }
        if quoted { return fail("unterminated quote") }
        fields.append(current)
        return .success(fields)
    }
}

/// One customer to enrol, from one line of the file.
public struct EnrolmentRow: Hashable, Sendable {
    public var line: Int
    public var accountId: String
    public var segment: Segment
    public var activatedAt: Instant
    public var householdId: String?
    public var contactHash: String?

    /// The lifecycle fact the row stands for: the account's activation, which makes it a customer
    /// (a code request) and gives the fraud rules its household and contact.
    public var fact: Fact {
        .serviceActivated(
            accountId: accountId, at: activatedAt, householdId: householdId, contactHash: contactHash, segment: segment)
    }

    /// The ask facts: the activation and the enrolment, whose first ask is spread over
    /// `[start, start + span)` but never before the activation. Dated at `start`, so a re-run
    /// with the same period stores equal facts (a no-op), not a second enrolment.
    public func askFacts(start: Instant, span: Span) -> [AskFact] {
        let first = max(Enrolment.firstAskInstant(accountId: accountId, start: start, span: span), activatedAt)
        return [
            AskFact(accountId: accountId, at: activatedAt, kind: .serviceActivated(segment: segment)),
            AskFact(accountId: accountId, at: start, kind: .enrolled(firstAskAt: first)),
        ]
    }
}

public struct EnrolmentError: Error, Hashable, Sendable, CustomStringConvertible {
    /// 1 is the header line.
    public var line: Int
    /// The column at fault, nil when the line as a whole is (quoting, field count).
    public var field: String?
    public var reason: String

    public var description: String { "line \(line)" + (field.map { ", \($0)" } ?? "") + ": \(reason)" }
}
