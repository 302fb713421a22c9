import AMQP
import Foundation
import Logging

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

    /// A connection to the broker: to the first node of `amqpURL` that answers, when it names
    /// several (the three-node cluster), so the suite's own publisher and observer outlive the
    /// node a scenario stops.
    func connectBroker(heartbeatSeconds: Int, connectionName: String, logger: Logger) async throws -> AMQPConnection {
        try await AMQPConnection.connect(
            anyOf: try AMQPURL.parseList(amqpURL), heartbeatSeconds: heartbeatSeconds,
            connectionName: connectionName, logger: logger
        ).connection
    }

    func rabbitmqctl(_ arguments: [String], timeout: Duration = .seconds(120)) throws -> String {
        try Shell.run(rabbitmqctl, ["-n", node, "-q"] + arguments, timeout: timeout)
    }

    /// PostgreSQL refuses to run as root: its cluster belongs to the `postgres` system user.
    func pgCtl(_ arguments: [String], timeout: Duration = .seconds(120)) throws -> String {
        let pgCtl = pgBin + "/pg_ctl"
        let args = ["-D", pgData] + arguments
        if getuid() == 0 {
            return try Shell.run("/usr/sbin/runuser", ["-u", "postgres", "--", pgCtl] + args, timeout: timeout)
        }
        return try Shell.run(pgCtl, args, timeout: timeout)
    }

    /// Starts the cluster and waits until it accepts connections. `pg_ctl start` is not waited
    /// for: run from this process it never returned here although the server came up (its
    /// child keeps running detached), so readiness is judged by `pg_isready` instead.
    func pgStart(timeout: Duration = .seconds(60)) throws {
        let pgCtl = pgBin + "/pg_ctl"
        let args = ["-D", pgData, "-l", pgData + "/server.log", "start"]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: getuid() == 0 ? "/usr/sbin/runuser" : pgCtl)
        process.arguments = getuid() == 0 ? ["-u", "postgres", "--", pgCtl] + args : args
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let port = URLComponents(string: databaseURL)?.port ?? 5432
        let deadline = ContinuousClock.now + timeout
        while (try? Shell.run(pgBin + "/pg_isready", ["-q", "-h", "127.0.0.1", "-p", "\(port)"], timeout: .seconds(10)))
            == nil
        {
            guard ContinuousClock.now < deadline else {
                throw SuiteError("PostgreSQL in \(pgData) not ready within \(timeout)")
            }
            usleep(200_000)
        }
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
    /// Output goes to a file, not a pipe: `pg_ctl start` leaves the server holding its parent's
    /// descriptors, so a pipe would never reach end-of-file.
    static func run(_ path: String, _ arguments: [String], timeout: Duration) throws -> String {
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent(
            "referrald-faults-\(UUID().uuidString).out"
        ).path
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        defer { try? output.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now > deadline {
                process.terminate()
                throw SuiteError("\(path) \(arguments.joined(separator: " ")) did not finish within \(timeout)")
            }
            usleep(20_000)
        }
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        guard process.terminationStatus == 0 else {
            throw SuiteError("\(path) \(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(text)")
        }
        return text
    }
}

/// Resident set size of a process in bytes, from /proc (Linux).
func residentBytes(pid: Int32) -> Int? { statusBytes(pid: pid, field: "VmRSS:") }

/// The peak of the resident set over the process's life (VmHWM): a spike between two samples
/// is not missed.
func peakResidentBytes(pid: Int32) -> Int? { statusBytes(pid: pid, field: "VmHWM:") }

private func statusBytes(pid: Int32, field: String) -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(field) {
        let kb = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { Int($0) }
        return kb.map { $0 * 1024 }
    }
    return nil
}
