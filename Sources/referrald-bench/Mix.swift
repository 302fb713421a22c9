import ReferralCore
import ReferralTestKit

/// One message of a workload: where it goes, its body, and the key of the downstream event it
/// should cause (nil when it causes none the bench can attribute to it).
struct BenchMessage: Sendable {
    var routingKey: String
    var body: [UInt8]
    var key: String?
}

/// The contract's realistic mix. Most traffic is friends' stories told in order — lead (85 %
/// with a referrer's code), order, install scheduled and completed, activation, speed test,
/// first invoice paid, sometimes a ticket, an overdue invoice or a cancellation — interleaved
/// across stories in flight (2,000 unless `--stories` says otherwise), as events of many
/// customers arrive together. Between them, customers without a referral activate (each gets a
/// code), and 0.5 % of messages are invalid (dead-lettered).
///
/// The stories are dated so that a referral's 30-day hold has already passed when its
/// activation arrives: activations qualify at once and issue rewards, the heaviest path.
struct MixGenerator {
    let prefix: String
    let referrerCodes: [String]
    let now: Instant
    /// The popular referrer's code, and the share of friends' stories that carry it.
    let hotCode: String?
    let hotShare: Double
    let storiesInFlight: Int
    var rng: SeededGenerator

    init(
        prefix: String, referrerCodes: [String], now: Instant, seed: UInt64, hotCode: String? = nil,
        hotShare: Double = 0,
        storiesInFlight: Int = 2000
    ) {
        self.prefix = prefix
        self.storiesInFlight = max(1, storiesInFlight)
        self.referrerCodes = referrerCodes
        self.now = now
        self.hotCode = hotCode
        self.hotShare = hotShare
        rng = SeededGenerator(state: seed)
    }

    private enum Step {
        case lead, order, scheduled, installed, activated, speedtest, ticketOpened, ticketResolved,
            overdue, paid, cancelled
    }

    private struct Story {
        var number: Int
        var code: String?
        var start: Instant
        var steps: [Step]
        var next = 0
    }

    private var eventNumber = 0
    private var storyNumber = 0
    /// Stories in flight carry over from one `generate` call to the next: a backlog is
    /// generated in chunks and must read as one stream.
    private var inFlight: [Story] = []

    mutating func generate(count: Int) -> [BenchMessage] {
        var out: [BenchMessage] = []
        out.reserveCapacity(count)
        while inFlight.count < storiesInFlight { inFlight.append(newStory()) }
        while out.count < count {
            let roll = Int.random(in: 0..<1000, using: &rng)
            if roll < 5 {
                out.append(invalid())
            } else if roll < 85 {
                storyNumber += 1
                out.append(
                    activation(
                        account: "\(prefix)-c\(storyNumber)", lead: nil,
                        at: now - .days(Int64.random(in: 1...300, using: &rng)), household: nil))
            } else {
                let i = Int.random(in: 0..<inFlight.count, using: &rng)
                out.append(message(inFlight[i], step: inFlight[i].steps[inFlight[i].next]))
                inFlight[i].next += 1
                if inFlight[i].next == inFlight[i].steps.count { inFlight[i] = newStory() }
            }
        }
        return out
    }

