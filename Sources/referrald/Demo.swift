import AMQP
import ArgumentParser
import Foundation
import Logging
import ReferralCore
import ReferralWorker

/// `referrald demo`: the referral story played against a running daemon, as provisioning would
/// tell it, with every event the daemon publishes printed as it arrives. What a new user needs
/// to see the daemon do its job, and what CI runs (scripts/demo.sh) to see the whole pipeline
/// reach both rewards.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Play a referral story against the running daemon and print the events it publishes as they arrive.",
        discussion: """
            Publishes on the upstream exchanges, as provisioning would: a referrer's activation; a
            friend's lead with the code the referrer was given; the friend's order, install and
            activation. Waits after each for the daemon's answer, then for both rewards once the
            program's hold has passed: give the daemon a programs file whose hold is seconds
            (scripts/demo-programs.yaml), and a vhost and database of its own. scripts/demo.sh
            sets all of that up. The ids carry a random run id, so runs never meet each other.
            Exits 0 once both rewards were issued, 1 when an answer did not come within --timeout.
            """)

    @OptionGroup var options: CommonOptions

    @Option(help: "Seconds the whole story may take.")
    var timeout: Int = 120

    @Flag(help: "Also print the JSON of each event the daemon publishes.")
    var bodies = false

    func run() async throws {
        let settings = try await options.settings(requireAll: false)
        guard !settings.amqpURL.isEmpty else {
            throw ValidationError("REFERRALD_AMQP_URL is required: the broker (vhost) the daemon consumes from")
        }
        let story = try await DemoStory.connect(
            settings: settings, deadline: .now + .seconds(timeout),
            printBodies: bodies, logger: options.logger(settings))
        do {
            try await story.play()
            await story.close()
        } catch let error as DemoError {
            await story.close()
            FileHandle.standardError.write(Data("referrald demo: \(error)\n".utf8))
            throw ExitCode.failure
        } catch {
            await story.close()
            throw error
        }
    }
}

struct DemoError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One run of the story: its own ids, a producer connection and an observer queue bound to
/// everything the daemon publishes.
final class DemoStory: Sendable {
    let settings: Settings
    let producer: AMQPConnection
    let observer: AMQPConnection
    let observerQueue: String
    let run: String
    let started = ContinuousClock.now
    let deadline: ContinuousClock.Instant
    let printBodies: Bool

    var referrer: String { "acct-\(run)-ana" }
    var friend: String { "acct-\(run)-ben" }
    var lead: String { "lead-\(run)-ben" }

    private init(
        settings: Settings, producer: AMQPConnection, observer: AMQPConnection, observerQueue: String,
        run: String, deadline: ContinuousClock.Instant, printBodies: Bool
    ) {
        self.settings = settings
        self.producer = producer
        self.observer = observer
        self.observerQueue = observerQueue
        self.run = run
        self.deadline = deadline
        self.printBodies = printBodies
    }

    static func connect(
        settings: Settings, deadline: ContinuousClock.Instant, printBodies: Bool,
        logger: Logger
    ) async throws -> DemoStory {
        let run = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let producer = try await settings.connectAMQP(name: "referrald demo \(run)", logger: logger)
        try await producer.enableConfirms()
        let observer = try await settings.connectAMQP(name: "referrald demo \(run) observer", logger: logger)
        // x-expires: a demo killed before it deletes its queue leaves nothing behind for long.
        let queue = "referrald.demo.\(run)"
        try await observer.declareQueue(queue, durable: false, arguments: ["x-expires": .int(300_000)])
        try await observer.bindQueue(queue, exchange: settings.eventsExchange, routingKey: "#")
        try await observer.consume(queue: queue, prefetch: 100)
        return DemoStory(
            settings: settings, producer: producer, observer: observer, observerQueue: queue, run: run,
            deadline: deadline, printBodies: printBodies)
    }

    func close() async {
        try? await observer.deleteQueue(observerQueue)
        await observer.close()
        await producer.close()
    }

