import DequeModule

/// Remembers, per (account, key), the command and the answer it got, for a retention period.
///
/// Entries sit in a ring in the order they were stored, which is also the order they expire in
/// (retention is one fixed span and time only moves forward); the hash index maps a key to its
/// position in the ring. The index stays small and hot; the large entries are written once at
/// the tail and read back only on a retry, and forgotten from the head.
struct IdempotencyTable: Hashable, Sendable {
    struct Key: PrehashedKey, Sendable {
        let scope: String
        let key: String
        let hash: UInt64

        init(scope: String, key: String) {
            self.scope = scope
            self.key = key
            self.hash = FastHash.mix(FastHash.hash(scope) ^ 0x5851_F42D_4C95_7F2D, FastHash.hash(key) | 1)
        }

        static func == (lhs: Key, rhs: Key) -> Bool {
            lhs.hash == rhs.hash && lhs.key == rhs.key && lhs.scope == rhs.scope
        }
    }

    struct Entry: Hashable, Sendable {
        var command: Command
        var answer: Answer
    }

    struct Expiry: Hashable, Sendable {
        var key: Key
        var at: Instant
    }

    enum Lookup {
        case new
        case replay(Answer)
        case conflict
    }

    private var positions: [Key: UInt64] = [:]
    /// The large entries, written at the tail and dropped from the head, never copied in between.
    private var entries: Deque<Entry> = []
    /// The same order, small: what the head-of-line check reads on every operation.
    private var expiries: Deque<Expiry> = []
    /// The absolute position of `entries.first`.
    private var firstPosition: UInt64 = 0

    var count: Int { expiries.count }

    mutating func reserveCapacity(_ count: Int) {
        positions.reserveCapacity(count)
        entries.reserveCapacity(count)
        expiries.reserveCapacity(count)
    }

    func lookup(_ key: Key, command: Command) -> Lookup {
        guard let position = positions[key] else { return .new }
        let index = Int(position - firstPosition)
        return entries[index].command == command ? .replay(entries[index].answer) : .conflict
    }

    mutating func remember(_ key: Key, command: Command, answer: Answer, until expiry: Instant) {
        positions[key] = firstPosition + UInt64(expiries.count)
        entries.append(Entry(command: command, answer: answer))
        expiries.append(Expiry(key: key, at: expiry))
    }

    mutating func forget(through instant: Instant) {
        while let first = expiries.first, first.at <= instant {
            forgetFirst(first.key)
        }
    }

    /// Forgets the oldest key if it would expire by `instant`; false if it would not.
    mutating func forgetOldest(ifExpiringBy instant: Instant) -> Bool {
        guard let first = expiries.first, first.at <= instant else { return false }
        forgetFirst(first.key)
        return true
    }

    private mutating func forgetFirst(_ key: Key) {
        positions.removeValue(forKey: key)
        expiries.removeFirst(1)
        entries.removeFirst(1)
        firstPosition += 1
    }
}

/// How recently resolved holds ended, bounded in count and time; the oldest go first.
struct ResolvedHolds: Hashable, Sendable {
    struct Resolved: Hashable, Sendable {
        var account: Int32
        var resolution: HoldResolution
    }

    private(set) var resolutions: [HoldKey: Resolved] = [:]
    private var order: Deque<Expiry> = []

    struct Expiry: Hashable, Sendable {
        var hold: HoldID
        var at: Instant
    }

    subscript(hold: HoldID) -> Resolved? { resolutions[HoldKey(hold)] }

    mutating func remember(_ hold: HoldID, account: Int32, _ resolution: HoldResolution, until expiry: Instant, capacity: Int) {
        guard capacity > 0 else { return }
        while resolutions.count >= capacity, let oldest = order.popFirst() {
            resolutions.removeValue(forKey: HoldKey(oldest.hold))
        }
        resolutions[HoldKey(hold)] = Resolved(account: account, resolution: resolution)
        order.append(Expiry(hold: hold, at: expiry))
    }

    mutating func forget(through instant: Instant) {
        while let first = order.first, first.at <= instant {
            order.removeFirst()
            resolutions.removeValue(forKey: HoldKey(first.hold))
        }
    }
}
