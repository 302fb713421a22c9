import Foundation
import Logging
import ReferralWorker
import Synchronization
import Testing

/// Log lines as the journal and log shippers read them.
@Suite struct LogLineTests {
    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        var all: [String] { lines.withLock { $0 } }
    }

    func logger(journal: Bool, format: LineLogHandler.Format = .logfmt) -> (Logger, Lines) {
        let lines = Lines()
        let logger = Logger(label: "t") { label in
            LineLogHandler(label: label, level: .debug, format: format, journal: journal) { line in
                lines.lines.withLock { $0.append(line) }
            }
        }
        return (logger, lines)
    }

    /// Under the journal, each line carries its syslog priority, so `journalctl -p warning`
    /// finds the warnings; elsewhere the lines are plain.
    @Test func journalLinesCarryTheirPriority() {
        let (journal, seen) = logger(journal: true)
        journal.error("e")
        journal.warning("w")
        journal.info("i")
        journal.debug("d")
        #expect(seen.all.map { String($0.prefix(3)) } == ["<3>", "<4>", "<6>", "<7>"])
        #expect(seen.all[1].contains("level=warning logger=t msg=w"))
        let (plain, lines) = logger(journal: false, format: .json)
        plain.warning("w")
        #expect(lines.all.first?.hasPrefix("{\"ts\":") == true)
    }

    /// `JOURNAL_STREAM` names the stream by device and inode; a descriptor that is another
    /// file (a child's stderr redirected, with the variable inherited) is not the journal.
    @Test func theJournalIsRecognisedByDeviceAndInode() throws {
        let dir = FileManager.default.temporaryDirectory
        let a = dir.appendingPathComponent("journal-a-\(UInt32.random(in: 0...UInt32.max))").path
        let b = dir.appendingPathComponent("journal-b-\(UInt32.random(in: 0...UInt32.max))").path
        let fa = open(a, O_CREAT | O_WRONLY, 0o600)
        let fb = open(b, O_CREAT | O_WRONLY, 0o600)
        defer {
            close(fa)
            close(fb)
            unlink(a)
            unlink(b)
        }
        try #require(fa >= 0 && fb >= 0)
        var st = stat()
        try #require(fstat(fa, &st) == 0)
        let stream = "\(st.st_dev):\(st.st_ino)"
        #expect(LineLogHandler.isJournal(stream: stream, fd: fa))
        #expect(!LineLogHandler.isJournal(stream: stream, fd: fb))
        #expect(!LineLogHandler.isJournal(stream: nil, fd: fa))
        #expect(!LineLogHandler.isJournal(stream: "garbage", fd: fa))
    }
}
