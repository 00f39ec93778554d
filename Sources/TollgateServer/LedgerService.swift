import NIOCore
import NIOPosix
import Synchronization
import TollgateJournal
import TollgateLedger
import TollgateWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The wall clock, in microseconds since the epoch (CLOCK_REALTIME).
public func wallClock() -> Instant {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Instant(microsecondsSinceEpoch: Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1_000)
}

/// The one ledger every connection shares.
///
/// Decisions are made under a mutex, on the event-loop thread that read the request, so an
/// answer never waits for another thread to wake up. A decision holds the lock for one to
/// two microseconds (bench/README.md), far less than a loopback round trip, so contention
/// stays low on the few cores a sidecar gets. Handing every decision to one owning thread
/// was built too and measured slower: 298 µs against 269 µs p50 per reserve+commit pair with
/// one client, 530 against 404 µs and a quarter less throughput with eight (bench/README.md,
/// "Where decisions run"), so it was removed. The mutex also gives the total order DESIGN.md
/// requires: every decision sees every decision answered before it.
public final class LedgerService: Sendable {
    /// The ledger and the journal that keeps it, behind one lock: a decision and its journal
    /// record are one step, and the decision path takes one lock.
    private struct State {
        var ledger: Ledger

        /// Hands the ledger's new events to the hub; a flag check when there are none.
        mutating func passEvents(to hub: EventHub?) {
            if ledger.hasPendingEvents, let hub { hub.accept(ledger.takeEvents(), covering: journal?.appendedSequence ?? 0) }
        }
        /// Set once recovery is done, before any connection is served.
        var journal: JournalWriter?
        /// Recent consumption and refusals, for the read API.
        var activity: ActivityLog

        /// The disk tier of idempotency keys, set with the journal.
        var archive: KeyArchive?

        /// Applies a command, journals it if it changed the ledger and records what it did.
        /// Keys the table lets go of go to the disk tier before the lock is released, so a
        /// key is always in one tier or the other.
        /// `body`: the request body the command and key were decoded from, which the journal
        /// keeps as it is; nil, for a command made here, and the journal encodes it.
        mutating func apply(_ command: Command, key: String, at now: Instant, keys: ArchiveKeys?, body: ByteBuffer? = nil) -> Answer {
            var hold: HoldView?
            if activity.capacity > 0 {
                switch command {
                case .commit(let commit): hold = ledger.hold(commit.hold.hold)
                case .commitMetered(let reference, _, _): hold = ledger.hold(reference.hold)
                default: break
                }
            }
            let applied = ledger.applyRecording(command, key: key, at: now, older: keys)
            if applied.changedState { journal?.append(command, key: key, instant: applied.instant, body: body) }
            if ledger.hasEvictedKeys, let archive { ledger.passEvictedKeys(to: archive.add) }
            activity.record(command, applied, hold: hold)
            return applied.answer
        }

        /// While the journal cannot write, mutations are refused; reads go on.
        var unavailable: Handled? {
            guard let reason = journal?.failureReason else { return nil }
            return Handled(
                response: .error(WireError(.unavailable, "the journal cannot keep changes right now (\(reason)); nothing was changed")),
                showsState: false)
        }
    }

    private let state: Mutex<State>
    private let clock: @Sendable () -> Instant
    public let configuration: ServerConfiguration

    /// Where the ledger's events go; taken from the ledger under its lock after every step.
    let hub: EventHub?

    public init(configuration: ServerConfiguration, clock: @escaping @Sendable () -> Instant = wallClock, hub: EventHub? = nil) {
        self.hub = hub
        self.configuration = configuration
        self.clock = clock
        var ledger = Ledger(limits: configuration.limits, startingAt: clock())
        ledger.useIDSpace(tag: configuration.idSpaceTag)
        self.state = Mutex(State(ledger: ledger, journal: nil, activity: ActivityLog(capacity: configuration.recentActivityKept)))
    }

    // MARK: A cluster's roles (docs/CLUSTER.md)

    /// Whether this node decides. A single node always does; in a cluster only the shard's
    /// leader does, and only until its lease's deadline (`leaseValidUntil`, monotonic
    /// nanoseconds; 0: no deadline).
    private let deciding = Atomic<Bool>(true)
    private let leaseValidUntil = Atomic<UInt64>(0)
    /// What a node that does not decide answers.
    private let notDeciding = Mutex(WireError(.notLeader, "no leader yet"))

