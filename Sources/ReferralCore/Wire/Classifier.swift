/// The `x-referrald-error` header of a dead letter; raw values are the contract's strings.
public enum BadInputCode: String, CaseIterable, Sendable {
    case notJSON = "not_json"
    case notCloudEvent = "not_cloudevent"
    case unsupportedSpecversion = "unsupported_specversion"
    case unknownType = "unknown_type"
    case invalidData = "invalid_data"
    case tooLarge = "too_large"
    /// Never produced by `classify`: the worker sets it for a valid message whose processing
    /// failed for a non-transient reason on every one of its bounded deliveries.
    case processingFailed = "processing_failed"
}

/// Why a message goes to the dead-letter queue: the two headers it is published with.
public struct BadInput: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: BadInputCode
    /// `x-referrald-detail`: one line of printable ASCII, at most `maxDetailLength` characters.
    public let detail: String

    public static let maxDetailLength = 1024

    /// `detail` is made header-safe whatever it contains (see `headerSafe`).
    public init(code: BadInputCode, detail: String) {
        self.code = code
        self.detail = headerSafe(detail)
    }

    public var description: String { "\(code.rawValue): \(detail)" }
}

public struct InputLimits: Sendable, Hashable {
    /// Bodies longer than this are `too_large` without being parsed (contract: 256 KiB).
    public var maxBodyBytes: Int
    /// A body within `maxBodyBytes` that breaks one of these is `not_json`, its detail naming
    /// the limit (nesting deeper than 64 levels): `too_large` is the size check alone.
    public var json: JSONLimits

    public init(maxBodyBytes: Int = 262_144, json: JSONLimits = JSONLimits()) {
        self.maxBodyBytes = maxBodyBytes
        self.json = json
    }
}

/// Decides what a message body is, in the contract's order (`examples/README.md`, "Dead
/// letters"): the first rule that matches names the dead-letter code; a body no rule catches is
/// a typed event. Pure and total: any bytes give a result, none traps.
public func classify(body: [UInt8], limits: InputLimits = InputLimits()) -> Result<InboundEvent, BadInput> {
    // 1. Size, before parsing: a huge body must not cost a parse.
    guard body.count <= limits.maxBodyBytes else {
        return .failure(
            BadInput(code: .tooLarge, detail: "body is \(body.count) bytes, over the limit of \(limits.maxBodyBytes)"))
    }
    // 2. Exactly one UTF-8 JSON value.
    let root: JSONValue
    do {
        root = try JSONValue.parse(body, limits: limits.json)
    } catch {
        return .failure(BadInput(code: .notJSON, detail: error.description))
    }
    // 3. An object with a specversion.
    guard case .object(let event) = root else {
        return .failure(
            BadInput(code: .notCloudEvent, detail: "(root): expected a JSON object, got \(root.kindDescription)"))
    }
    guard let specversion = event["specversion"] else {
        return .failure(BadInput(code: .notCloudEvent, detail: "specversion: missing"))
    }
    // 4. Only CloudEvents 1.0.
    guard specversion == .string("1.0") else {
        let got = specversion.stringValue.map(quoted) ?? specversion.kindDescription
        return .failure(BadInput(code: .unsupportedSpecversion, detail: "specversion: expected \"1.0\", got \(got)"))
    }
    // 5. The attributes that identify and route an event.
    for name in ["id", "source", "type"] {
        let problem: String? =
            switch event[name] {
            case .string(let s): s.isEmpty ? "empty string" : nil
            case nil: "missing"
            case let other?: "expected a non-empty string, got \(other.kindDescription)"
            }
        if let problem { return .failure(BadInput(code: .notCloudEvent, detail: "\(name): \(problem)")) }
    }
    // 6. A type the worker consumes (byte-wise: see `Rule.oneOf`).
    let typeName = event["type"]?.stringValue ?? ""  // a non-empty string: step 5
    guard let type = try? Rule<ConsumedType>.oneOf.check(.string(typeName)) else {
        return .failure(BadInput(code: .unknownType, detail: "type: \(quoted(typeName)) is not a consumed type"))
    }
    // 7. The type's schema: envelope attributes, then data.
    do {
        let envelope = FieldReader(object: event, path: "")
        let id = try envelope.required("id", .id)
        let source = try envelope.required("source", .source)
        let time = try envelope.required("time", .timestamp)
        let subject = try envelope.ifPresent("subject", .nonEmpty)
        _ = try envelope.ifPresent("datacontenttype", .mediaType)
        let data = try envelope.required("data", .object)
        let payload = try EventPayload.decode(type, FieldReader(object: data, path: "data"))
        return .success(
            InboundEvent(id: id, source: source, type: type, time: time, subject: subject, payload: payload))
    } catch {
        return .failure(BadInput(code: .invalidData, detail: "\(error.path): \(error.reason)"))
    }
}

/// A detail as an AMQP header can carry it and a log line can show it: printable ASCII only
/// (control characters, which could split a log line or forge one, and non-ASCII are written
/// as `\u{..}`), at most `BadInput.maxDetailLength` characters, cut between characters (never
/// through an escape) and marked `...` where cut.
private func headerSafe(_ text: String) -> String {
    let limit = BadInput.maxDetailLength
    var out = ""
    var roomForMarker = 0  // length of `out` at its last character boundary that leaves room for "..."
    for u in text.unicodeScalars {
        let piece = (0x20...0x7E).contains(u.value) ? String(u) : "\\u{\(String(u.value, radix: 16, uppercase: true))}"
        guard out.utf8.count + piece.utf8.count <= limit else {
            return String(decoding: out.utf8.prefix(roomForMarker), as: UTF8.self) + "..."
        }
        out += piece
        if out.utf8.count <= limit - 3 { roomForMarker = out.utf8.count }
    }
    return out
}
