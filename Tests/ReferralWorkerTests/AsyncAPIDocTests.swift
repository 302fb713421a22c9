import Foundation
import ReferralCore
import ReferralWorker
import Testing
import Yams

/// docs/asyncapi.yaml against the code: the types it says the worker receives and sends, and
/// the dead-letter codes, are the ones the worker's enums define. No broker, no database, no
/// shared contract needed (scripts/check-asyncapi.py checks the schemas against the contract).
@Suite("docs/asyncapi.yaml matches the code")
struct AsyncAPIDocTests {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The document, parsed, with JSON-pointer `$ref` resolution.
    struct Doc {
        let root: [String: Any]

        init() throws {
            let url = AsyncAPIDocTests.packageRoot.appendingPathComponent("docs/asyncapi.yaml")
            let text = try String(contentsOf: url, encoding: .utf8)
            root = try #require(try Yams.load(yaml: text) as? [String: Any], "docs/asyncapi.yaml is not a mapping")
        }

        /// The node at a local `#/a/b` pointer.
        func node(_ pointer: String) throws -> Any {
            var current: Any = root
            for raw in pointer.dropFirst(2).split(separator: "/", omittingEmptySubsequences: false) {
                let key = raw.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
                let map = try #require(current as? [String: Any], "\(pointer): \(key) is not in a mapping")
                current = try #require(map[key], "\(pointer): no \(key)")
            }
            return current
        }

        /// `value` with its `$ref` chain followed to the end.
        func resolve(_ value: Any) throws -> [String: Any] {
            var map = try #require(value as? [String: Any])
            var hops = 0
            while let ref = map["$ref"] as? String {
                hops += 1
                try #require(hops < 32, "$ref loop at \(ref)")
                map = try #require(try node(ref) as? [String: Any], "\(ref) is not a mapping")
            }
            return map
        }

        var operations: [String: [String: Any]] {
            get throws { try #require(root["operations"] as? [String: [String: Any]]) }
        }

        /// Names of the messages of the operations with this action on this channel.
        func messageNames(action: String, channel: String) throws -> [String] {
            var names: [String] = []
            for (_, op) in try operations where op["action"] as? String == action {
                let target = try #require((op["channel"] as? [String: Any])?["$ref"] as? String)
                guard target == "#/channels/\(channel)" else { continue }
                for message in try #require(op["messages"] as? [Any]) {
                    names.append(try #require(try resolve(message)["name"] as? String))
                }
            }
            return names
        }

        /// The `enum` of a schema, through any `$ref`.
        func enumeration(_ schema: Any) throws -> [String] {
            try #require(try resolve(schema)["enum"] as? [String])
        }
    }

    @Test func receivesExactlyTheConsumedTypes() throws {
        let doc = try Doc()
        let names = try doc.messageNames(action: "receive", channel: "referraldInbox")
        #expect(names.count == Set(names).count, "a type is received by two operations")
        #expect(Set(names) == Set(ConsumedType.allCases.map(\.rawValue)))
        // The upstream exchanges carry the same types, each on the exchange its prefix names.
        var carried: Set<String> = []
        for channel in ["provisioningEvents", "billingEvents", "crmEvents"] {
            let messages = try #require(
                try doc.resolve(doc.node("#/channels/\(channel)"))["messages"] as? [String: Any])
            for (_, message) in messages {
                let name = try #require(try doc.resolve(message)["name"] as? String)
                #expect(name.hasPrefix(String(channel.prefix(while: \.isLowercase)) + "."), "\(name) on \(channel)")
                carried.insert(name)
            }
        }
        #expect(carried == Set(ConsumedType.allCases.map(\.rawValue)))
    }

    @Test func sendsExactlyThePublishedTypes() throws {
        let doc = try Doc()
        let names = try doc.messageNames(action: "send", channel: "referralEvents")
        #expect(names.count == Set(names).count, "a type is sent by two operations")
        #expect(Set(names) == Set(PublishedType.allCases.map(\.rawValue)))
        let deadLetters = try doc.messageNames(action: "send", channel: "referraldDlx")
        #expect(deadLetters == ["deadLetter"])
    }

    @Test func everyTypeMessageIsRoutedByItsType() throws {
        let doc = try Doc()
        let messages = try #require(
            doc.root["components"].flatMap { $0 as? [String: Any] }?["messages"] as? [String: Any])
        let types = Set(ConsumedType.allCases.map(\.rawValue) + PublishedType.allCases.map(\.rawValue))
        var seen: Set<String> = []
        for (key, value) in messages {
            let message = try doc.resolve(value)
            let name = try #require(message["name"] as? String, "\(key) has no name")
            guard name != "deadLetter" else { continue }
            seen.insert(name)
            let amqp = try #require((message["bindings"] as? [String: Any])?["amqp"] as? [String: Any], "\(name)")
            #expect(amqp["x-routing-key"] as? String == name)
            #expect(amqp["x-delivery-mode"] as? Int == 2)
            let parts = try #require(try doc.resolve(message["payload"] as Any)["allOf"] as? [Any])
            let consts = try parts.compactMap { part in
                ((try doc.resolve(part)["properties"] as? [String: Any])?["type"] as? [String: Any])?["const"]
                    as? String
            }
            #expect(consts == [name], "\(name): payload type const")
        }
        #expect(seen == types)
    }

    @Test func deadLetterCodesAreTheClassifiers() throws {
        let doc = try Doc()
        let message = try doc.resolve(doc.node("#/components/messages/deadLetter"))
        let headers = try doc.resolve(try #require(message["headers"]))
        let properties = try #require(headers["properties"] as? [String: Any])
        let codes = try doc.enumeration(try #require(properties["x-referrald-error"]))
        #expect(codes == BadInputCode.allCases.map(\.rawValue))
        let detail = try doc.resolve(try #require(properties["x-referrald-detail"]))
        #expect(detail["maxLength"] as? Int == BadInput.maxDetailLength)
        for added in ["x-referrald-original-exchange", "x-referrald-original-routing-key"] {
            #expect(properties[added] != nil, "\(added) is not described")
        }
    }

    @Test func inboxArgumentsAreTheTopologys() throws {
        let doc = try Doc()
        let binding = try doc.resolve(doc.node("#/channels/referraldInbox/bindings/amqp"))
        let queue = try #require(binding["queue"] as? [String: Any])
        let arguments = try #require(queue["x-arguments"] as? [String: Any])
        #expect(arguments["x-queue-type"] as? String == "quorum")
        #expect((arguments["x-delivery-limit"] as? Int).map(Int64.init) == Topology.brokerDeliveryLimit)
        #expect(arguments["x-dead-letter-exchange"] as? String == "referrald.dlx")
    }
}
