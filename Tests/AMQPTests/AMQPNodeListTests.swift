import Testing

@testable import AMQP

/// Several nodes of one RabbitMQ cluster in one URL: parsed as one URL per node. (Moving on to
/// the next node when one is down needs a broker: IntegrationTests' `AMQPNodeFailoverTests`.)
@Suite("AMQPURL node lists (no broker)")
struct AMQPNodeListTests {
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
}