    /// This node follows: every request is answered `refusal` (naming the leader).
    public func follow(refusal: WireError) {
        notDeciding.withLock { $0 = refusal }
        deciding.store(false, ordering: .releasing)
    }

    /// The refusal a follower answers with, updated when the leader changes.
    public func setFollowerRefusal(_ refusal: WireError) {
        notDeciding.withLock { $0 = refusal }
    }

    public var isDeciding: Bool { deciding.load(ordering: .acquiring) && !leaseHasRunOut }

    private var leaseHasRunOut: Bool {
        let until = leaseValidUntil.load(ordering: .relaxed)
        return until != 0 && NIODeadline.now().uptimeNanoseconds >= until
    }

    /// The lease's deadline as last renewed, if it has been.
    public var currentLeaseDeadline: NIODeadline? {
        let until = leaseValidUntil.load(ordering: .relaxed)
        return until == 0 ? nil : NIODeadline.uptimeNanoseconds(until)
    }

    /// The lease's new deadline after a renewal.
    public func leaseRenewed(until deadline: NIODeadline) {
        leaseValidUntil.store(deadline.uptimeNanoseconds, ordering: .relaxed)
    }

    /// This node leads from now: batches are kept by `replica` before the local file, the
    /// ledger's time goes on from its last record to `now`, and requests are decided until the
    /// lease's deadline.
    public func lead(replica: any JournalReplica, leaseValidUntil deadline: NIODeadline, now: Instant) {
        leaseValidUntil.store(deadline.uptimeNanoseconds, ordering: .relaxed)
        state.withLock { state in
            state.journal?.replicate(to: replica)
            state.ledger.advance(to: now)
            state.passEvents(to: hub)
        }
        deciding.store(true, ordering: .releasing)
    }

    /// Records the shard's leader decided, taken from the replicated journal: appended to the
    /// local journal as they are and replayed, as recovery would. `records` are `bytes` read
    /// and checked (`LogEntry.records`). Refused, with nothing changed, unless they continue
    /// the local journal exactly.
    public func ingest(_ bytes: ByteBuffer, records: [ReadRecord]) throws {
        guard let first = records.first, let last = records.last else { return }
        try state.withLock { state in
            guard let journal = state.journal else { throw ServerError("no journal to take replicated records") }
            try journal.appendRecords(
                bytes, first: first.record.sequence, through: last.record.sequence, previousChecksum: first.previousChecksum, checksum: last.checksum)
            for read in records {
                _ = state.ledger.replay(read.record.command, key: read.record.key, at: read.record.instant)
                if state.ledger.hasEvictedKeys, let archive = state.archive { state.ledger.passEvictedKeys(to: archive.add) }
            }
            state.passEvents(to: hub)
        }
    }

    /// The last record the local journal holds and its checksum.
    public var journalPosition: Checkpoint.Position? { state.withLock { $0.journal?.appendedPosition } }

    /// The ledger's clock: the instant of the last record, or later.
    public var ledgerClock: Instant { state.withLock { $0.ledger.clock } }

    /// Balances in the past waiting for or being read on the history thread, across every
    /// connection: past `historyQueueMax` a BALANCE_AT is answered `unavailable` at once.
    let historyQueued = Atomic<Int>(0)
    static let historyQueueMax = 64

    /// Requests waiting for idempotency keys read from disk, across every connection.
    let keyReadsQueued = Atomic<Int>(0)
    static let keyReadsQueueMax = 256

    /// Installs the state recovered from the journal, the writer that continues it and the
    /// disk tier of idempotency keys.
    public func restore(_ recovered: Ledger, journal: JournalWriter?, archive: KeyArchive? = nil) {
        var ledger = recovered
        ledger.archivesEvictedKeys = archive != nil
        if ledger.hasEvictedKeys { archive?.add(ledger.takeEvictedKeys()) }
        state.withLock {
            $0 = State(ledger: ledger, journal: journal, activity: ActivityLog(capacity: configuration.recentActivityKept), archive: archive)
        }
        archiveRef.withLock { $0 = archive }
    }

    public var journal: JournalWriter? { state.withLock { $0.journal } }

    private let archiveRef = Mutex<KeyArchive?>(nil)
    public var archive: KeyArchive? { archiveRef.withLock { $0 } }

