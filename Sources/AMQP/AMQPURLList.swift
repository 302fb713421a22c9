import Logging

extension AMQPURL {
    /// Parses an AMQP URL that may name several nodes of one cluster, comma-separated in the
    /// authority, as libpq does for PostgreSQL: `amqp://user:pass@node1:5672,node2,node3:5673/vhost`.
    /// Every node shares the scheme, the credentials and the vhost. One URL per node, in order;
    /// a URL with one host gives a list of one. Each is parsed by `init(parsing:)`, so its rules
    /// (and its errors, which never echo the password) hold for every node.
    ///
    /// Why in the URL: a quorum queue lives on a cluster of three nodes, and a daemon that knew
    /// only one of them stopped consuming when that node went down although two others served
    /// the queue.
    public static func parseList(_ text: String) throws(AMQPError) -> [AMQPURL] {
        guard let schemeEnd = text.range(of: "://") else { return [try AMQPURL(parsing: text)] }
        let scheme = text[..<schemeEnd.upperBound]
        let rest = text[schemeEnd.upperBound...]
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        let path = rest[authorityEnd...]
        // The password may contain ',' (and '@' only percent-encoded): the last '@' ends the userinfo.
        let hostsStart = authority.lastIndex(of: "@").map { authority.index(after: $0) } ?? authority.startIndex
        let userinfo = authority[..<hostsStart]
        let hosts = authority[hostsStart...].split(separator: ",", omittingEmptySubsequences: false)
        guard hosts.count > 1 else { return [try AMQPURL(parsing: text)] }
        var urls: [AMQPURL] = []
        for host in hosts {
            guard !host.isEmpty else {
                throw AMQPError(
                    .invalidURL, operation: "parse AMQP URL", detail: "empty host in the comma-separated host list")
            }
            urls.append(try AMQPURL(parsing: String(scheme + userinfo + host + path)))
        }
        return urls
    }
}

extension AMQPConnection {
    /// Connects to the first of `nodes` that answers, trying each once in order from
    /// `startingAt`; returns the connection and the index of the node. `failed` hears of each
    /// node that did not answer. Throws the last node's error when none did.
    public static func connect(
        anyOf nodes: [AMQPURL], startingAt start: Int = 0, tls: AMQPTLS? = nil, heartbeatSeconds: Int = 30,
        connectionName: String, logger: Logger, failed: (AMQPURL, any Error) -> Void = { _, _ in }
    ) async throws -> (connection: AMQPConnection, node: Int) {
        var lastError: (any Error)?
        for offset in 0..<nodes.count {
            let index = (start + offset) % nodes.count
            do {
                return (
                    try await connect(
                        nodes[index], tls: tls, heartbeatSeconds: heartbeatSeconds,
                        connectionName: connectionName, logger: logger), index
                )
            } catch {
                failed(nodes[index], error)
                lastError = error
            }
        }
        throw lastError ?? AMQPError(.invalidURL, operation: "connect", detail: "no broker node given")
    }
}