    func play() async throws {
        say(
            "run \(run): vhost \((try? AMQPURL(parsing: settings.amqpURL).vhost) ?? "?"), events from \(settings.eventsExchange)"
        )
        let plan = "fiber-500"

        try await publish(
            "provisioning.service.activated", subject: referrer,
            [
                ("account_id", .string(referrer)), ("activated_at", .string(SystemClock().now().rfc3339)),
                ("household_id", .string("hh-\(run)-1")), ("contact_hash", .string(contactHash(1))),
                ("segment", .string("consumer")), ("plan_id", .string(plan)),
            ], note: "Ana's service goes live: she becomes a customer who can refer")
        let issued = try await awaitEvent("Ana's referral code") { type, data in
            type == PublishedType.codeIssued.rawValue && data["account_id"]?.stringValue == self.referrer
        }
        guard let code = issued["code"]?.stringValue else { throw DemoError("referral.code.issued without a code") }

        // Typed by the friend in lower case: the daemon normalises what people type.
        try await publish(
            "provisioning.lead.created", subject: lead,
            [
                ("lead_id", .string(lead)), ("referral_code", .string(code.lowercased())),
                ("household_id", .string("hh-\(run)-2")), ("contact_hash", .string(contactHash(2))),
                ("segment", .string("consumer")), ("channel", .string("web")),
            ], note: "Ben signs up on the web with Ana's code, typed as \(code.lowercased())")
        let offer = try await awaitEvent("the friend offer") { type, data in
            type == PublishedType.friendOfferGranted.rawValue && data["lead_id"]?.stringValue == self.lead
        }
        guard let referral = offer["referral_id"]?.stringValue else {
            throw DemoError("friend offer without a referral_id")
        }

        try await publish(
            "provisioning.order.placed", subject: friend,
            [
                ("lead_id", .string(lead)), ("account_id", .string(friend)),
            ], note: "Ben orders: his lead becomes account \(friend)")
        try await awaitStage("ordered", of: referral)

        try await publish(
            "provisioning.install.completed", subject: friend,
            [
                ("account_id", .string(friend)), ("completed_at", .string(SystemClock().now().rfc3339)),
            ], note: "the technician installs Ben's line")
        try await awaitStage("installed", of: referral)

        let activation = ContinuousClock.now
        try await publish(
            "provisioning.service.activated", subject: friend,
            [
                ("account_id", .string(friend)), ("activated_at", .string(SystemClock().now().rfc3339)),
                ("household_id", .string("hh-\(run)-2")), ("contact_hash", .string(contactHash(2))),
                ("segment", .string("consumer")), ("plan_id", .string(plan)),
            ], note: "Ben's service goes live: the hold starts")
        try await awaitStage("activated", of: referral)

        say("waiting for the hold to end (the program's qualify.hold) and both rewards")
        var rewards: [String: JSONObject] = [:]
        _ = try await awaitEvent("both rewards of \(referral)") { type, data in
            if type == PublishedType.rewardIssued.rawValue, data["referral_id"]?.stringValue == referral,
                let beneficiary = data["beneficiary"]?.stringValue
            {
                rewards[beneficiary] = data
            }
            return rewards["referrer"] != nil && rewards["friend"] != nil
        }
        // The stage change to `rewarded` is published with the rewards: show it too.
        try await drain(for: .seconds(1))
        let held = ContinuousClock.now - activation
        func amount(_ who: String) -> String {
            "\(text(rewards[who]?["amount_minor"])) \(text(rewards[who]?["currency"])) (minor units)"
        }
        write(
            "both rewards issued: \(amount("referrer")) to the referrer \(referrer), \(amount("friend")) to the friend "
                + "\(friend), \(Int(held.components.seconds))s after the friend's activation")
    }

    // MARK: Publishing, as provisioning does

    private func publish(_ type: String, subject: String, _ data: [(String, JSONValue)], note: String) async throws {
        let id = UUID().uuidString.lowercased()
        let body = JSONValue.object(
            JSONObject([
                ("specversion", .string("1.0")), ("id", .string(id)), ("source", .string("provisioning")),
                ("type", .string(type)), ("time", .string(SystemClock().now().rfc3339)), ("subject", .string(subject)),
                ("datacontenttype", .string("application/json")), ("data", .object(JSONObject(data))),
            ])
        ).encoded()
        // The daemon would dead-letter a body the contract refuses, and the story would wait for
        // an answer that never comes: check with the daemon's own classifier first.
        if case .failure(let bad) = classify(body: body) {
            throw DemoError("the demo's \(type) does not follow the contract: \(bad)")
        }
        let exchange = settings.upstreamExchanges[0]
        let outcome = try await producer.publish([
            OutgoingMessage(
                exchange: exchange, routingKey: type, body: body, messageId: id,
                contentType: "application/cloudevents+json", persistent: true, mandatory: true)
        ])
        guard outcome == [.confirmed] else {
            throw DemoError(
                "the broker did not route \(type) to a queue (\(outcome)): run `referrald topology` on this vhost")
        }
        say("→ \(type.padding(toLength: 32, withPad: " ", startingAt: 0)) \(note)")
    }