    /// The keys of a request's mutations that only the disk tier may hold: they are read
    /// (off the event loop) before the request is decided. Empty for nearly every request:
    /// a new key is told apart by the filters, in memory. `runsChecked` is where the archive
    /// stood when they were consulted, so the decision looks only at what changed since
    /// (`ArchiveKeys`); nil when the request's keys were probed at different points or one was
    /// waiting in memory.
    public func keysToRead(_ request: WireRequest, archive: KeyArchive) -> (keys: [(low: UInt64, high: UInt64)], runsChecked: KeyArchive.Mark?) {
        var keys: [(low: UInt64, high: UInt64)] = []
        var checked: KeyArchive.Mark?
        var consistent = true
        func look(_ command: Command, _ key: String) {
            let digest = ArchivedKey.digest(account: command.account, key: key)
            let (probe, mark) = archive.probe(low: digest.low, high: digest.high, since: nil)
            switch probe {
            case .onDisk: keys.append(digest)
            // The mark vouches only for keys found nowhere: a waiting key is looked up in full.
            case .found: consistent = false
            case .absent: break
            }
            if let earlier = checked, earlier != mark { consistent = false }
            checked = mark
        }
        switch request {
        case .command(let command, let key): look(command, key)
        case .batch(let items):
            for item in items { if case .command(let command, let key) = item { look(command, key) } }
        default: break
        }
        return (keys, consistent ? checked : nil)
    }

    /// Whether the account exists now.
    public func hasAccount(_ account: String) -> Bool {
        state.withLock { $0.ledger.hasAccount(account) }
    }

    /// The account's parent now, for access checks.
    public func parent(of account: String) -> String? {
        state.withLock { $0.ledger.parent(of: account) }
    }

    /// Sizes the idempotency index for the table's limit (see `Ledger.reserveIdempotencyIndex`);
    /// the server calls it once, after recovery and before serving.
    public func reserveIdempotencyIndex() {
        state.withLock { $0.ledger.reserveIdempotencyIndex() }
    }

    /// A copy of the ledger and the journal position it includes, taken together under the
    /// ledger's lock. The copy shares storage with the live ledger until either changes.
    public func checkpointSource() -> (ledger: Ledger, position: Checkpoint.Position)? {
        state.withLock { state in state.journal.map { (state.ledger, $0.appendedPosition) } }
    }

    /// An answer. The connection holds it for the journal as its mode says (it may show any
    /// record appended so far), unless it shows nothing of the ledger: a refusal because the
    /// journal cannot write.
    public struct Handled: Sendable {
        public var response: WireResponse
        public var showsState = true
    }

