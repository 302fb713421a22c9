import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP forwarder the suite puts between the daemon and PostgreSQL, and can cut.
///
/// `blackHole()` stops moving bytes on every connection open at that moment, both ways, and
/// closes nothing: neither end hears a reset or a FIN, exactly as behind a stateful firewall or
/// NAT that lost its flow, or a pooler cut off from its server. Connections opened afterwards
/// are forwarded as before (the path is back; the old flows stay dead). A proxy cannot drop
/// TCP segments, so the cut flows' keepalives are still answered by this process's kernel:
/// what ends the daemon's stuck statement here is its own answer deadline, and on the server
/// `idle_in_transaction_session_timeout`. Each connection is served by a thread of its own;
/// this is test scaffolding for a handful of connections. `@unchecked Sendable`: the counters
/// and `stopped` are only touched under `lock`; the rest is immutable.
final class TCPProxy: @unchecked Sendable {
    /// The loopback port the daemon connects to.
    let port: Int
    private let listener: Int32
    private let targetPort: Int
    /// Guards `accepted`, `cutThrough` and `stopped`, shared by the accept and pump threads.
    private let lock = NSLock()
    private var accepted = 0
    /// Connections numbered up to this one are black-holed.
    private var cutThrough = 0
    private var stopped = false

    /// Forwards 127.0.0.1:`port` (an ephemeral port) to 127.0.0.1:`targetPort`.
    init(targetPort: Int) throws {
        self.targetPort = targetPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SuiteError("proxy: socket() failed: errno \(errno)") }
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, Glibc.listen(fd, 64) == 0 else {
            close(fd)
            throw SuiteError("proxy: cannot listen on 127.0.0.1: errno \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread { [self] in acceptLoop() }.start()
    }

    /// Cuts every connection open now; later ones pass.
    func blackHole() { lock.withLock { cutThrough = accepted } }

    /// Closes the listener and, within 100 ms, every connection.
    func stop() {
        lock.withLock { stopped = true }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    private func acceptLoop() {
        while !isStopped {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.loopback(port: UInt16(targetPort))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else {
                close(upstream)
                close(client)
                continue
            }
            let number = lock.withLock {
                accepted += 1
                return accepted
            }
            Thread { [self] in pump(client, upstream, number: number) }.start()
        }
    }

    private func pump(_ a: Int32, _ b: Int32, number: Int) {
        defer {
            close(a)
            close(b)
        }
        var descriptors = [
            pollfd(fd: a, events: Int16(POLLIN), revents: 0), pollfd(fd: b, events: Int16(POLLIN), revents: 0),
        ]
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let (cut, stopped) = lock.withLock { (number <= cutThrough, self.stopped) }
            if stopped { return }
            if cut {
                // Silent: nothing read, nothing written, nothing closed, until the suite ends.
                usleep(100_000)
                continue
            }
            guard poll(&descriptors, 2, 100) > 0 else { continue }
            for (index, descriptor) in descriptors.enumerated() where descriptor.revents != 0 {
                let destination = index == 0 ? b : a
                let count = read(descriptor.fd, &buffer, buffer.count)
                if count <= 0 { return }
                var sent = 0
                while sent < count {
                    let n = buffer.withUnsafeBytes { write(destination, $0.baseAddress! + sent, count - sent) }
                    if n <= 0 { return }
                    sent += n
                }
            }
        }
    }
}