    /// Distinct per person: the same-contact fraud rule would reject a friend sharing Ana's.
    private func contactHash(_ person: Int) -> String { "sha256:demo-\(run)-\(person)" }

    // MARK: Observing what the daemon publishes

    private func awaitStage(_ stage: String, of referral: String) async throws {
        _ = try await awaitEvent("\(referral) to reach `\(stage)`") { type, data in
            type == PublishedType.statusChanged.rawValue && data["referral_id"]?.stringValue == referral
                && data["to"]?.stringValue == stage
        }
    }

    /// Prints this run's published events as they arrive until `done` accepts one; returns its data.
    private func awaitEvent(_ what: String, _ done: (String, JSONObject) -> Bool) async throws -> JSONObject {
        while ContinuousClock.now < deadline {
            for (type, data) in try await nextEvents(wait: .milliseconds(200)) where done(type, data) {
                return data
            }
        }
        throw DemoError(
            "no \(what) within the timeout: is `referrald run` consuming \(settings.inboxQueue) on this vhost, "
                + "with a programs file whose hold is seconds? (scripts/demo.sh starts one)")
    }

    private func drain(for duration: Duration) async throws {
        let end = ContinuousClock.now + duration
        while ContinuousClock.now < end { _ = try await nextEvents(wait: .milliseconds(100)) }
    }

    /// What arrived, printed; events of other runs on the same vhost are skipped unprinted.
    private func nextEvents(wait: Duration) async throws -> [(String, JSONObject)] {
        let deliveries = try await observer.nextDeliveries(max: 100, wait: wait)
        if let last = deliveries.last { try await observer.ack(last.deliveryTag, multiple: true) }
        var events: [(String, JSONObject)] = []
        for delivery in deliveries {
            guard let event = try? JSONValue.parse(delivery.body).objectValue,
                let data = event["data"]?.objectValue, String(decoding: delivery.body, as: UTF8.self).contains(run)
            else { continue }
            let type = event["type"]?.stringValue ?? delivery.routingKey
            say("  ← \(type.padding(toLength: 30, withPad: " ", startingAt: 0)) \(describe(type, data))")
            if printBodies { write(String(decoding: delivery.body, as: UTF8.self)) }
            events.append((type, data))
        }
        return events
    }

    private func describe(_ type: String, _ d: JSONObject) -> String {
        switch PublishedType(rawValue: type) {
        case .codeIssued:
            return "\(text(d["account_id"])) gets code \(text(d["code"])), to share as \(text(d["share_url"]))"
        case .friendOfferGranted:
            let reward = d["friend_reward"]?.objectValue
            return "\(text(d["referral_id"])): Ben is offered priority install (\(text(d["priority_install"]))) and "
                + "\(text(reward?["amount_minor"])) \(text(reward?["currency"])) \(text(reward?["kind"]))"
        case .statusChanged:
            return "\(text(d["referral_id"])): \(d["from"]?.stringValue ?? "new") → \(text(d["to"]))"
                + (d["reason"]?.stringValue.map { " (\($0))" } ?? "")
        case .rewardIssued:
            return "\(text(d["reward_id"])): \(text(d["amount_minor"])) \(text(d["currency"])) \(text(d["kind"])) "
                + "to \(text(d["account_id"])), the \(text(d["beneficiary"]))"
        case .askDue:
            return "\(text(d["account_id"])) is asked to refer (\(text(d["moment"]))) with code \(text(d["code"]))"
        case .rewardReversed:
            return "\(text(d["reward_id"])) reversed: \(text(d["reason"]))"
        case .leadFollowupDue:
            return "\(text(d["referral_id"])) stalled in \(text(d["stage"]))"
        case nil:
            return ""
        }
    }

    private func text(_ value: JSONValue?) -> String {
        switch value {
        case .string(let s)?: s
        case .number(let n)?: n.lexeme
        case .bool(let b)?: b ? "yes" : "no"
        case .null?, nil: "none"
        case .array?, .object?: "…"
        }
    }

    private func say(_ line: String) {
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        write(String(format: "%6.1fs ", seconds) + line)
    }

    /// Unbuffered: in a pipe (CI, `| tee`) print's buffer would hold the lines until the end.
    private func write(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}