    /// Applies one request. HELLO and PING are the connection's business, not the ledger's.
    /// A mutation that changes the ledger is appended to the journal under the same lock, so
    /// journal order is decision order.
    /// `refusedItems`, for a BATCH, holds the refusal of each item its sender may not send
    /// (nil for the items it may); a refused item is answered with its error and not applied.
    /// `read` holds the keys read from the disk tier for it (`keysToRead`).
    /// `body`: the body `request` was decoded from, if it came off the wire; its commands are
    /// journaled from those bytes.
    public func handle(
        _ request: WireRequest, body: ByteBuffer? = nil, refusedItems: [WireError?]? = nil, read: [ReadKey] = [], runsChecked: KeyArchive.Mark? = nil
    ) -> Handled {
        // A node's files are its own, leader or not: a new replica copies them from any node
        // (answered in the switch below).
        let ownFiles: Bool
        switch request {
        case .nodeFiles, .readNodeFile: ownFiles = true
        default: ownFiles = false
        }
        if !ownFiles, !isDeciding { return Handled(response: .error(notDeciding.withLock { $0 }), showsState: false) }
        let now = clock()
        switch request {
        case .hello, .ping, .subscribe:
            preconditionFailure("the connection handler answers \(request.opcode.name) itself")
        case .balanceAt(let account, let member, let at):
            return Handled(response: balance(account: account, member: member, at: at, now: now))
        case .check(let decision):
            return Handled(response: .answer(state.withLock { state in
                defer { state.passEvents(to: hub) }
                return state.ledger.check(decision, at: now)
            }))
        case .balance(let account, let member):
            return Handled(response: currentBalance(account: account, member: member, at: now))
        case .familyTransfer(let account):
            return Handled(response: familyTransfer(account))
        case .nodeFiles:
            return Handled(response: nodeFiles(), showsState: false)
        case .readNodeFile(let name, let offset, let length):
            return Handled(response: readNodeFile(name: name, offset: offset, length: length), showsState: false)
        case .command(let command, let key):
            return state.withLock { state in
                if let refusal = state.unavailable { return refusal }
                defer { state.passEvents(to: hub) }
                let keys = state.archive.map { ArchiveKeys(archive: $0, read: read, runsChecked: runsChecked) }
                return Handled(response: .answer(state.apply(command, key: key, at: now, keys: keys, body: body)))
            }
        case .batch(let items):
            // Each item is decided on its own, in order; the lock is taken once for the batch.
            return state.withLock { state in
                if request.isMutation, let refusal = state.unavailable { return refusal }
                defer { state.passEvents(to: hub) }
                let keys = state.archive.map { ArchiveKeys(archive: $0, read: read, runsChecked: runsChecked) }
                var bodies = body.flatMap(BatchItemBodies.init)
                let answers = items.indices.map { index -> BatchItemResponse in
                    let item = items[index]
                    let itemBody = bodies?.next()
                    if let refusal = refusedItems?[index] { return BatchItemResponse(opcode: item.opcode, response: .error(refusal)) }
                    switch item {
                    case .check(let decision):
                        return BatchItemResponse(opcode: .check, response: .answer(state.ledger.check(decision, at: now)))
                    case .command(let command, let key):
                        return BatchItemResponse(opcode: command.opcode, response: .answer(state.apply(command, key: key, at: now, keys: keys, body: itemBody)))
                    default:
                        preconditionFailure("the decoder admits only batchable items")
                    }
                }
                return Handled(response: .batch(answers))
            }
        }
    }

    /// A family moved out of this shard, as MOVE_FAMILY_IN takes it. Read from a copy of the
    /// ledger taken under the lock (the frozen family no longer changes), so the scan of the
    /// tables does not hold decisions up.
    private func familyTransfer(_ account: String) -> WireResponse {
        let ledger = state.withLock { $0.ledger }
        switch ledger.familyTransfer(root: account) {
        case .failure(let error):
            return .answer(.refused(Refusal(error)))
        case .success(let bytes):
            // The answer and the MOVE_FAMILY_IN that carries the bytes must each fit a frame.
            let room = configuration.maxFrameBody - 4 - 2 * 64 - 64
            guard bytes.count <= room else {
                return .error(
                    WireError(
                        .frameTooLarge,
                        "the family of \(account) is \(bytes.count) bytes as a transfer; a frame here carries at most \(configuration.maxFrameBody): raise maxFrameBody (up to 1048576 in a cluster) on both shards to move it"))
            }
            return .transfer(bytes)
        }
    }

    private func currentBalance(account: String, member: String?, at now: Instant) -> WireResponse {
        switch state.withLock({ state in
            defer { state.passEvents(to: hub) }
            return state.ledger.balance(account: account, member: member, at: now)
        }) {
        case .success(let balance): return .balance(balance)
        case .failure(let error): return .answer(.refused(Refusal(error)))
        }
    }

    private struct StopReplay: Error {}

    /// A balance as it was at `at`: the newest checkpoint from before then, plus the journal
    /// up to then, replayed into a private ledger. Slow (it reads files), so the connection
    /// runs it off its event loop. In `async` mode the last flush interval is not yet on disk.
    func balance(account: String, member: String?, at: Instant, now: Instant) -> WireResponse {
        if at >= now { return currentBalance(account: account, member: member, at: now) }
        guard configuration.journalMode != .none else {
            return .error(WireError(.unavailable, "this server keeps no journal (journalMode none), so it has no history"))
        }
        let directory = configuration.dataDirectory + "/journal"
        var base: (ledger: Ledger, position: Checkpoint.Position)?
        for file in Checkpoint.files(in: directory).reversed() {
            if let (ledger, position) = Checkpoint.read(file, limits: configuration.limits), ledger.clock <= at {
                base = (ledger, position)
                break
            }
        }
        var history = base?.ledger ?? Ledger(limits: configuration.limits, startingAt: .epoch)
        history.useIDSpace(tag: configuration.idSpaceTag)
        do {
            _ = try Journal.scan(directory: directory, repair: false, after: base?.position) { record in
                guard record.instant <= at else { throw StopReplay() }
                _ = history.replay(record.command, key: record.key, at: record.instant)
            }
        } catch is StopReplay {
        } catch {
            let refusal = LedgerError(.invalidArgument, level: .request, subject: "the history at \(at) is no longer kept (\(error))")
            return .answer(.refused(Refusal(refusal)))
        }
        switch history.balance(account: account, member: member, at: at) {
        case .success(let balance): return .balance(balance)
        case .failure(let error): return .answer(.refused(Refusal(error)))
        }
    }

