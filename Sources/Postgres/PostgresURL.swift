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
    /// Hosts libpq tries in turn (`postgres://a:5432,b:5433/db`); with
    /// `target_session_attrs=read-write` the first that accepts writes wins, so a standby
    /// promoted after a failover is found without a change of configuration.
    public var hosts: [Endpoint]
    /// The first host; the only one unless the URL lists several.
    public var host: String {
        get { hosts[0].host }
        set { hosts[0].host = newValue }
    }
    public var port: Int {
        get { hosts[0].port }
        set { hosts[0].port = newValue }
    }
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
    /// The network and session keys passed to libpq as they are (validated): `keepalives`,
    /// `keepalives_idle`, `keepalives_interval`, `keepalives_count`, `tcp_user_timeout`,
    /// `options` and `target_session_attrs`. Keepalives and the user timeout are what end a
    /// connection whose peer vanished without a word (a partition, a dead host): without them
    /// a statement waits for an answer until the kernel's defaults give up, about two hours.
    public var networkParameters: [String: String] = [:]

    public struct Endpoint: Sendable, Hashable {
        public var host: String
        public var port: Int
        public init(host: String, port: Int = 5432) {
            self.host = host
            self.port = port
        }
    }

    public init(
        host: String, port: Int = 5432, user: String? = nil, password: String? = nil,
        database: String? = nil
    ) {
        self.hosts = [Endpoint(host: host, port: port)]
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
        if Self.unencodedDelimiterInUserinfo(rest) {
            throw fail(
                "an '@' follows a '/' or '?': a user or password must percent-encode '/' as %2F and '?' as %3F (and an '@' after the host is written %40)"
            )
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

        // libpq's list form, `host1:5432,host2:5433`: each entry is parsed alone.
        var endpoints: [Endpoint] = []
        for entry in authority.split(separator: ",", omittingEmptySubsequences: false) {
            endpoints.append(try Self.endpoint(entry, fail))
        }
        hosts = endpoints

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
            case let key where Self.numericNetworkKeys.contains(String(key)):
                guard let n = Int(value), n >= 0, key != "keepalives" || n <= 1 else {
                    throw fail("\(key) must be a whole number\(key == "keepalives" ? " (0 or 1)" : " ≥ 0")")
                }
                networkParameters[String(key)] = String(n)
            case "target_session_attrs":
                guard Self.sessionAttributes.contains(value) else {
                    throw fail(
                        "target_session_attrs must be one of any, read-write, read-only, primary, standby, prefer-standby"
                    )
                }
                networkParameters["target_session_attrs"] = value
            case "options":
                networkParameters["options"] = value
            default:
                // The key is safe to quote: the password never sits in the query part (an '@'
                // after a '?' was refused above).
                throw fail("unsupported query parameter '\(key)'")
            }
        }
    }

    private static func endpoint(_ text: Substring, _ fail: (String) -> PostgresError) throws(PostgresError) -> Endpoint
    {
        var authority = text
        var host: String
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
            host = try decode(authority, fail("host is badly percent-encoded"))
        }
        guard !host.isEmpty else { throw fail("host is missing") }
        var port = 5432
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else { throw fail("port must be 1-65535") }
            port = p
        }
        return Endpoint(host: host, port: port)
    }

    /// Keys whose value is a whole number of seconds (milliseconds for `tcp_user_timeout`);
    /// `keepalives` is 0 or 1.
    static let numericNetworkKeys: Set<String> = [
        "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    ]
    /// libpq 15's values.
    static let sessionAttributes: Set<String> = [
        "any", "read-write", "read-only", "primary", "standby", "prefer-standby",
    ]

    /// Whether an `@` comes after the first `/` or `?`: the sign of a user or password holding one
    /// of them unencoded (`postgres://u:pa?x=ss@host`). Split at that first `/` or `?`, the end of
    /// the password would become the host, the database or a query key, and reach error text
    /// ("unsupported query parameter 'x'") and the connect attempt. Refused whole; an `@` that
    /// belongs after the host (database, query value) is written `%40`, as RFC 3986 allows.
    static func unencodedDelimiterInUserinfo(_ afterScheme: Substring) -> Bool {
        guard let end = afterScheme.firstIndex(where: { $0 == "/" || $0 == "?" }) else { return false }
        return afterScheme[end...].contains("@")
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
        var params: [(String, String)] = [
            ("host", hosts.map(\.host).joined(separator: ",")),
            ("port", hosts.map { String($0.port) }.joined(separator: ",")),
        ]
        if let user { params.append(("user", user)) }
        if let password { params.append(("password", password)) }
        if let database { params.append(("dbname", database)) }
        if let sslMode { params.append(("sslmode", sslMode)) }
        if let sslRootCert { params.append(("sslrootcert", sslRootCert)) }
        if let sslCert { params.append(("sslcert", sslCert)) }
        if let sslKey { params.append(("sslkey", sslKey)) }
        if let connectTimeout { params.append(("connect_timeout", String(connectTimeout))) }
        for key in networkParameters.keys.sorted() { params.append((key, networkParameters[key]!)) }
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
        text += hosts.map { ($0.host.contains(":") ? "[\($0.host)]" : $0.host) + ":\($0.port)" }.joined(separator: ",")
        if let database { text += "/\(database)" }
        var query: [String] = []
        if let sslMode { query.append("sslmode=\(sslMode)") }
        if let sslRootCert { query.append("sslrootcert=\(sslRootCert)") }
        if let sslCert { query.append("sslcert=\(sslCert)") }
        if let sslKey { query.append("sslkey=\(sslKey)") }
        if let applicationName { query.append("application_name=\(applicationName)") }
        if let connectTimeout { query.append("connect_timeout=\(connectTimeout)") }
        for key in networkParameters.keys.sorted() { query.append("\(key)=\(networkParameters[key]!)") }
        if !query.isEmpty { text += "?" + query.joined(separator: "&") }
        return text
    }
}
