import AMQP
import Foundation
import Logging
import ReferralWorker
import Testing

/// Several nodes of one RabbitMQ cluster in REFERRALD_AMQP_URL: a connection moves on to the
/// next node when one is down. (Parsing the list needs no broker: AMQPTests' `AMQPNodeListTests`.)
@Suite struct AMQPNodeFailoverTests {
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
