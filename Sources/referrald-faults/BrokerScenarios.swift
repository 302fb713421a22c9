import AMQP
import Foundation

// MARK: the broker: restarted, its connections closed, the DLQ deleted, a cluster node stopped

extension Scenarios {
    static func brokerRestart(events: Int, services: Services) -> Scenario {
        Scenario(name: "broker-restart", events: events) { ctx in
            try await ctx.at(0.4)
            try services.checkRabbitIdentity()
            _ = try services.rabbitmqctl(["stop_app"])
            // While the broker is away the outbox may only grow: nothing is lost, it waits.
            var peak: Int64 = 0
            for _ in 0..<8 {
                peak = max(
                    peak,
                    (try? await ctx.world.count("SELECT count(*) FROM outbox WHERE published_at IS NULL")) ?? 0)
                try await Task.sleep(for: .seconds(1))
            }
            _ = try services.rabbitmqctl(["start_app"])
            ctx.notes.append("broker down 8 s; outbox unpublished peak \(peak)")
            return 1
        }
    }

    static func brokerClose(events: Int, services: Services) -> Scenario {
        Scenario(name: "broker-close", events: events) { ctx in
            var closed = 0
            for moment in [0.25, 0.5, 0.75] {
                try await ctx.at(moment)
                closed += try closeDaemonConnections(services)
            }
            return closed
        }
    }

    /// The DLQ deleted under load (and with it its binding): the broker returns every dead
    /// letter. Valid events must keep flowing, the refused dead letters wait in the parked
    /// queue, and once the DLQ is back every one of them reaches it with its reason
    /// (HostileInput.check, as in hostile-input).
    static func dlqDeleted(events: Int) -> Scenario {
        Scenario(name: "dlq-deleted", events: events, hostile: true) { ctx in
            let world = ctx.world
            let settings = world.settings
            let amqp = try await world.services.connectBroker(
                heartbeatSeconds: 30,
                connectionName: "referrald-faults dlq", logger: quietLogger)
            defer { Task { await amqp.close() } }
            // Deleted before the paced load, in which the hostile input travels: a dead letter
            // already in the DLQ would go with it, and the check would count it as lost.
            try await amqp.deleteQueue(settings.deadLetterQueue)
            try await ctx.at(0.05)
            let inboxBefore = try await world.count("SELECT count(*) FROM inbox")
            var parkedPeak: UInt32 = 0
            let sampler = Task {
                var peak: UInt32 = 0
                while !Task.isCancelled {
                    peak = max(peak, await world.queueDepth(settings.parkedQueue) ?? 0)
                    try? await Task.sleep(for: .milliseconds(200))
                }
                return peak
            }
            try await ctx.at(0.5)
            sampler.cancel()
            parkedPeak = await sampler.value
            let applied = try await world.count("SELECT count(*) FROM inbox") - inboxBefore
            _ = try await amqp.declareQueue(
                settings.deadLetterQueue, durable: true, arguments: ["x-queue-type": .string("quorum")])
            try await amqp.bindQueue(
                settings.deadLetterQueue, exchange: settings.deadLetterExchange, routingKey: "")
            let restoredAt = ContinuousClock.now
            var drained = false
            while ContinuousClock.now < restoredAt + .seconds(120) {
                if await world.queueDepth(settings.parkedQueue) == 0 {
                    drained = true
                    break
                }
                try await Task.sleep(for: .milliseconds(200))
            }
            ctx.notes.append(
                "DLQ gone for the first half of the load: \(applied) valid events applied meanwhile, \(parkedPeak) dead letters parked; "
                    + "parked queue empty \(ContinuousClock.now - restoredAt) after the DLQ was back")
            if applied == 0 { ctx.failures.append("no valid event was applied while the DLQ was gone") }
            if parkedPeak == 0 { ctx.failures.append("no dead letter was parked while the DLQ was gone") }
            if !drained { ctx.failures.append("parked dead letters did not reach the DLQ within 120 s") }
            return 1
        }
    }

    /// A three-node RabbitMQ cluster, the daemon given all three nodes: the node that leads the
    /// inbox's quorum queue is stopped under load and started again 10 s later. The queue elects
    /// another leader among the two left (a majority), the daemon's connections to the stopped
    /// node break and reconnect to the next node of its URL, and nothing is lost or doubled.
    static func clusterNodeDown(_ cluster: Services, events: Int) -> Scenario {
        Scenario(name: "cluster-node-down", events: events, services: cluster) { ctx in
            try await ctx.at(0.4)
            let queue = ctx.world.settings.inboxQueue
            let vhost = try AMQPURL.parseList(cluster.amqpURL)[0].vhost
            let leaders = try cluster.rabbitmqctl(["list_queues", "-p", vhost, "--no-table-headers", "name", "leader"])
            guard
                let line = leaders.split(separator: "\n").first(where: {
                    $0.split(separator: "\t").first.map(String.init) == queue
                }),
                let leader = line.split(separator: "\t").last.map(String.init)
            else { throw SuiteError("no leader found for \(queue) in: \(leaders)") }
            var node = cluster
            node.node = leader
            let stoppedAt = ContinuousClock.now
            _ = try node.rabbitmqctl(["stop_app"])
            try await Task.sleep(for: .seconds(10))
            _ = try node.rabbitmqctl(["start_app"])
            ctx.notes.append("stopped \(leader), the inbox's leader, for \(ContinuousClock.now - stoppedAt)")
            return 1
        }
    }

    /// Closes every broker connection named by the daemon (`referrald consumer|publisher`),
    /// as an operator's `close_connection` or a load balancer's idle cut would.
    static func closeDaemonConnections(_ services: Services) throws -> Int {
        let listing = try services.rabbitmqctl(["list_connections", "name", "client_properties", "--formatter", "json"])
        guard let rows = try JSONSerialization.jsonObject(with: Data(listing.utf8)) as? [[String: Any]] else {
            return 0
        }
        var closed = 0
        for row in rows {
            guard let name = row["name"] as? String else { continue }
            let properties = "\(row["client_properties"] ?? "")"
            // The consumer is the process's; each lane has a publisher (`referrald-N publisher`).
            guard
                properties.contains("referrald consumer")
                    || properties.range(of: #"referrald(-[0-9]+)? publisher"#, options: .regularExpression) != nil
            else { continue }
            _ = try? services.rabbitmqctl(["close_connection", name, "fault suite: forced close"])
            closed += 1
        }
        return closed
    }
}
