import AMQP
import Foundation
import Logging
import ReferralWorker
import Testing

/// Several nodes of one RabbitMQ cluster in REFERRALD_AMQP_URL: parsed as one URL per node, and
/// a connection moves on to the next node when one is down.
@Suite struct AMQPNodeListTests {
    @Test func everyNodeSharesCredentialsSchemeAndVhost() throws {
        let nodes = try AMQPURL.parseList("amqps://ref:p,w@d@node1:5671,node2,[::1]:5673/prod")
        #expect(nodes.map(\.host) == ["node1", "node2", "::1"])
        #expect(nodes.map(\.port) == [5671, 5671, 5673])
        #expect(nodes.allSatisfy { $0.user == "ref" && $0.password == "p,w@d" && $0.vhost == "prod" && $0.useTLS })
        #expect(try AMQPURL.parseList("amqp://u:p@h/v") == [try AMQPURL(parsing: "amqp://u:p@h/v")])
    }

    @Test func anEmptyNodeIsRefusedWithoutThePassword() {
        #expect {
            try AMQPURL.parseList("amqp://u:hunter2@node1,,node3/v")
        } throws: { "\($0)".contains("empty host") && !"\($0)".contains("hunter2") }
    }

    /// The first node listed is down (nothing listens on its port): the daemon's connect reaches
    /// the broker through the second, and the next connect starts after the node that worked.
    @Test func aDownNodeIsSkipped() async throws {
        let live = try AMQPURL(parsing: TestServices.amqpURL)
        let dead = try Self.closedPort()
        func encoded(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: .alphanumerics)! }
        let credentials = "\(encoded(live.user)):\(encoded(live.password))"
        let vhost = encoded(live.vhost)
        var settings = try await Settings.load(
            configFile: nil,
            environment: [
                "REFERRALD_AMQP_URL": "amqp://\(credentials)@127.0.0.1:\(dead),127.0.0.1:\(live.port)/\(vhost)",
                "REFERRALD_DATABASE_URL": "postgres://u:p@127.0.0.1/d", "REFERRALD_PROGRAMS_FILE": "/dev/null",
            ])
        settings.heartbeatSeconds = 30
        let logger = Logger(label: "node-list-test")
        let first = try await settings.connectAMQP(name: "node list test", logger: logger)
        await first.close()
        // The rotation now starts at the node after the live one, which is the dead one again,
        // and still ends connected.
        let second = try await settings.connectAMQP(name: "node list test", logger: logger)
        await second.close()
    }

    /// A loopback port with nothing listening: bound, then closed.
    static func closedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw POSIXError(.EADDRINUSE) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
