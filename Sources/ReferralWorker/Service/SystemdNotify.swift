import Foundation
import Logging
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The sd_notify protocol without libsystemd: one datagram of `KEY=VALUE` lines to the Unix
/// socket named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
public final class SystemdNotifier: Sendable {
    private let fd: Int32
    /// The encoded `sockaddr_un` (stored as bytes so the class holds only Sendable lets).
    private let address: [UInt8]

    /// nil when `NOTIFY_SOCKET` is unset (not run by systemd with Type=notify) or unusable.
    public init?(environment: [String: String]) {
        guard let name = environment["NOTIFY_SOCKET"], !name.isEmpty else { return nil }
        var path = Array(name.utf8)
        // `@name` is Linux's abstract namespace: a leading NUL byte, and no terminator.
        let abstract = path.first == UInt8(ascii: "@")
        if abstract { path[0] = 0 }
        var addr = sockaddr_un()
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard path.count < capacity, path.first == UInt8(ascii: "/") || abstract else { return nil }
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in raw.copyBytes(from: path) }
        let length = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + path.count + (abstract ? 0 : 1)
        address = withUnsafeBytes(of: &addr) { Array($0.prefix(length)) }
        #if canImport(Glibc)
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
            fd = socket(AF_UNIX, SOCK_DGRAM, 0)
        #endif
        if fd < 0 { return nil }
    }

    deinit { close(fd) }

    /// Sends one message; false when it could not be sent (systemd gone or the socket full).
    /// Never blocks: a notifier must not stall the process it reports on.
    @discardableResult
    public func send(_ message: String) -> Bool {
        let bytes = Array(message.utf8)
        return address.withUnsafeBytes { addr in
            bytes.withUnsafeBytes { body in
                addr.baseAddress!.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    sendto(
                        fd, body.baseAddress, body.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL), sa,
                        socklen_t(addr.count)) == body.count
                }
            }
        }
    }
}

/// systemd's watchdog as the environment describes it: `WATCHDOG_USEC` is WatchdogSec, and
/// `WATCHDOG_PID`, when set, names the process the watchdog is meant for (a child started by
/// a wrapper script inherits the variables but must not ping on its parent's behalf).
public struct Watchdog: Sendable, Equatable {
    /// Half of WatchdogSec, as sd_watchdog_enabled recommends: one late ping is not a kill.
    public let interval: Duration

    public init?(environment: [String: String], pid: Int32 = getpid()) {
        guard let text = environment["WATCHDOG_USEC"], let usec = Int64(text), usec > 0 else { return nil }
        if let owner = environment["WATCHDOG_PID"], Int32(owner) != pid { return nil }
        interval = .microseconds(usec / 2)
    }
}

/// Reports the worker's state to systemd and turns the start of a graceful shutdown into
/// `draining` for `/readyz`. Runs last in the service group so that it is the first to hear of
/// the shutdown: STOPPING=1 goes out before the worker starts its drain.
struct StatusReporter: Service {
    let status: ServiceStatus
    let notifier: SystemdNotifier?
    let watchdog: Watchdog?
    let metrics: WorkerMetrics
    let logger: Logger

    func run() async throws {
        var sentReady = false
        var sentStatus = ""
        var nextPing = ContinuousClock.now
        var withholding = false
        // Polled rather than pushed so that the worker's code only records facts; 100 ms is
        // well below any sensible WatchdogSec/2 and costs nothing.
        let tick = min(.milliseconds(100), watchdog?.interval ?? .milliseconds(100))
        await withGracefulShutdownHandler {
            while !Task.isCancelled, !Task.isShuttingDownGracefully {
                var lines: [String] = []
                if !sentReady, status.notReadyReason() == nil {
                    lines.append("READY=1")
                    sentReady = true
                    logger.info("ready", metadata: ["systemd.notify": "\(notifier != nil)"])
                }
                let line = status.statusLine()
                if line != sentStatus {
                    lines.append("STATUS=\(line)")
                    sentStatus = line
                }
                // systemd arms the watchdog once the unit is running, i.e. after READY=1.
                if sentReady, let watchdog, ContinuousClock.now >= nextPing {
                    nextPing = ContinuousClock.now + watchdog.interval
                    let progressing = status.isMakingProgress(within: watchdog.interval)
                    if progressing { lines.append("WATCHDOG=1") } else { metrics.watchdogPingWithheld() }
                    // Logged on the change only: a long outage would otherwise log every ping.
                    if progressing == withholding {
                        withholding = !progressing
                        logger.log(
                            level: progressing ? .notice : .warning,
                            progressing
                                ? "watchdog pings resumed"
                                : "watchdog pings withheld: the consume loop is not making progress",
                            metadata: ["status": "\(line)"])
                    }
                }
                if !lines.isEmpty { notifier?.send(lines.joined(separator: "\n")) }
                try? await Task.sleep(for: tick)
            }
        } onGracefulShutdown: {
            status.draining()
            notifier?.send("STOPPING=1\nSTATUS=draining: finishing the batch in hand")
        }
    }
}