    /// The last message of a backlog: its `referral.code.issued` on the observer queue shows
    /// that the worker got through everything before it (one consumer, FIFO queue, outbox
    /// relayed after each commit).
    func sentinel() -> (account: String, message: BenchMessage) {
        let account = "\(prefix)-sentinel"
        let body = envelope(
            id: "\(prefix)-sentinel", source: "provisioning", type: "provisioning.service.activated",
            time: now, subject: account,
            data: #""account_id":"\#(account)","activated_at":"\#(now.rfc3339)","segment":"consumer""#)
        return (account, BenchMessage(routingKey: "provisioning.service.activated", body: body, key: "code:\(account)"))
    }

    private mutating func newStory() -> Story {
        storyNumber += 1
        var code = Int.random(in: 0..<100, using: &rng) < 85 ? referrerCodes.randomElement(using: &rng) : nil
        if code != nil, let hotCode, Double.random(in: 0..<1, using: &rng) < hotShare / 0.85 { code = hotCode }
        var steps: [Step] = [.lead, .order, .scheduled, .installed, .activated, .speedtest, .paid]
        let roll = Int.random(in: 0..<100, using: &rng)
        if roll < 30 { steps += [.ticketOpened, .ticketResolved] }
        if roll >= 90 && roll < 95 { steps.append(.overdue) }
        if roll >= 95 { steps.append(.cancelled) }
        let start = now - .days(50) + .seconds(Int64.random(in: 0...(5 * 86_400), using: &rng))
        return Story(number: storyNumber, code: code, start: start, steps: steps)
    }

    private mutating func message(_ s: Story, step: Step) -> BenchMessage {
        let lead = "\(prefix)-l\(s.number)"
        let account = "\(prefix)-a\(s.number)"
        let household = "\(prefix)-h\(s.number)"
        let referred = s.code != nil
        func at(_ days: Int64) -> Instant { s.start + .days(days) }
        switch step {
        case .lead:
            let code = s.code.map { #","referral_code":"\#($0)""# } ?? ""
            return event(
                "provisioning.lead.created", source: "provisioning", time: at(0), subject: lead,
                data:
                    #""lead_id":"\#(lead)"\#(code),"household_id":"\#(household)","contact_hash":"sha256:\#(prefix)\#(s.number)","segment":"consumer","channel":"web""#,
                key: referred ? "offer:\(lead)" : nil)
        case .order:
            return event(
                "provisioning.order.placed", source: "provisioning", time: at(1), subject: account,
                data: #""lead_id":"\#(lead)","account_id":"\#(account)""#,
                key: referred ? "status:\(lead):ordered" : nil)
        case .scheduled:
            return event(
                "provisioning.install.scheduled", source: "provisioning", time: at(1), subject: account,
                data: #""account_id":"\#(account)","scheduled_for":"\#(at(5).rfc3339)""#, key: nil)
        case .installed:
            return event(
                "provisioning.install.completed", source: "provisioning", time: at(5), subject: account,
                data: #""account_id":"\#(account)","completed_at":"\#(at(5).rfc3339)""#,
                key: referred ? "status:\(lead):installed" : nil)
        case .activated:
            return activation(account: account, lead: lead, at: at(6), household: household)
        case .speedtest:
            return event(
                "provisioning.speedtest.completed", source: "provisioning", time: at(7), subject: account,
                data: #""account_id":"\#(account)","measured_down_mbps":487.3,"plan_down_mbps":500"#, key: nil)
        case .ticketOpened:
            return event(
                "crm.ticket.opened", source: "crm", time: at(8), subject: account,
                data: #""account_id":"\#(account)","ticket_id":"\#(prefix)-t\#(s.number)""#, key: nil)
        case .ticketResolved:
            return event(
                "crm.ticket.resolved", source: "crm", time: at(9), subject: account,
                data: #""account_id":"\#(account)","ticket_id":"\#(prefix)-t\#(s.number)","csat":5"#, key: nil)
        case .overdue:
            return event(
                "billing.invoice.overdue", source: "billing", time: at(40), subject: account,
                data: #""account_id":"\#(account)","invoice_id":"\#(prefix)-i\#(s.number)-2","days_overdue":7"#,
                key: nil)
        case .paid:
            return event(
                "billing.invoice.paid", source: "billing", time: at(36), subject: account,
                data:
                    #""account_id":"\#(account)","invoice_id":"\#(prefix)-i\#(s.number)-1","amount_minor":4999,"currency":"USD","sequence":1,"credits_minor":0"#,
                key: nil)
        case .cancelled:
            return event(
                "provisioning.service.cancelled", source: "provisioning", time: at(42), subject: account,
                data: #""account_id":"\#(account)","cancelled_at":"\#(at(42).rfc3339)","reason":"moving""#, key: nil)
        }
    }

    private mutating func activation(account: String, lead: String?, at: Instant, household: String?) -> BenchMessage {
        let hh = household.map { #","household_id":"\#($0)""# } ?? ""
        return event(
            "provisioning.service.activated", source: "provisioning", time: at, subject: account,
            data:
                #""account_id":"\#(account)","activated_at":"\#(at.rfc3339)"\#(hh),"segment":"consumer","plan_id":"fiber-500""#,
            key: "code:\(account)")
    }

    private mutating func invalid() -> BenchMessage {
        eventNumber += 1
        let bodies = [
            "{\"specversion\":\"1.0\",\"id\":",
            #"{"specversion":"1.0","id":"\#(prefix)-e\#(eventNumber)","source":"crm","type":"crm.modem.rebooted","time":"2026-11-23T10:00:00Z","data":{}}"#,
            #"{"specversion":"1.0","id":"\#(prefix)-e\#(eventNumber)","source":"provisioning","type":"provisioning.service.activated","time":"2026-11-23T10:00:00Z","data":{"account_id":"a"}}"#,
            #"{"data":{"account_id":"acct-1"}}"#,
        ]
        return BenchMessage(
            routingKey: "provisioning.install.completed",
            body: Array(bodies[eventNumber % bodies.count].utf8), key: nil)
    }

    private mutating func event(
        _ type: String, source: String, time: Instant, subject: String, data: String,
        key: String?
    ) -> BenchMessage {
        eventNumber += 1
        return BenchMessage(
            routingKey: type,
            body: envelope(
                id: "\(prefix)-e\(eventNumber)", source: source, type: type,
                time: time, subject: subject, data: data), key: key)
    }

    private func envelope(id: String, source: String, type: String, time: Instant, subject: String, data: String)
        -> [UInt8]
    {
        Array(
            #"{"specversion":"1.0","id":"\#(id)","source":"\#(source)","type":"\#(type)","time":"\#(time.rfc3339)","subject":"\#(subject)","datacontenttype":"application/json","data":{\#(data)}}"#
                .utf8)
    }
}
