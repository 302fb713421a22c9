/// An `amqp://` or `amqps://` URL, parsed by hand rather than with Foundation's `URL` so that the
/// vhost's percent-decoding follows RabbitMQ's URI spec exactly ("%2f" is a vhost named "/") and
/// so that no error message can echo the password.
public struct AMQPURL: Sendable, Equatable, CustomStringConvertible {
    public var useTLS: Bool
    public var user: String
    public var password: String
    public var host: String
    public var port: Int
    public var vhost: String

    public init(
        useTLS: Bool = false, user: String, password: String, host: String, port: Int? = nil,
        vhost: String = "/"
    ) {
        self.useTLS = useTLS
        self.user = user
        self.password = password
        self.host = host
        self.port = port ?? (useTLS ? 5671 : 5672)
        self.vhost = vhost
    }

    /// Parses `amqp[s]://[user[:password]@]host[:port][/vhost]`. User and password default to
    /// guest/guest (RabbitMQ's URI spec); an empty path or "/" means the vhost "/". Query
    /// parameters are refused rather than ignored, so `?heartbeat=5` cannot silently do nothing.
    public init(parsing text: String) throws(AMQPError) {
        func invalid(_ why: String) -> AMQPError {
            AMQPError(.invalidURL, operation: "parse AMQP URL", detail: why)
        }
        guard let schemeEnd = text.range(of: "://") else {
            throw invalid("expected amqp:// or amqps://")
        }
        switch text[..<schemeEnd.lowerBound].lowercased() {
        case "amqp": useTLS = false
        case "amqps": useTLS = true
        default: throw invalid("unsupported scheme; expected amqp or amqps")
        }
        let rest = text[schemeEnd.upperBound...]
        // An '@' after the first '/' or '?' means the user or password holds one of them
        // unencoded (amqp://u:pa/ss@host): split there, the end of the password would become the
        // host, port or vhost, and reach the connect attempt and its error text. Refused whole;
        // an '@' in the vhost is written %40. The message never quotes the URL.
        if let end = rest.firstIndex(where: { $0 == "/" || $0 == "?" }), rest[end...].contains("@") {
            throw invalid(
                "an '@' follows a '/' or '?': a user or password must percent-encode '/' as %2F and '?' as %3F (and an '@' in the vhost is written %40)"
            )
        }
        if rest.contains("?") || rest.contains("#") {
            throw invalid("query parameters and fragments are not supported")
        }
        let authority: Substring
        let path: Substring?
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            path = rest[rest.index(after: slash)...]
        } else {
            authority = rest
            path = nil
        }

        // The password may contain '@' only percent-encoded; the last '@' ends the userinfo.
        var hostPort = authority
        if let at = authority.lastIndex(of: "@") {
            let userinfo = authority[..<at]
            hostPort = authority[authority.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                guard let u = Self.percentDecode(userinfo[..<colon]),
                    let p = Self.percentDecode(userinfo[userinfo.index(after: colon)...])
                else { throw invalid("bad percent-encoding in the user or password") }
                user = u
                password = p
            } else {
                guard let u = Self.percentDecode(userinfo) else {
                    throw invalid("bad percent-encoding in the user")
                }
                user = u
                password = ""
            }
        } else {
            user = "guest"
            password = "guest"
        }

        var portText: Substring?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else {
                throw invalid("unterminated IPv6 address")
            }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("unexpected text after ']'") }
                portText = after.dropFirst()
            }
        } else if let colon = hostPort.firstIndex(of: ":") {
            host = String(hostPort[..<colon])
            portText = hostPort[hostPort.index(after: colon)...]
        } else {
            host = String(hostPort)
        }
        guard !host.isEmpty else { throw invalid("missing host") }
        if let portText {
            guard let number = Int(portText), (1...65535).contains(number) else {
                throw invalid("port must be a number from 1 to 65535")
            }
            port = number
        } else {
            port = useTLS ? 5671 : 5672
        }

        guard let path, !path.isEmpty else {
            vhost = "/"
            return
        }
        guard !path.contains("/") else {
            throw invalid("the vhost is one path segment; write a '/' inside it as %2F")
        }
        guard let decoded = Self.percentDecode(path) else {
            throw invalid("bad percent-encoding in the vhost")
        }
        vhost = decoded
    }

    /// `amqp://user:***@host:port/vhost`: safe for logs. The vhost is percent-encoded so that the
    /// text parses back to the same vhost.
    public var description: String {
        let hostText = host.contains(":") ? "[\(host)]" : host
        return "\(useTLS ? "amqps" : "amqp")://\(Self.percentEncode(user)):***@\(hostText):\(port)/"
            + Self.percentEncode(vhost)
    }

    static func percentDecode(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue)
            else { return nil }
            bytes.append(high << 4 | low)
        }
        // Invalid UTF-8 decodes with replacement characters, which changes the bytes: refuse it.
        let decoded = String(decoding: bytes, as: UTF8.self)
        return Array(decoded.utf8) == bytes ? decoded : nil
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    static func percentEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
                UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                out += byte < 16 ? "%0\(hex)" : "%\(hex)"
            }
        }
        return out
    }
}

/// TLS settings for `amqps://` URLs (librabbitmq's OpenSSL socket). `caCertificatePath` is
/// required while `verifyPeer` is on: librabbitmq 0.11 does not read OpenSSL's default trust
/// store, so for a public CA pass the system bundle (/etc/ssl/certs/ca-certificates.crt).
/// Hostname verification checks the URL's host against the certificate's DNS names only
/// (librabbitmq 0.11 ignores IP address SANs): connect by a name in the certificate, not by IP.
public struct AMQPTLS: Sendable, Equatable {
    public var caCertificatePath: String?
    public var clientCertificatePath: String?
    public var clientKeyPath: String?
    public var verifyPeer: Bool
    public var verifyHostname: Bool

    public init(
        caCertificatePath: String? = nil, clientCertificatePath: String? = nil,
        clientKeyPath: String? = nil, verifyPeer: Bool = true, verifyHostname: Bool = true
    ) {
        self.caCertificatePath = caCertificatePath
        self.clientCertificatePath = clientCertificatePath
        self.clientKeyPath = clientKeyPath
        self.verifyPeer = verifyPeer
        self.verifyHostname = verifyHostname
    }
}
