/// Things that happen by themselves when time passes: a hold reaching its deadline, a grant
/// becoming effective, a grant expiring. A binary min-heap ordered by instant, then by the
/// order the events were scheduled, so processing is deterministic. An entry whose hold was
/// resolved or extended, or whose grant ended, is not removed at once; it is skipped when it
/// comes up, and the ledger drops such entries in bulk (`compacted(keeping:)`) once they are the majority, so
/// the queue stays proportional to what is really pending.
struct EventQueue: Hashable, Sendable {
    enum Kind: Hashable, Sendable {
        case holdDeadline(HoldID)
        case grantEffective(slot: Int32, grant: GrantID)
        case grantExpiry(slot: Int32, grant: GrantID)
        /// The end of a subscription's period: rollover, then the next period's credits.
        case periodBoundary(account: Int32, end: Instant)
        /// A pooled subscription's seat count changing at a set time.
        case seatChange(account: Int32, at: Instant)
    }

    struct Event: Hashable, Sendable {
        var at: Instant
        var sequence: UInt64
        var kind: Kind

        func precedes(_ other: Event) -> Bool {
            at != other.at ? at < other.at : sequence < other.sequence
        }
    }

    private var heap = ChunkedArray<Event>()
    private var nextSequence: UInt64 = 0
    /// The size at which the next compaction runs; doubles with what survives one.
    private(set) var compactionThreshold = 4_096

    var count: Int { heap.count }
    var next: Instant? { heap.first?.at }

    mutating func schedule(_ kind: Kind, at instant: Instant) {
        heap.append(Event(at: instant, sequence: nextSequence, kind: kind))
        nextSequence += 1
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    var needsCompaction: Bool { heap.count >= compactionThreshold }

    /// The queue's exact contents, for checkpoints.
    var storage: (heap: [Event], nextSequence: UInt64, compactionThreshold: Int) {
        get { (Array(heap), nextSequence, compactionThreshold) }
        set { (heap, nextSequence, compactionThreshold) = (ChunkedArray(newValue.heap), newValue.nextSequence, newValue.compactionThreshold) }
    }

    /// Compaction in place, done by the ledger (which knows which events are live) with a
    /// plain loop: `event(at:)` over every position in turn, `keep(_:at:)` for each live one,
    /// then `compacted(keeping:)`, which restores the heap order and sets the next compaction
    /// point. Nothing is allocated (it took the events out into an array and back before).
    @inline(__always)
    func event(at index: Int) -> Event { heap[index] }

    @inline(__always)
    mutating func keep(_ event: Event, at index: Int) { heap[index] = event }

    mutating func compacted(keeping count: Int) {
        heap.removeLast(heap.count - count)
        var index = heap.count / 2
        while index > 0 {
            index -= 1
            siftDown(from: index)
        }
        compactionThreshold = max(4_096, heap.count * 2)
    }

    /// Removes and returns the earliest event if it is due at `instant`.
    mutating func popDue(at instant: Instant) -> Event? {
        guard let first = heap.first, first.at <= instant else { return nil }
        let last = heap.removeLast()
        if heap.isEmpty { return first }
        heap[0] = last
        siftDown(from: 0)
        return first
    }

    private mutating func siftDown(from start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count && heap[left].precedes(heap[smallest]) { smallest = left }
            if right < heap.count && heap[right].precedes(heap[smallest]) { smallest = right }
            if smallest == parent { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
