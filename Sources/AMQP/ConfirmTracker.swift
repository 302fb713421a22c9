/// Publisher-confirm bookkeeping for one channel, kept free of IO so that its rules are tested
/// without a broker (ack/nack with `multiple`, out-of-order confirms, returns matched to the
/// right message).
///
/// In confirm mode the broker numbers the channel's publishes 1, 2, 3... and confirms them with
/// basic.ack / basic.nack whose `multiple` flag covers every earlier unconfirmed number too. A
/// mandatory message that no queue takes comes back as basic.return, sent *before* its ack,
/// without a sequence number: it is matched to the earliest unconfirmed, not yet returned message
/// with the same exchange, routing key, message id and body. Matching on the body too matters:
/// two messages with the same routing key can route differently (headers exchanges, bindings
/// changed in between), and a return matched to the wrong one would report a routed message as
/// lost and a lost one as confirmed.
struct ConfirmTracker {
    typealias BatchID = UInt64

    struct ReturnKey: Equatable {
        var exchange: String
        var routingKey: String
        var messageId: String?
        var body: [UInt8]
    }

    private struct Slot {
        var batch: BatchID
        var index: Int
        var key: ReturnKey
        var returned: PublishOutcome?
    }

    private struct Batch {
        var outcomes: [PublishOutcome?]
        var remaining: Int
    }

    /// The sequence number the next publish on this channel gets.
    private(set) var nextSequence: UInt64 = 1
    /// Every sequence number below this one is settled: `multiple` acks scan from here.
    private var lowWater: UInt64 = 1
    private var slots: [UInt64: Slot] = [:]
    private var batches: [BatchID: Batch] = [:]
    private var nextBatchID: BatchID = 1

    var isEmpty: Bool { batches.isEmpty }

    /// Registers messages that are about to be published, in this order, as the next sequence
    /// numbers of the channel.
    mutating func register(_ keys: [ReturnKey]) -> BatchID {
        let id = nextBatchID
        nextBatchID += 1
        batches[id] = Batch(outcomes: Array(repeating: nil, count: keys.count), remaining: keys.count)
        for (index, key) in keys.enumerated() {
            slots[nextSequence] = Slot(batch: id, index: index, key: key)
            nextSequence += 1
        }
        return id
    }

    /// basic.ack / basic.nack. Returns the batches that became complete.
    mutating func settle(tag: UInt64, multiple: Bool, ack: Bool) -> [BatchID] {
        // A tag beyond the last publish or a `multiple` below the low-water mark is a stale or
        // bogus confirm: it must not settle anything (and must not make us scan 2^64 numbers).
        let last = min(tag, nextSequence - 1)
        guard tag >= lowWater, last >= lowWater else { return [] }
        let range = multiple ? lowWater...last : tag...tag
        var completed: [BatchID] = []
        for sequence in range {
            guard let slot = slots.removeValue(forKey: sequence) else { continue }
            // Mutated in place through the dictionary: a copy of the batch taken out and put back
            // would copy its outcome array on every confirm, quadratic in the batch size.
            guard batches[slot.batch] != nil else { continue }
            batches[slot.batch]!.outcomes[slot.index] = ack ? (slot.returned ?? .confirmed) : .nacked
            batches[slot.batch]!.remaining -= 1
            if batches[slot.batch]!.remaining == 0 { completed.append(slot.batch) }
        }
        while lowWater < nextSequence, slots[lowWater] == nil { lowWater += 1 }
        return completed
    }

    /// basic.return. Returns false when no unconfirmed message matches (e.g. it belonged to a
    /// batch that already timed out).
    mutating func returned(_ key: ReturnKey, replyCode: Int, replyText: String) -> Bool {
        var sequence = lowWater
        while sequence < nextSequence {
            if var slot = slots[sequence], slot.returned == nil, slot.key == key {
                slot.returned = .returned(replyCode: replyCode, replyText: replyText)
                slots[sequence] = slot
                return true
            }
            sequence += 1
        }
        return false
    }

    /// Removes a complete batch and hands back one outcome per message, in publish order.
    mutating func takeOutcomes(_ id: BatchID) -> [PublishOutcome] {
        guard let batch = batches.removeValue(forKey: id) else { return [] }
        return batch.outcomes.map { $0 ?? .nacked }
    }

    /// Forgets a batch whose caller gave up (timeout); late confirms for it are ignored.
    mutating func abandon(_ id: BatchID) {
        batches[id] = nil
        slots = slots.filter { $0.value.batch != id }
        while lowWater < nextSequence, slots[lowWater] == nil { lowWater += 1 }
    }

    /// The channel closed: confirm numbering restarts at 1 on the next channel. Returns the
    /// batches that will never be confirmed.
    mutating func reset() -> [BatchID] {
        let pending = Array(batches.keys)
        self = ConfirmTracker(nextBatchID: nextBatchID)
        return pending
    }

    init() {}

    private init(nextBatchID: BatchID) { self.nextBatchID = nextBatchID }
}
