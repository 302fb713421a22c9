import Foundation
import Logging
import ReferralCore

/// One line per log event on stderr, as logfmt (`ts=… level=info msg="…" event.type=…`) or JSON.
///
/// Lines are written with one `write(2)` each, so lines from different threads never interleave
/// (a buffered `print` could split a line under load and break the journal's parsing).
///
/// Under systemd, with stderr connected to the journal, each line starts with its syslog
/// priority (`<3>` error, `<4>` warning, `<6>` info…, sd-daemon(3)): without it every line is
/// stored at the unit's default priority and `journalctl -p warning` shows nothing.
public struct LineLogHandler: LogHandler {
    public enum Format: String, Sendable { case logfmt, json }

    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level
    private let label: String
    private let format: Format
    private let journal: Bool
    private let write: @Sendable (String) -> Void

    public init(
        label: String, level: Logger.Level, format: Format, journal: Bool = LineLogHandler.stderrIsJournal,
        write: @escaping @Sendable (String) -> Void = LineLogHandler.standardError
    ) {
        self.label = label
        self.logLevel = level
        self.format = format
        self.journal = journal
        self.write = write
    }

    /// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM` is
    /// `<device>:<inode>` of it). The variable alone is not enough: a child of the service whose
    /// stderr was redirected to a file inherits it, and its file would fill with prefixes.
    public static let stderrIsJournal = isJournal(stream: ProcessInfo.processInfo.environment["JOURNAL_STREAM"], fd: 2)

    /// Whether `fd` is the stream `JOURNAL_STREAM` names.
    public static func isJournal(stream: String?, fd: Int32) -> Bool {
        guard let parts = stream?.split(separator: ":"), parts.count == 2,
            let device = UInt64(parts[0]), let inode = UInt64(parts[1])
        else { return false }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        return UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }

    /// sd-daemon(3)'s priority of a level.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .critical: 2
        case .error: 3
        case .warning: 4
        case .notice: 5
        case .info: 6
        case .debug, .trace: 7
        }
    }

    public static let standardError: @Sendable (String) -> Void = { line in
        let bytes = Array(line.utf8)
        bytes.withUnsafeBytes { _ = Foundation.write(2, $0.baseAddress, $0.count) }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        if let error = event.error { all["error"] = "\(error)" }
        let fields: [(String, String)] =
            [
                ("ts", SystemClock().now().rfc3339),
                ("level", event.level.rawValue),
                ("logger", label),
                ("msg", event.message.description),
            ] + all.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
        let line = format == .json ? Self.json(fields) : Self.logfmt(fields)
        write(journal ? "<\(Self.priority(event.level))>" + line : line)
    }

    static func logfmt(_ fields: [(String, String)]) -> String {
        fields.map { key, value in
            let plain =
                !value.isEmpty
                && value.unicodeScalars.allSatisfy {
                    $0.value > 0x20 && $0.value < 0x7F && $0 != "\"" && $0 != "=" && $0 != "\\"
                }
            return plain ? "\(key)=\(value)" : "\(key)=\(quoted(value))"
        }.joined(separator: " ") + "\n"
    }

    static func json(_ fields: [(String, String)]) -> String {
        "{" + fields.map { "\(quoted($0.0)):\(quoted($0.1))" }.joined(separator: ",") + "}\n"
    }

    /// A JSON string literal, also valid as a logfmt quoted value: the published events'
    /// encoder, whose escapes include the newline, so a message carrying one (a server error
    /// text) cannot forge a second log line.
    static func quoted(_ s: String) -> String { String(decoding: JSONValue.string(s).encoded(), as: UTF8.self) }
}
