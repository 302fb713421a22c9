import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Helpers of the Ops tests: a fake systemd notify socket, a TCP proxy to cut the database
/// away from one daemon only, a raw HTTP GET, and the Prometheus text reader.

/// A value behind a lock. `@unchecked Sendable`: `value` is only touched inside `withLock`.
final class OpsLocked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

#if canImport(Glibc)
    private let streamType = Int32(SOCK_STREAM.rawValue)
    private let datagramType = Int32(SOCK_DGRAM.rawValue)
#else
    private let streamType = SOCK_STREAM
    private let datagramType = SOCK_DGRAM
#endif

/// What systemd would be for the daemon: a Unix datagram socket in a temporary directory that
/// records every notification with the time it arrived. Stops by itself after `lifetime`.
final class NotifyListener: Sendable {
    struct Message: Sendable {
        let at: ContinuousClock.Instant
        let lines: [String]
    }

    let path: String
    private let directory: String
    private let received = OpsLocked<[Message]>([])
    private let stopped = OpsLocked(false)

    init(lifetime: Duration = .seconds(300)) throws {
        directory = NSTemporaryDirectory() + "referrald-notify-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/notify.sock"
        let fd = socket(AF_UNIX, datagramType, 0)
        precondition(fd >= 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        precondition(rc == 0, "bind \(path): \(errno)")
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let deadline = ContinuousClock.now + lifetime
        let thread = Thread { [received, stopped] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !stopped.withLock({ $0 }), ContinuousClock.now < deadline {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { continue }
                let text = String(decoding: buffer[0..<n], as: UTF8.self)
                let message = Message(at: .now, lines: text.split(separator: "\n").map(String.init))
                received.withLock { $0.append(message) }
            }
            close(fd)
        }
        thread.start()
    }

    var messages: [Message] { received.withLock { $0 } }

    /// Times at which a message carrying `line` arrived.
    func times(of line: String) -> [ContinuousClock.Instant] {
        messages.filter { $0.lines.contains(line) }.map(\.at)
    }

    func statusLines() -> [String] {
        messages.flatMap(\.lines).filter { $0.hasPrefix("STATUS=") }
    }

    func stop() {
        stopped.withLock { $0 = true }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A TCP proxy on 127.0.0.1 (ephemeral port) to one upstream, which the test can cut (close
/// the listener and every connection: the daemon sees a dead server) and restore on the same
/// port. One thread accepts, one per connection pumps; all of them poll with short timeouts,
/// at most `maxConnections` live at once, and everything stops by itself after `lifetime`.
final class TCPProxy: Sendable {
    enum State { case open, cut, stopped }

    let port: Int
    private let upstreamPort: Int
    private let state = OpsLocked(State.open)
    private let listening = OpsLocked(false)
    private let connections = OpsLocked<Set<Int32>>([])
    private let maxConnections = 32

    init(upstreamPort: Int, lifetime: Duration = .seconds(300)) throws {
        self.upstreamPort = upstreamPort
        let probe = Self.listenSocket(port: 0)!
        port = Self.boundPort(probe)
        close(probe)
        let deadline = ContinuousClock.now + lifetime
        let thread = Thread { [self] in self.acceptLoop(deadline: deadline) }
        thread.start()
        precondition(waitListening(true), "proxy did not start")
    }

    /// Closes the listener and every open connection; returns once new connects are refused.
    func cut() {
        state.withLock { $0 = .cut }
        for fd in connections.withLock({ $0 }) { shutdown(fd, Int32(SHUT_RDWR)) }
        _ = waitListening(false)
    }

    func restore() {
        state.withLock { $0 = .open }
        _ = waitListening(true)
    }

    func stop() {
        state.withLock { $0 = .stopped }
        for fd in connections.withLock({ $0 }) { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    private func waitListening(_ wanted: Bool) -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if listening.withLock({ $0 }) == wanted { return true }
            usleep(10_000)
        }
        return false
    }

    private func acceptLoop(deadline: ContinuousClock.Instant) {
        var listener: Int32 = -1
        defer {
            if listener >= 0 { close(listener) }
            listening.withLock { $0 = false }
            stop()
        }
        while ContinuousClock.now < deadline {
            switch state.withLock({ $0 }) {
            case .stopped:
                return
            case .cut:
                if listener >= 0 {
                    close(listener)
                    listener = -1
                    listening.withLock { $0 = false }
                }
                usleep(20_000)
                continue
            case .open:
                if listener < 0 {
                    guard let fd = Self.listenSocket(port: port) else {
                        usleep(50_000)
                        continue
                    }
                    listener = fd
                    listening.withLock { $0 = true }
                }
            }
            var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 50) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            guard state.withLock({ $0 }) == .open, connections.withLock({ $0.count / 2 }) < maxConnections,
                let upstream = Self.connectLocal(port: upstreamPort)
            else {
                close(client)
                continue
            }
            connections.withLock {
                $0.insert(client)
                $0.insert(upstream)
            }
            let pump = Thread { [self] in self.pump(client, upstream, deadline: deadline) }
            pump.start()
        }
    }

    private func pump(_ a: Int32, _ b: Int32, deadline: ContinuousClock.Instant) {
        defer {
            connections.withLock {
                $0.remove(a)
                $0.remove(b)
            }
            close(a)
            close(b)
        }
        var buffer = [UInt8](repeating: 0, count: 16384)
        var fds = [pollfd(fd: a, events: Int16(POLLIN), revents: 0), pollfd(fd: b, events: Int16(POLLIN), revents: 0)]
        while ContinuousClock.now < deadline, state.withLock({ $0 }) == .open {
            let ready = poll(&fds, 2, 100)
            if ready < 0 { return }
            if ready == 0 { continue }
            for (i, from, to) in [(0, a, b), (1, b, a)] where fds[i].revents != 0 {
                let n = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return }
                var sent = 0
                while sent < n {
                    let m = buffer.withUnsafeBytes { send(to, $0.baseAddress! + sent, n - sent, Int32(MSG_NOSIGNAL)) }
                    if m <= 0 { return }
                    sent += m
                }
            }
        }
    }

    static func listenSocket(port: Int) -> Int32? {
        let fd = socket(AF_INET, streamType, 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = loopback(port: port)
        let ok =
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            } == 0 && listen(fd, 64) == 0
        if !ok {
            close(fd)
            return nil
        }
        return fd
    }

    static func connectLocal(port: Int) -> Int32? {
        let fd = socket(AF_INET, streamType, 0)
        var addr = loopback(port: port)
        let ok =
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            } == 0
        if !ok {
            close(fd)
            return nil
        }
        return fd
    }

    static func loopback(port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return addr
    }

    static func boundPort(_ fd: Int32) -> Int {
        var addr = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

enum Ops {
    /// A port free at the moment of asking, for the daemon's HTTP endpoint.
    static func freePort() -> Int {
        let fd = TCPProxy.listenSocket(port: 0)!
        defer { close(fd) }
        return TCPProxy.boundPort(fd)
    }

    /// A raw HTTP/1.1 request; nil when nothing answers.
    static func http(_ method: String = "GET", port: Int, path: String) -> (status: Int, body: String)? {
        guard let fd = TCPProxy.connectLocal(port: port) else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count
        else { return nil }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let head = text.range(of: "\r\n\r\n"),
            let status = Int(text.split(separator: " ").dropFirst().first ?? "")
        else { return nil }
        return (status, String(text[head.upperBound...]))
    }

    /// The value of one series in Prometheus text format: `name` with exactly `labels`.
    static func metric(_ text: String, _ name: String, _ labels: [String: String] = [:]) -> Double? {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let (series, value) = (
                line.split(separator: " ").dropLast().joined(separator: " "), line.split(separator: " ").last ?? ""
            )
            var seriesName = series
            var seriesLabels: [String: String] = [:]
            if let open = series.firstIndex(of: "{") {
                seriesName = String(series[..<open])
                let inner = series[series.index(after: open)..<series.index(before: series.endIndex)]
                for pair in inner.split(separator: ",") {
                    let kv = pair.split(separator: "=", maxSplits: 1)
                    if kv.count == 2 { seriesLabels[String(kv[0])] = String(kv[1].dropFirst().dropLast()) }
                }
            }
            if seriesName == name, seriesLabels == labels { return Double(value) }
        }
        return nil
    }

    static func waitForExit(_ p: Process, timeout: Duration = .seconds(40)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while p.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        return !p.isRunning
    }

    /// Runs the built binary to completion: exit status, stdout, stderr.
    static func runBinary(_ arguments: [String], environment: [String: String]) async throws -> (Int32, String, String)
    {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("REFERRALD_") }
        env.merge(environment) { _, new in new }
        let result = try await Subprocess.run(
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
                "referrald"),
            arguments, environment: env)
        return (result.status, result.output, result.errors)
    }
}
