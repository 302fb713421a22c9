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
                throw AMQPError(.invalidURL, operation: "parse AMQP URL", detail: "empty host in the comma-separated host list")
            }
            urls.append(try AMQPURL(parsing: String(scheme + userinfo + host + path)))
        }
        return urls
    }
}
