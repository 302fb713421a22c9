import ReferralCore

/// Which of a consumer channel's deliveries can be acknowledged, when several lanes settle them
/// out of order. Kept free of IO so that its rules are tested without a broker.
///
/// An ack with `multiple` settles every unacknowledged tag up to it, so it may only name a tag
/// once every earlier delivery is settled: acking past one still being applied would drop it in
/// a crash. And the tag it names must still be outstanding at the broker: one already settled on
/// its own (a requeue) makes the broker close the channel (406 unknown delivery tag).
struct AckLedger {
    /// Tags received and not yet passed, in tag order.
    private var outstanding: [UInt64] = []
    private var head = 0
    /// The tag the acked prefix reaches next. A channel numbers its deliveries 1, 2, 3...: a
    /// tag missing here was delivered to a read that has not handed it over yet. Two lanes'
    /// reads resume in either order, and a prefix that stepped over the later one's tags acked
    /// them before they were applied (lost in a crash); its own ack then named a tag the broker
    /// no longer had, and the channel closed (406 unknown delivery tag).
    private var next: UInt64 = 1
    /// Settled tags not yet passed by the acked prefix: true when it still needs the broker's ack,
    /// false when it was settled on its own (requeued).
    private var settled: [UInt64: Bool] = [:]

    /// Deliveries received and not yet covered by an ack or settled on their own.
    var unsettled: Int { outstanding.count - head }

    mutating func received(_ tags: some Sequence<UInt64>) {
        let end = outstanding.count
        outstanding.append(contentsOf: tags)
        // Usually in order; a read that resumed late brings earlier tags.
        if end > head, end < outstanding.count, outstanding[end] < outstanding[end - 1] {
            outstanding[head...].sort()
        }
    }

    /// Settles tags: `acked` need the broker's ack, `individually` were settled on their own.
    /// Returns the tag to ack with `multiple` when the settled prefix grew past one that needs it.
    mutating func settle(acked: some Sequence<UInt64>, individually: some Sequence<UInt64> = [UInt64]()) -> UInt64? {
        for tag in acked { settled[tag] = true }
        for tag in individually { settled[tag] = false }
        var target: UInt64?
        while head < outstanding.count, outstanding[head] == next,
            let needsAck = settled.removeValue(forKey: outstanding[head])
        {
            if needsAck { target = outstanding[head] }
            head += 1
            next += 1
        }
        // Drop the passed prefix now and then: the array would otherwise grow with every delivery.
        if head > 4096 {
            outstanding.removeFirst(head)
            head = 0
        }
        return target
    }
}

/// Picks a lane's next batch from the deliveries waiting, so that no two lanes apply events
/// with a key in common at the same time.
///
/// Two lanes whose batches share a story (a lead, an account, a code) queue on that story's
/// locks in PostgreSQL: the second waits for the first's commit, and the lanes run one after
/// the other again. Events of a key another lane holds therefore wait, and so does every later
/// event sharing a key with one that waits: the events of one key are applied in the order
/// they arrived, as with one lane. Correctness does not rest on this (the locks still order
/// whatever meets in the database); throughput does.
enum LaneSelection {
    struct Candidate {
        /// The keys of the event; empty for bad input, which touches no state.
        var keys: [String]
        var bytes: Int
    }

    /// Whether a lane takes a batch now. Lanes after the first join only while a backlog waits
    /// (a quarter of a batch or more): at a steady, moderate rate two lanes split the stream into
    /// batches of a few events, each paying a whole transaction's statements, and latency rose
    /// with PostgreSQL's load. One lane keeps up there; the second joins when deliveries pile up.
    static func joins(lane: Int, waiting: Int, batchSize: Int) -> Bool {
        lane == 0 || waiting >= max(1, batchSize / 4)
    }

    /// The indexes (increasing) of `candidates` to take, at most `max` whose bytes total at most
    /// `maxBytes` (a single larger one comes alone), skipping those that meet `blocked`.
    static func take(_ candidates: [Candidate], blocked: Set<String>, max: Int, maxBytes: Int) -> [Int] {
        var blocked = blocked
        var taken: [Int] = []
        var bytes = 0
        for (i, c) in candidates.enumerated() {
            if c.keys.contains(where: blocked.contains) {
                blocked.formUnion(c.keys)
                continue
            }
            if taken.count == max { break }
            if !taken.isEmpty, bytes + c.bytes > maxBytes { break }
            taken.append(i)
            bytes += c.bytes
        }
        return taken
    }
}

/// The referral code each story in flight was referred with, learnt from the deliveries in the
/// order they arrive: a lead names its code, an order joins the lead to the friend's account.
///
/// A friend's later events (install, activation, invoice) name only the account, yet they move
/// their referrer's rankings (the cap of the year, the leads of the day), which the transaction
/// locks. Two lanes each holding a friend of one referrer, often with a few thousand
/// referrers, queued on those locks. With the code as a dispatch key they go to one lane.
/// A story whose lead came before this process started has no entry: it is only applied
/// without that help (the locks still order it). Bounded: two generations of `capacity`
/// entries, the older dropped when the newer fills.
struct StoryCodes {
    let capacity: Int
    private var current: [String: String] = [:]
    private var previous: [String: String] = [:]

    init(capacity: Int = 20_000) { self.capacity = capacity }

    /// Learns from one event's facts and returns the code keys (`c:<code>`) of its story.
    mutating func keys(for facts: [Fact]) -> [String] {
        var codes: [String] = []
        for fact in facts {
            switch fact {
            case .leadCreated(let lead, _, let code?, _, _, _):
                remember("l:\(lead)", code)
                codes.append(code)
            case .orderPlaced(let lead, let account, _):
                if let code = lookup("l:\(lead)") {
                    remember("a:\(account)", code)
                    codes.append(code)
                }
            default:
                if let lead = fact.leadId, let code = lookup("l:\(lead)") { codes.append(code) }
                if let account = fact.accountId, let code = lookup("a:\(account)") { codes.append(code) }
            }
        }
        return codes.map { "c:\($0)" }
    }

    private func lookup(_ key: String) -> String? { current[key] ?? previous[key] }

    private mutating func remember(_ key: String, _ code: String) {
        if current.count >= capacity {
            previous = current
            current = [:]
        }
        current[key] = code
    }
}

enum DispatchKeys {
    /// The keys that decide which lane may apply an event (`LaneSelection`): what its
    /// transaction locks or claims. The event's id (a redelivered duplicate waits on the inbox's
    /// unique index), its lead, its accounts, the reward it settles, its story's code
    /// (`StoryCodes`: the referrer's rankings), the friend's household and contact (claims that
    /// any referrer's friends may share), and the referrer keys its facts lock.
    static func of(_ e: InboundEvent, stories: inout StoryCodes) -> [String] {
        var keys = ["e:\(e.source)/\(e.id)"]
        let facts = e.lifecycleFacts
        for f in facts {
            if let lead = f.leadId { keys.append("l:\(lead)") }
            if let account = f.accountId { keys.append("a:\(account)") }
            if let reward = f.rewardId { keys.append("w:\(reward)") }
            switch f {
            case .leadCreated(_, _, _, let household, let contact, _),
                .serviceActivated(_, _, let household, let contact, _):
                if let household { keys.append("h:\(household)") }
                if let contact { keys.append("k:\(contact)") }
            default: break
            }
        }
        keys += stories.keys(for: facts)
        if let account = e.accountId(fact: facts.first) { keys.append("a:\(account)") }
        keys += Lifecycle.referrerLockKeys(facts)
        return Array(Set(keys))
    }
}
