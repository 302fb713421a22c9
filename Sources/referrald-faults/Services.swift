import Foundation

/// Where the real services are and how to disturb them: `rabbitmqctl` against one named node and
/// `pg_ctl` against one data directory. The suite restarts and stops these, so they must be
/// services nobody else is using at the time (CI runs the suite alone; a developer points it at
/// a second pair started with `scripts/services.sh` under other ports).
struct Services: Sendable {
    var amqpURL: String
    var databaseURL: String
    var rabbitmqctl: String
    var node: String
    var pgBin: String
    var pgData: String

    func rabbitmqctl(_ arguments: [String], timeout: Duration = .seconds(120)) throws -> String {
        try Shell.run(rabbitmqctl, ["-n", node, "-q"] + arguments, timeout: timeout)
    }

    /// PostgreSQL refuses to run as root: its cluster belongs to the `postgres` system user.
    func pgCtl(_ arguments: [String], timeout: Duration = .seconds(120)) throws -> String {
        let pgCtl = pgBin + "/pg_ctl"
        let args = ["-D", pgData] + arguments
        if getuid() == 0 { return try Shell.run("/usr/sbin/runuser", ["-u", "postgres", "--", pgCtl] + args, timeout: timeout) }
        return try Shell.run(pgCtl, args, timeout: timeout)
    }

    /// Refuses to restart a PostgreSQL cluster that is not the one behind `databaseURL`:
    /// `scripts/services.sh` reuses another folder's cluster when the port is taken, and stopping
    /// that one would break whoever owns it, while the faults would not reach the daemon at all.
    func checkPostgresIdentity() throws {
        let pidFile = pgData + "/postmaster.pid"
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8) else {
            throw SuiteError("no running PostgreSQL cluster in \(pgData) (\(pidFile) missing)")
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let port = URLComponents(string: databaseURL)?.port ?? 5432
        guard lines.count > 3, Int(lines[3]) == port else {
            throw SuiteError("the cluster in \(pgData) does not listen on \(port), the port of --database-url")
        }
    }

    func checkRabbitIdentity() throws {
        let listeners = try rabbitmqctl(["eval", "rabbit_networking:active_listeners()."])
        let port = URLComponents(string: amqpURL.replacingOccurrences(of: "amqp://", with: "http://"))?.port ?? 5672
        let compact = listeners.filter { !$0.isWhitespace }
        guard compact.contains("amqp,") && compact.contains("},\(port),[") else {
            throw SuiteError("RabbitMQ node \(node) does not listen on \(port), the port of --amqp-url: \(listeners)")
        }
    }
}

struct SuiteError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

enum Shell {
    /// Runs a command to completion, bounded in time: a hung `rabbitmqctl` must not hang CI.
    static func run(_ path: String, _ arguments: [String], timeout: Duration) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        // Read concurrently with the wait, or a chatty command fills the pipe and never exits.
        let collected = OutputBox()
        let reader = Thread {
            collected.set(output.fileHandleForReading.readDataToEndOfFile())
        }
        reader.start()
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now > deadline {
                process.terminate()
                throw SuiteError("\(path) \(arguments.joined(separator: " ")) did not finish within \(timeout)")
            }
            usleep(20_000)
        }
        while !collected.done { usleep(1_000) }
        let text = String(decoding: collected.data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw SuiteError("\(path) \(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(text)")
        }
        return text
    }

    private final class OutputBox: @unchecked Sendable {
        private let lock = NSLock()
        private var _data = Data()
        private var _done = false
        func set(_ data: Data) { lock.lock(); _data = data; _done = true; lock.unlock() }
        var done: Bool { lock.lock(); defer { lock.unlock() }; return _done }
        var data: Data { lock.lock(); defer { lock.unlock() }; return _data }
    }
}

/// Resident set size of a process in bytes, from /proc (Linux).
func residentBytes(pid: Int32) -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let kb = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { Int($0) }
        return kb.map { $0 * 1024 }
    }
    return nil
}