    /// Releases holds past their deadline and expires grants; run every sweep interval.
    public func sweep() {
        // A follower's time moves only with the records it takes: advancing it by the wall
        // clock would decide expiries the leader has not reached yet.
        guard deciding.load(ordering: .acquiring) else { return }
        let now = clock()
        state.withLock { state in
            if let due = state.ledger.nextDue, due <= now { state.ledger.advance(to: now) }
            state.passEvents(to: hub)
        }
    }

    /// Keys in the ledger's table, and keys it forgot early (only without a disk tier).
    public var idempotencyCounts: (memory: Int, forgottenEarly: Int) {
        state.withLock { ($0.ledger.idempotencyKeyCount, $0.ledger.idempotencyKeysForgottenEarly) }
    }

    public var openHolds: Int { state.withLock { $0.ledger.openHoldCount } }

    /// Credits consumed across the ledger over the last minute and hour.
    public var burn: BurnRate {
        let now = clock()
        return state.withLock { $0.ledger.totalBurn(at: now) }
    }

    /// The sequence number the next event will carry.
    public var nextEventSequence: UInt64 { state.withLock { $0.ledger.nextEventSequence } }

    /// A copy of the ledger, for tests and diagnostics.
    public var snapshot: Ledger { state.withLock { $0.ledger } }

    // MARK: - Reads for the read API (each takes the lock once, briefly)

    /// The server's clock now.
    public var now: Instant { clock() }

    public func accountSummary(_ account: String) -> AccountSummary? {
        let now = clock()
        return state.withLock { $0.ledger.accountSummary(account, at: now) }
    }

    /// A page of accounts the scope admits (see `Ledger.accountSummaries`); nil if `after`
    /// names no account.
    public func accountSummaries(after: String?, limit: Int, scope: AccountScope) -> (page: [AccountSummary], next: String?)? {
        let now = clock()
        return state.withLock { $0.ledger.accountSummaries(after: after, limit: limit, at: now, include: scope.contains) }
    }

    public func balance(account: String, member: String?) -> Result<Balance, LedgerError> {
        let now = clock()
        return state.withLock { $0.ledger.balance(account: account, member: member, at: now) }
    }

    /// A read that looks at a whole table (every member, every hold), done on a copy of the
    /// ledger taken under the lock, so decisions never wait for the scan (the copy shares its
    /// storage until the next change, which copies only the chunks it touches).
    public func onCopy<T>(_ body: (Ledger, Instant) -> T) -> T {
        let now = clock()
        let copy = state.withLock { $0.ledger }
        return body(copy, now)
    }

    /// Every live grant of the account, by id; nil if there is no such account.
    public func grants(of account: String) -> [GrantView]? {
        state.withLock { $0.ledger.hasAccount(account) ? $0.ledger.grants(of: account) : nil }
    }

    public func burnBuckets(account: String, member: String?) -> Result<BurnBuckets, LedgerError> {
        let now = clock()
        return state.withLock { $0.ledger.burnBuckets(account: account, member: member, at: now) }
    }

    /// The account's alerts (with whether each is armed) and auto-recharge.
    public func watches(of account: String) -> (alerts: [(rule: AlertRule, armed: Bool)], recharge: (rule: AutoRecharge, usedThisPeriod: Int64)?) {
        state.withLock { ($0.ledger.alertRules(of: account), $0.ledger.autoRecharge(of: account)) }
    }

    /// Recent activity of an account: consumption and refusals, newest first, and refusals
    /// by reason over everything the log holds.
    func activity(of account: String, limit: Int) -> (consumed: [ActivityLog.Entry], refused: [ActivityLog.Entry], byReason: [String: Int], kept: Int, since: Instant?) {
        state.withLock { state in
            (
                state.activity.recent(account: account, kind: .consumed, limit: limit), state.activity.recent(account: account, kind: .refused, limit: limit),
                state.activity.refusalsByReason(account: account), state.activity.capacity, state.activity.oldest
            )
        }
    }

