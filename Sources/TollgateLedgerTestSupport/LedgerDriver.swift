import TollgateLedger

/// Drives a ledger the way a server would: a clock that only the driver moves, a fresh
/// idempotency key for every command unless one is given, and a record of what was applied
/// (the journal the ledger will later have: the commands that changed it, at the instants they
/// were decided) so it can be replayed.
public struct LedgerDriver: Sendable {
    public struct Entry: Hashable, Sendable {
        public var command: Command
        public var key: String
        public var at: Instant

        public init(command: Command, key: String, at: Instant) {
            self.command = command
            self.key = key
            self.at = at
        }
    }

    public var ledger: Ledger
    public var now: Instant
    public private(set) var journal: [Entry] = []
    private var keyCounter = 0

    public init(limits: LedgerLimits = LedgerLimits(), start: Instant = Fixtures.start) {
        ledger = Ledger(limits: limits, startingAt: start)
        now = start
    }

    public mutating func nextKey() -> String {
        keyCounter += 1
        return "k\(keyCounter)"
    }

    @discardableResult
    public mutating func run(_ command: Command, key: String? = nil) -> Answer {
        let key = key ?? nextKey()
        let applied = ledger.applyRecording(command, key: key, at: now)
        if applied.changedState { journal.append(Entry(command: command, key: key, at: applied.instant)) }
        return applied.answer
    }

    /// Runs an admin command that must succeed.
    public mutating func setUp(_ command: Command) {
        let answer = run(command)
        precondition(!answer.isRefused, "set-up command \(command) was refused: \(answer)")
    }

    public mutating func advance(microseconds: Int64) {
        now = now.adding(microseconds: microseconds)
    }

    public mutating func check(_ request: DecisionRequest) -> Answer {
        ledger.check(request, at: now)
    }

    public mutating func balance(account: String, member: String? = nil) -> Balance {
        switch ledger.balance(account: account, member: member, at: now) {
        case .success(let balance): return balance
        case .failure(let error): preconditionFailure("balance of \(account)/\(member ?? "-") failed: \(error)")
        }
    }

    /// Replays a journal into a fresh ledger, as recovery does; also the sequence numbers
    /// (from 1) of records that changed nothing on replay, which should be none.
    public static func replay(_ journal: [Entry], limits: LedgerLimits = LedgerLimits(), start: Instant = Fixtures.start) -> Ledger {
        replayReporting(journal, limits: limits, start: start).ledger
    }

    public static func replayReporting(_ journal: [Entry], limits: LedgerLimits = LedgerLimits(), start: Instant = Fixtures.start) -> (ledger: Ledger, unchanged: [Int]) {
        var ledger = Ledger(limits: limits, startingAt: start)
        var unchanged: [Int] = []
        for (index, entry) in journal.enumerated() where !ledger.replay(entry.command, key: entry.key, at: entry.at).changedState {
            unchanged.append(index + 1)
        }
        return (ledger, unchanged)
    }
}
