/// Connection settings parsed from `postgres://user:password@host:port/dbname?...`.
///
/// Handed to libpq as keyword/value pairs (`PQconnectdbParams`), never as a conninfo string:
/// a password with a space, quote or backslash would otherwise need libpq's own quoting, and
/// a wrong quote would silently change which setting a value belongs to.
///
/// `description` hides the password, so the URL can be logged at startup.
public struct PostgresURL: Sendable, Hashable, CustomStringConvertible {
    public var user: String?
    public var password: String?
    public var host: String
    public var port: Int
    public var database: String?
    /// `disable`, `allow`, `prefer`, `require`, `verify-ca` or `verify-full`; libpq's default
    /// (`prefer`) when nil.
    public var sslMode: String?
    public var sslRootCert: String?
    public var sslCert: String?
    public var sslKey: String?
    public var applicationName: String?
    /// Seconds libpq waits for the connection to be established; libpq waits forever when nil.
    public var connectTimeout: Int?

    public init(
        host: String, port: Int = 5432, user: String? = nil, password: String? = nil,
        database: String? = nil
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    static let sslModes: Set<String> = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

    /// Parses a `postgres://` or `postgresql://` URL. User, password, host, database and query
    /// values are percent-decoded (`%40` is `@`); `+` stays a plus sign, as in any URI.
    ///
    /// Unknown query parameters are rejected rather than ignored: a typo such as `sslmod=` would
    /// otherwise silently fall back to an unverified connection. Error messages never quote the
    /// URL, since it may hold the password.
    public init(parsing text: String) throws(PostgresError) {
        func fail(_ reason: String) -> PostgresError {
            PostgresError(code: .invalidURL, context: "url", message: reason)
        }
        var rest = Substring(text)
        if rest.hasPrefix("postgres://") {
            rest = rest.dropFirst("postgres://".count)
        } else if rest.hasPrefix("postgresql://") {
            rest = rest.dropFirst("postgresql://".count)
        } else {
            throw fail("scheme must be postgres:// or postgresql://")
        }

        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        var path: Substring?
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        // The last "@" ends the user info: a password may contain a raw "@" that was not encoded.
        var authority = rest
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            authority = rest[rest.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                user = try Self.decode(userInfo[..<colon], fail("user is badly percent-encoded"))
                password = try Self.decode(
                    userInfo[userInfo.index(after: colon)...], fail("password is badly percent-encoded"))
            } else {
                user = try Self.decode(userInfo, fail("user is badly percent-encoded"))
            }
            if user == "" { user = nil }
        }

        var portText: Substring?
        if authority.hasPrefix("[") {
            // IPv6 literal: [::1]:5432
            guard let close = authority.firstIndex(of: "]") else { throw fail("unterminated [ in host") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected text after ] in host") }
                portText = after.dropFirst()
            }
        } else {
            if let colon = authority.firstIndex(of: ":") {
                portText = authority[authority.index(after: colon)...]
                authority = authority[..<colon]
            }
            host = try Self.decode(authority, fail("host is badly percent-encoded"))
        }
        guard !host.isEmpty else { throw fail("host is missing") }
        // libpq would read "a,b" as two hosts to try in turn; this daemon connects to one.
        guard !host.contains(",") else { throw fail("multiple hosts are not supported") }
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else { throw fail("port must be 1-65535") }
            port = p
        } else {
            port = 5432
        }

        if let path, !path.isEmpty {
            database = try Self.decode(path, fail("database is badly percent-encoded"))
        }

        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            guard let eq = pair.firstIndex(of: "=") else { throw fail("query parameter without '='") }
            let key = pair[..<eq]
            let value = try Self.decode(pair[pair.index(after: eq)...], fail("query value is badly percent-encoded"))
            switch key {
            case "sslmode":
                guard Self.sslModes.contains(value) else {
                    throw fail("sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full")
                }
                sslMode = value
            case "sslrootcert": sslRootCert = value
            case "sslcert": sslCert = value
            case "sslkey": sslKey = value
            case "application_name": applicationName = value
            case "connect_timeout":
                guard let seconds = Int(value), seconds >= 0 else {
                    throw fail("connect_timeout must be a whole number of seconds")
                }
                connectTimeout = seconds
            default:
                // The key is safe to quote: the password never sits in the query part.
                throw fail("unsupported query parameter '\(key)'")
            }
        }
    }

    /// Percent-decodes UTF-8. A malformed escape (`%4`, `%zz`) or an escape that does not
    /// decode to valid UTF-8 throws, instead of passing a mangled password to the server.
    private static func decode(_ text: Substring, _ error: PostgresError) throws(PostgresError) -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        func hex(_ byte: UInt8?) -> UInt8? {
            switch byte {
            case let b? where b >= 48 && b <= 57: b - 48
            case let b? where b >= 65 && b <= 70: b - 55
            case let b? where b >= 97 && b <= 102: b - 87
            default: nil
            }
        }
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = hex(iterator.next()), let low = hex(iterator.next()) else { throw error }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else { throw error }
        return decoded
    }

    /// The keyword/value pairs for `PQconnectdbParams`. `application_name` from the URL wins
    /// over the one passed in code, so an operator can tell instances apart.
    func connectionParameters(applicationName fallback: String) -> [(String, String)] {
        var params: [(String, String)] = [("host", host), ("port", String(port))]
        if let user { params.append(("user", user)) }
        if let password { params.append(("password", password)) }
        if let database { params.append(("dbname", database)) }
        if let sslMode { params.append(("sslmode", sslMode)) }
        if let sslRootCert { params.append(("sslrootcert", sslRootCert)) }
        if let sslCert { params.append(("sslcert", sslCert)) }
        if let sslKey { params.append(("sslkey", sslKey)) }
        if let connectTimeout { params.append(("connect_timeout", String(connectTimeout))) }
        params.append(("application_name", applicationName ?? fallback))
        // Swift strings are UTF-8; a server whose default client encoding is LATIN1 or
        // SQL_ASCII would otherwise hand back bytes that are not.
        params.append(("client_encoding", "UTF8"))
        return params
    }

    /// The URL with the password replaced by `***`. Other parts are shown decoded.
    public var description: String {
        var text = "postgres://"
        if user != nil || password != nil {
            text += user ?? ""
            if password != nil { text += ":***" }
            text += "@"
        }
        text += host.contains(":") ? "[\(host)]" : host
        text += ":\(port)"
        if let database { text += "/\(database)" }
        var query: [String] = []
        if let sslMode { query.append("sslmode=\(sslMode)") }
        if let sslRootCert { query.append("sslrootcert=\(sslRootCert)") }
        if let sslCert { query.append("sslcert=\(sslCert)") }
        if let sslKey { query.append("sslkey=\(sslKey)") }
        if let applicationName { query.append("application_name=\(applicationName)") }
        if let connectTimeout { query.append("connect_timeout=\(connectTimeout)") }
        if !query.isEmpty { text += "?" + query.joined(separator: "&") }
        return text
    }
}