    /// Ledger-wide counts for the server's own page.
    public func counts() -> (accounts: Int, members: Int, openHolds: Int, burn: BurnRate) {
        let now = clock()
        return state.withLock { ($0.ledger.accountCount, $0.ledger.memberCount, $0.ledger.openHoldCount, $0.ledger.totalBurn(at: now)) }
    }
}

/// A key read from the disk tier ahead of its request's decision, and what was found.
public struct ReadKey: Sendable {
    public var low: UInt64
    public var high: UInt64
    public var key: ArchivedKey?

    public init(low: UInt64, high: UInt64, key: ArchivedKey?) {
        self.low = low
        self.high = high
        self.key = key
    }
}

/// How the ledger finds a key its table does not hold: among the keys read ahead for the
/// request, then in the disk tier's memory (waiting keys and the runs' filters, or, when they
/// were consulted for this request, only the keys that arrived since). A key a filter may hold
/// that was not read ahead — it reached a run between the read and the decision, which takes
/// a checkpoint or a full batch landing in that instant — is read here, under the lock. If
/// that read fails, the key counts as new.
struct ArchiveKeys: OlderKeys {
    let archive: KeyArchive
    let read: [ReadKey]
    let runsChecked: KeyArchive.Mark?

    func find(low: UInt64, high: UInt64) -> ArchivedKey? {
        if let done = read.first(where: { $0.low == low && $0.high == high }) { return done.key }
        switch archive.probe(low: low, high: high, since: runsChecked).probe {
        case .absent: return nil
        case .found(let key): return key
        case .onDisk: return try? archive.read(low: low, high: high)
        }
    }
}

extension WireRequest {
    /// Whether the request may change the ledger.
    var isMutation: Bool {
        switch self {
        case .command: true
        case .batch(let items): items.contains { $0.isMutation }
        default: false
        }
    }
}

/// The server's time: the wall clock, made safe to decide by. It never goes backwards and
/// always moves on at the rate of the monotonic clock, so a hold's TTL is a real duration
/// whatever the wall clock does:
/// - the wall clock ahead of the last instant given: the wall clock is used (an NTP step
///   forward moves time forward with it);
/// - the wall clock behind (an NTP step back, or a restart whose journal was decided ahead
///   of it, after `clockOffsetSeconds`): time runs on from the last instant given, by the
///   monotonic clock, until the wall clock catches up with it.
final class DecisionClock: Sendable {
    private struct Anchor {
        var instant: Instant
        var monotonicNanoseconds: UInt64
    }

    private let wall: @Sendable () -> Instant
    private let monotonic: @Sendable () -> UInt64
    private let anchor: Mutex<Anchor>

    init(wall: @escaping @Sendable () -> Instant, monotonic: @escaping @Sendable () -> UInt64 = { NIODeadline.now().uptimeNanoseconds }) {
        self.wall = wall
        self.monotonic = monotonic
        self.anchor = Mutex(Anchor(instant: wall(), monotonicNanoseconds: monotonic()))
    }

    func now() -> Instant {
        let wallNow = wall()
        let monotonicNow = monotonic()
        return anchor.withLock { anchor in
            let elapsed = monotonicNow >= anchor.monotonicNanoseconds ? monotonicNow - anchor.monotonicNanoseconds : 0
            let carried = anchor.instant.adding(microseconds: Int64(clamping: elapsed / 1_000))
            if wallNow > carried {
                anchor = Anchor(instant: wallNow, monotonicNanoseconds: monotonicNow)
                return wallNow
            }
            return carried
        }
    }

    /// Time goes on from `instant` if the wall clock is behind it: the recovered ledger's clock.
    func notBefore(_ instant: Instant) {
        let monotonicNow = monotonic()
        anchor.withLock { anchor in
            let elapsed = monotonicNow >= anchor.monotonicNanoseconds ? monotonicNow - anchor.monotonicNanoseconds : 0
            let carried = anchor.instant.adding(microseconds: Int64(clamping: elapsed / 1_000))
            if instant > carried { anchor = Anchor(instant: instant, monotonicNanoseconds: monotonicNow) }
        }
    }
}
