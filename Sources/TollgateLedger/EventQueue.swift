/// Things that happen by themselves when time passes: a hold reaching its deadline, a grant
/// becoming effective, a grant expiring. A binary min-heap ordered by instant, then by the
/// order the events were scheduled, so processing is deterministic. Entries are never removed
/// early; an entry that no longer matches its hold or grant is skipped when it comes up.
struct EventQueue: Hashable, Sendable {
    enum Kind: Hashable, Sendable {
        case holdDeadline(HoldID)
        case grantEffective(slot: Int32, grant: GrantID)
        case grantExpiry(slot: Int32, grant: GrantID)
    }

    struct Event: Hashable, Sendable {
        var at: Instant
        var sequence: UInt64
        var kind: Kind

        func precedes(_ other: Event) -> Bool {
            at != other.at ? at < other.at : sequence < other.sequence
        }
    }

    private var heap: [Event] = []
    private var nextSequence: UInt64 = 0

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

    /// Removes and returns the earliest event if it is due at `instant`.
    mutating func popDue(at instant: Instant) -> Event? {
        guard let first = heap.first, first.at <= instant else { return nil }
        let last = heap.removeLast()
        if heap.isEmpty { return first }
        heap[0] = last
        var parent = 0
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
        return first
    }
}
