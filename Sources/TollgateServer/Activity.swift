import Synchronization
import TollgateLedger
import TollgateWire

/// What the gate decided lately, across the ledger: credits consumed (spends and commits) and
/// refusals of reserves, spends, commits and extends. The read API's recent consumption and
/// refusals by reason come from here. In memory only, since the server started: a ring of the
/// last `capacity` entries, appended under the ledger's lock as decisions are made (a check
/// is a question, not a decision, and is not recorded; neither is a retry answered from the
/// idempotency table).
struct ActivityLog: Sendable {
    enum Kind: UInt8, Sendable {
        case consumed, refused
    }

    struct Entry: Sendable {
        var at: Instant
        var kind: Kind
        var operation: Opcode
        var account: String
        var member: String?
        var product: String?
        /// Consumed: the credits; refused: the units asked for (0 for a commit or extend).
        var amount: Int64
        var hold: HoldID?
        var refusal: LedgerError?

        func asking(_ request: DecisionRequest) -> Entry {
            var entry = self
            (entry.member, entry.product, entry.amount) = (request.member, request.product, request.quantity)
            return entry
        }
    }

    let capacity: Int
    private var ring: [Entry] = []
    private var next = 0

    init(capacity: Int) {
        self.capacity = max(capacity, 0)
    }

    /// Records what `command` did, if it consumed or was refused. `hold` is the hold a commit
    /// names, looked up before it was applied (it may be gone after).
    mutating func record(_ command: Command, _ applied: Ledger.Applied, hold: HoldView?) {
        guard capacity > 0 else { return }
        if applied.changedState, let consumed = command.consumption(answer: applied.answer, hold: hold) {
            append(
                Entry(
                    at: applied.instant, kind: .consumed, operation: command.opcode, account: consumed.account, member: consumed.member,
                    product: consumed.product, amount: consumed.credits, hold: consumed.hold))
            return
        }
        guard case .refused(let refusal) = applied.answer else { return }
        let refused = Entry(at: applied.instant, kind: .refused, operation: command.opcode, account: command.account, amount: 0, refusal: refusal.error)
        switch command {
        case .reserve(let reserve):
            append(refused.asking(reserve.request))
        case .spend(let spend):
            append(refused.asking(spend.request))
        case .reserveMetered(let request, _), .spendMetered(let request):
            var entry = refused
            (entry.member, entry.product) = (request.member, request.product)
            append(entry)
        case .commitMetered(let reference, _, _):
            var entry = refused
            (entry.member, entry.product, entry.hold) = (hold?.member, hold?.product, reference.hold)
            append(entry)
        case .commit(let commit):
            var entry = refused
            (entry.member, entry.product, entry.hold) = (hold?.member, hold?.product, commit.hold.hold)
            append(entry)
        case .extend(let extend):
            var entry = refused
            entry.hold = extend.hold.hold
            append(entry)
        default:
            break
        }
    }

    private mutating func append(_ entry: Entry) {
        if ring.count < capacity {
            ring.append(entry)
        } else {
            ring[next] = entry
        }
        next = (next + 1) % capacity
    }

    /// The account's entries of this kind, newest first, at most `limit`.
    func recent(account: String, kind: Kind, limit: Int) -> [Entry] {
        var found: [Entry] = []
        var index = next
        for _ in 0..<ring.count {
            index = (index - 1 + ring.count) % ring.count
            let entry = ring[index]
            if entry.kind == kind && entry.account == account {
                found.append(entry)
                if found.count >= limit { break }
            }
        }
        return found
    }

    /// How many of the account's refusals the ring holds, by reason (the status name).
    func refusalsByReason(account: String) -> [String: Int] {
        var counts: [String: Int] = [:]
        for entry in ring where entry.kind == .refused && entry.account == account {
            counts[entry.refusal?.code.identifier ?? "unknown", default: 0] += 1
        }
        return counts
    }

    /// The oldest instant the ring still covers, nil when empty.
    var oldest: Instant? {
        guard !ring.isEmpty else { return nil }
        return ring.count < capacity ? ring[0].at : ring[next].at
    }
}

/// The balance over time of the accounts someone is watching through the read API or the
/// dashboard: sampled every `intervalMilliseconds` while watched, kept for `samplesKept`
/// samples (an hour at the defaults). An account is watched from its first read until
/// `watchMinutes` after its last; at most `accountsMax` at once, the one read least recently
/// making room for a new one. In memory only: the history starts when watching does.
public final class BalanceHistory: Sendable {
    public struct Sample: Sendable, Equatable {
        public var at: Instant
        public var balance: Credits
        public var held: Credits
        public var consumed: Credits
        public var allotment: Credits
    }

    public struct Settings: Sendable {
        public var accountsMax = 64
        public var samplesKept = 3_600
        public var intervalMilliseconds: Int64 = 1_000
        public var watchMinutes: Int64 = 15

        public init() {}
    }

    private struct Series {
        var lastRead: Instant
        var samples: [Sample] = []
    }

    public let settings: Settings
    private let series = Mutex<[String: Series]>([:])

    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    /// Starts or renews watching `account`; returns whether it was already watched.
    @discardableResult
    func watch(_ account: String, at now: Instant) -> Bool {
        series.withLock { series in
            if series[account] != nil {
                series[account]!.lastRead = now
                return true
            }
            if series.count >= settings.accountsMax, let stalest = series.min(by: { $0.value.lastRead < $1.value.lastRead })?.key {
                series.removeValue(forKey: stalest)
            }
            series[account] = Series(lastRead: now)
            return false
        }
    }

    /// The accounts being watched, after forgetting those nobody read for `watchMinutes`.
    func watched(at now: Instant) -> [String] {
        let cutoff = now.adding(microseconds: -settings.watchMinutes * Microseconds.perMinute)
        return series.withLock { series in
            series = series.filter { $0.value.lastRead >= cutoff }
            return Array(series.keys)
        }
    }

    func append(_ sample: Sample, to account: String) {
        series.withLock { series in
            guard series[account] != nil else { return }
            series[account]!.samples.append(sample)
            if series[account]!.samples.count > settings.samplesKept {
                series[account]!.samples.removeFirst(series[account]!.samples.count - settings.samplesKept)
            }
        }
    }

    /// The account's samples taken after `since` (all of them when nil), oldest first.
    public func samples(of account: String, after since: Instant? = nil) -> [Sample] {
        series.withLock { series in
            guard let samples = series[account]?.samples else { return [] }
            guard let since else { return samples }
            return Array(samples.drop { $0.at <= since })
        }
    }

    /// Takes one sample of every watched account from the ledger.
    func sample(_ service: LedgerService) {
        for account in watched(at: service.now) {
            guard let summary = service.accountSummary(account) else { continue }
            append(Sample(summary), to: account)
        }
    }
}

extension BalanceHistory.Sample {
    init(_ summary: AccountSummary) {
        self.init(at: summary.at, balance: summary.balance, held: summary.held, consumed: summary.consumed, allotment: summary.allotment)
    }
}
