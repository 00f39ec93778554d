import DequeModule

/// Remembers, per (account, key), the command and the answer it got, for a retention period.
/// Keys are forgotten in the order they were stored: retention is one fixed span and time only
/// moves forward, so that is also the order they expire in.
struct IdempotencyTable: Hashable, Sendable {
    struct Key: Hashable, Sendable {
        var scope: String
        var key: String
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

    private(set) var entries: [Key: Entry] = [:]
    private var expiries: Deque<Expiry> = []

    var count: Int { entries.count }

    mutating func reserveCapacity(_ count: Int) {
        entries.reserveCapacity(count)
        expiries.reserveCapacity(count)
    }

    func lookup(_ key: Key, command: Command) -> Lookup {
        guard let entry = entries[key] else { return .new }
        return entry.command == command ? .replay(entry.answer) : .conflict
    }

    mutating func remember(_ key: Key, command: Command, answer: Answer, until expiry: Instant) {
        entries[key] = Entry(command: command, answer: answer)
        expiries.append(Expiry(key: key, at: expiry))
    }

    mutating func forget(through instant: Instant) {
        while let first = expiries.first, first.at <= instant {
            expiries.removeFirst()
            entries.removeValue(forKey: first.key)
        }
    }
}

/// How recently resolved holds ended, bounded in count and time; the oldest go first.
struct ResolvedHolds: Hashable, Sendable {
    struct Resolved: Hashable, Sendable {
        var account: Int32
        var resolution: HoldResolution
    }

    private(set) var resolutions: [HoldID: Resolved] = [:]
    private var order: Deque<Expiry> = []

    struct Expiry: Hashable, Sendable {
        var hold: HoldID
        var at: Instant
    }

    subscript(hold: HoldID) -> Resolved? { resolutions[hold] }

    mutating func remember(_ hold: HoldID, account: Int32, _ resolution: HoldResolution, until expiry: Instant, capacity: Int) {
        guard capacity > 0 else { return }
        while resolutions.count >= capacity, let oldest = order.popFirst() {
            resolutions.removeValue(forKey: oldest.hold)
        }
        resolutions[hold] = Resolved(account: account, resolution: resolution)
        order.append(Expiry(hold: hold, at: expiry))
    }

    mutating func forget(through instant: Instant) {
        while let first = order.first, first.at <= instant {
            order.removeFirst()
            resolutions.removeValue(forKey: first.hold)
        }
    }
}
