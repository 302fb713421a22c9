import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A minimal HTTP/1.1 server for a few GET endpoints, with blocking POSIX sockets on threads of
/// its own: the responses come from locked state and need no async work, and threads keep the
/// cooperative pool (2 threads here) free of socket waits.
///
/// An accepting thread hands each connection to a thread of its own, `Connection: close`, at
/// most `maxConnections` at once (beyond that a connection is closed at once rather than queued
/// behind the others). Served one at a time, a few idle connections delayed every probe and
/// scrape by their deadlines in turn: tens of seconds. A client gets `requestDeadline` to send
/// its request head (at most `maxRequestBytes`) and as long to read the answer, so a slow or
/// malformed client holds its own thread for at most that, and never the others.
final class HTTPServer: Sendable {
    struct Response: Sendable {
        var status: Int
        var reason: String
        var contentType = "text/plain; charset=utf-8"
        var headers: [(String, String)] = []
        var body: [UInt8]

        static func text(_ status: Int, _ reason: String, _ body: String) -> Response {
            Response(status: status, reason: reason, body: Array((body + "\n").utf8))
        }
    }

    typealias Handler = @Sendable (_ method: String, _ path: String) -> Response

    static let maxRequestBytes = 8192
    static let requestDeadline: Duration = .seconds(2)
    static let maxConnections = 64

    /// The bound port (the one asked for, or the kernel's pick for port 0).
    let port: Int
    private let listener: Int32
    private let stopping = Locked(false)
    private let active = Locked(0)

    private init(listener: Int32, port: Int) {
        self.listener = listener
        self.port = port
    }

    /// Binds, listens and starts serving on a new thread. `host` must be a numeric address.
    static func start(host: String, port: Int, logger: Logger, handler: @escaping Handler) throws -> HTTPServer {
        let (fd, bound) = try bindListener(host: host, port: port)
        let server = HTTPServer(listener: fd, port: bound)
        let thread = Thread { server.serve(handler: handler, logger: logger) }
        thread.name = "referrald-http"
        thread.start()
        return server
    }

    /// Stops accepting; the thread closes the listener within one poll interval (250 ms).
    func stop() { stopping.withLock { $0 = true } }

    // MARK: the thread

    private func serve(handler: @escaping Handler, logger: Logger) {
        defer { close(listener) }
        while !stopping.withLock({ $0 }) {
            var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 250) > 0 else { continue }
            let client = accept(listener, nil, nil)
            if client < 0 { continue }  // EAGAIN (the client went away), EINTR, EMFILE: next round
            // Darwin's accept inherits the listener's O_NONBLOCK; the per-call timeouts below
            // need a blocking socket.
            _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) & ~O_NONBLOCK)
            let admitted = active.withLock { n -> Bool in
                guard n < Self.maxConnections else { return false }
                n += 1
                return true
            }
            guard admitted else {
                close(client)
                continue
            }
            let connection = Thread { [self] in
                Self.handle(client, handler: handler, logger: logger)
                close(client)
                active.withLock { $0 -= 1 }
            }
            connection.name = "referrald-http-conn"
            connection.start()
        }
    }

    private static func handle(_ fd: Int32, handler: Handler, logger: Logger) {
        let deadline = ContinuousClock.now + requestDeadline
        var timeout = timeval(tv_sec: 0, tv_usec: 250_000)
        // Each recv/send waits at most 250 ms, so the deadline is checked at least that often.
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 2048)
        while findHeadEnd(request) == nil {
            guard request.count < maxRequestBytes else {
                return write(
                    fd, .text(431, "Request Header Fields Too Large", "request head over \(maxRequestBytes) bytes"),
                    deadline: deadline)
            }
            guard ContinuousClock.now < deadline else { return }  // slow client: drop it, no answer
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return }  // closed before a full request
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { continue }
                return
            }
            request += chunk[0..<n]
        }
        guard let (method, path) = parseRequestLine(request) else {
            return write(fd, .text(400, "Bad Request", "malformed request line"), deadline: deadline)
        }
        write(fd, handler(method, path), deadline: deadline)
    }

    /// Index just past the blank line that ends the request head (CRLF, or bare LF tolerated).
    static func findHeadEnd(_ b: [UInt8]) -> Int? {
        for i in b.indices where b[i] == 10 {
            if i >= 1, b[i - 1] == 10 { return i + 1 }
            if i >= 3, b[i - 1] == 13, b[i - 2] == 10, b[i - 3] == 13 { return i + 1 }
        }
        return nil
    }

    /// `GET /path?query HTTP/1.1` → ("GET", "/path"). nil for anything else.
    static func parseRequestLine(_ bytes: [UInt8]) -> (String, String)? {
        guard let end = bytes.firstIndex(of: 10) else { return nil }
        let line = String(decoding: bytes[..<end], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = line.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1."), parts[1].hasPrefix("/"),
            parts[0].allSatisfy({ $0.isASCII && $0.isUppercase }), !parts[0].isEmpty
        else { return nil }
        let path = parts[1].split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        return (String(parts[0]), String(path))
    }

    private static func write(_ fd: Int32, _ response: Response, deadline: ContinuousClock.Instant) {
        var head = "HTTP/1.1 \(response.status) \(response.reason)\r\n"
        head +=
            "Content-Type: \(response.contentType)\r\nContent-Length: \(response.body.count)\r\nConnection: close\r\n"
        for (name, value) in response.headers { head += "\(name): \(value)\r\n" }
        let bytes = Array((head + "\r\n").utf8) + response.body
        var sent = 0
        // A client that stops reading gets until the same deadline; then the answer is cut.
        while sent < bytes.count, ContinuousClock.now < deadline {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { continue }
                return
            }
            sent += n
        }
    }

    private static func bindListener(host: String, port: Int) throws -> (Int32, Int) {
        var hints = addrinfo()
        hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE | AI_NUMERICSERV
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
            hints.ai_socktype = SOCK_STREAM
        #endif
        var info: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &info)
        guard rc == 0, let ai = info else {
            throw HTTPServerError(
                message:
                    "REFERRALD_HTTP_HOST \"\(host)\" is not a numeric IP address (\(String(cString: gai_strerror(rc))))"
            )
        }
        defer { freeaddrinfo(info) }
        let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype, 0)
        guard fd >= 0 else { throw HTTPServerError(message: "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        // A restarted daemon must not wait out TIME_WAIT connections of its predecessor.
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        guard bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0, listen(fd, Int32(maxConnections)) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw HTTPServerError(
                message: "cannot listen on \(host):\(port) (REFERRALD_HTTP_HOST/REFERRALD_HTTP_PORT): \(reason)")
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let bound: UInt16 = withUnsafeBytes(of: &storage) { raw in
            // sin_port and sin6_port sit at the same offset, in network byte order.
            UInt16(
                bigEndian: raw.load(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_port)!, as: UInt16.self))
        }
        return (fd, Int(bound))
    }
}

struct HTTPServerError: Error, CustomStringConvertible {
    let message: String
    var description: String { "HTTP endpoint: \(message)" }
}
