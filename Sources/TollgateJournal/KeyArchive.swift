import Foundation
import Synchronization
import TollgateLedger

#if canImport(Glibc)
import Glibc
#endif

/// The idempotency keys' disk tier: keys the ledger's in-memory table let go of, kept with
/// their answers until they expire, in immutable sorted runs (proto/JOURNAL.md, "Idempotency
/// keys on disk").
///
/// - Keys arrive in batches, in the order the table let them go, and wait in memory — found
///   exactly, like the table — until a batch is full or a checkpoint needs them on disk.
///   Then the batch is sorted by digest and written as one run: pages of about 8 KiB, an
///   index of each page's first digest, and a blocked Bloom filter, all checksummed.
/// - Every run's filter and page index stay in memory (about 2.2 bytes a key), so a key no
///   run holds is told "never seen" without touching the disk; a key a filter may hold is
///   read with one page per candidate run, off the event loop.
/// - A key is kept until its decision instant plus the retention has passed. Runs are grouped
///   in windows of decision instants (an eighth of the retention each). Within a window four
///   runs of one size are merged into one, and a window no new key can reach is merged into a
///   single run, so a lookup consults a bounded number of filters. A run is deleted once its
///   newest key is past the retention; merges drop such keys and duplicates.
/// - Limits (`keysMax`, `bytesMax`, `pendingMax`): reaching one forgets the oldest keys
///   first, counts them and logs it — never a refusal.
public final class KeyArchive: Sendable {
    public struct Settings: Sendable {
        public var directory: String
        public var retentionMicroseconds: Int64
        /// Keys per run written from memory.
        public var batchKeys = 65_536
        /// Keys waiting in memory, at most; past it the oldest waiting batch is forgotten.
        public var pendingMax = 4 * 65_536
        /// Keys on disk, at most (each costs about 2.2 bytes of memory for its filter and index).
        public var keysMax = 200_000_000
        /// Bytes of run files, at most.
        public var bytesMax: Int64 = 32 << 30
        public var bitsPerKey = 16
        public var files: any JournalFiles = SystemJournalFiles()

        public init(directory: String, retentionMicroseconds: Int64) {
            self.directory = directory
            self.retentionMicroseconds = retentionMicroseconds
        }
    }

    /// What the archive holds and has done, for /metrics and the log.
    public struct Statistics: Sendable, Equatable {
        public var runs = 0
        public var keysOnDisk = 0
        public var diskBytes: Int64 = 0
        public var keysWaiting = 0
        /// Bytes of memory the filters and page indexes take, plus an estimate for waiting keys.
        public var memoryBytes = 0
        public var forgottenEarly = 0
        public var writeFailures = 0
        public var readFailures = 0
        public var damagedRuns = 0
        public var diskReads = 0
        public var merges = 0
        /// The last limit reached, if any, and when a write last failed.
        public var lastLimit: String?
        public var lastFailure: String?
    }

    public enum Probe: Sendable {
        /// No tier holds it.
        case absent
        /// Waiting in memory.
        case found(ArchivedKey)
        /// Some run's filter may hold it: reading it costs a page per run.
        case onDisk
    }

    struct Digest: Hashable {
        var low: UInt64
        var high: UInt64

        /// The digest is already a hash: one word of it is enough for the dictionary.
        func hash(into hasher: inout Hasher) { hasher.combine(low) }
    }

    /// Keys waiting in memory, in arrival order, with an index. Sized for a whole batch when
    /// made, so adding a key never rehashes on the decision path.
    final class Batch: @unchecked Sendable {
        var keys: [ArchivedKey] = []
        var index: [Digest: Int] = [:]
        var writing = false

        init(capacity: Int = 0) {
            keys.reserveCapacity(capacity)
            index.reserveCapacity(capacity)
        }

        func add(_ key: ArchivedKey) {
            index[Digest(low: key.low, high: key.high)] = keys.count
            keys.append(key)
        }
    }

    private struct State {
        var runs: [KeyRun] = [] {
            didSet { filters = runs.map(\.filter.view) }
        }
        /// The runs' filters, for the probe loop: no reference counting per run, so the CPU
        /// can have every run's cache line in flight at once.
        var filters: [KeyRun.FilterView] = []
        var waiting: [Batch] = [Batch()]
        var waitingCount = 0
        var nextRunID: UInt64 = 1
        /// An empty batch made ahead by the writer thread, for `add` to take.
        var spare: Batch?
        /// Batches moved from waiting to a run (merges move nothing in or out).
        var batchesWritten: UInt64 = 0
        var keysAdded: UInt64 = 0
        var statistics = Statistics()
        var stopped = false
    }

    public let settings: Settings
    private let state: Mutex<State>
    /// Held while waiting keys are written (the writer thread, or `persist`).
    private let work = Mutex<Void>(())
    /// Held while runs are merged or deleted (the merging thread).
    private let compaction = Mutex<Void>(())
    private let wake = WakeSignal()
    private let clock: @Sendable () -> Instant
    private let log: @Sendable (String) -> Void
    private var windowMicroseconds: Int64 { max(1_000_000, settings.retentionMicroseconds / 8) }

    /// Opens (or creates) the directory and loads every run in it. A run that does not read
    /// back whole is left in place, renamed `.damaged`, and counted.
    public init(settings: Settings, clock: @escaping @Sendable () -> Instant, log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        self.settings = settings
        self.clock = clock
        self.log = log
        if mkdir(settings.directory, 0o700) != 0 && errno != EEXIST {
            throw JournalError("cannot create \(settings.directory): \(String(cString: strerror(errno)))")
        }
        var loaded = State()
        loaded.waiting = [Batch(capacity: settings.batchKeys)]
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: settings.directory)) ?? []).sorted()
        for name in names {
            let path = settings.directory + "/" + name
            if name.hasSuffix(".tgk.tmp") {
                unlink(path)
                continue
            }
            // Ids this archive would never reach (it counts up from 1) are not its files.
            guard name.hasPrefix("keys-"), name.hasSuffix(".tgk"), let id = UInt64(name.dropFirst(5).dropLast(4), radix: 16), id < UInt64.max / 2 else { continue }
            loaded.nextRunID = max(loaded.nextRunID, id + 1)
            do {
                loaded.runs.append(try KeyRun(path: path, id: id))
            } catch {
                loaded.statistics.damagedRuns += 1
                rename(path, path + ".damaged")
                log("a run of idempotency keys is damaged and was set aside as \(name).damaged (its keys are forgotten): \(error)")
            }
        }
        state = Mutex(loaded)
        refreshStatistics()
    }

    // MARK: - Finding keys

    /// Whether a tier holds the key: waiting keys are found exactly, runs through their
    /// filters. Memory only; called on the decision path.
    public func probe(low: UInt64, high: UInt64) -> Probe {
        probe(low: low, high: high, since: nil).probe
    }

    /// Where the archive stood at a probe: batches written to runs and keys added so far.
    public struct Mark: Sendable, Equatable {
        var batchesWritten: UInt64
        var keysAdded: UInt64
    }

    /// `probe`, and where the archive stood. Given the mark of an earlier probe that found
    /// the key absent, only what changed since is looked at: if no batch has reached a run,
    /// the key can only have arrived among the keys added since (a few, at most 256 are
    /// looked at this way), not in a run's filter.
    public func probe(low: UInt64, high: UInt64, since earlier: Mark?) -> (probe: Probe, mark: Mark) {
        state.withLock { state in
            let mark = Mark(batchesWritten: state.batchesWritten, keysAdded: state.keysAdded)
            if let earlier, earlier.batchesWritten == mark.batchesWritten, mark.keysAdded >= earlier.keysAdded, mark.keysAdded - earlier.keysAdded <= 256 {
                var remaining = Int(mark.keysAdded - earlier.keysAdded)
                for batch in state.waiting.reversed() where remaining > 0 {
                    for key in batch.keys.reversed().prefix(remaining) where key.low == low && key.high == high { return (.found(key), mark) }
                    remaining -= batch.keys.count
                }
                return (.absent, mark)
            }
            let digest = Digest(low: low, high: high)
            for batch in state.waiting.reversed() {
                if let index = batch.index[digest] { return (.found(batch.keys[index]), mark) }
            }
            let key = KeyRun.FilterKey(low: low, high: high)
            var hits = 0
            state.filters.withUnsafeBufferPointer { filters in
                for filter in filters where filter.mayContain(key) { hits += 1 }
            }
            return (hits > 0 ? .onDisk : .absent, mark)
        }
    }

    /// The key, from whichever tier holds it; reads a page from each run whose filter may
    /// hold it, newest first. Blocking: never on an event loop.
    public func read(low: UInt64, high: UInt64) throws -> ArchivedKey? {
        enum Where { case waiting(ArchivedKey), runs([KeyRun]) }
        let place: Where = state.withLock { state in
            let digest = Digest(low: low, high: high)
            for batch in state.waiting.reversed() {
                if let index = batch.index[digest] { return .waiting(batch.keys[index]) }
            }
            let key = KeyRun.FilterKey(low: low, high: high)
            return .runs(state.runs.filter { $0.mayContain(key) }.reversed())
        }
        guard case .runs(let candidates) = place else {
            if case .waiting(let key) = place { return key }
            return nil
        }
        for run in candidates {
            state.withLock { $0.statistics.diskReads += 1 }
            do {
                if let key = try run.find(low: low, high: high) { return key }
            } catch {
                state.withLock { $0.statistics.readFailures += 1 }
                log("cannot read idempotency keys from \(run.path): \(error)")
                throw error
            }
        }
        return nil
    }

    // MARK: - Adding keys

    /// Takes keys the ledger's table let go of. Memory only (under the ledger's lock).
    public func add(_ keys: [ArchivedKey]) {
        guard !keys.isEmpty else { return }
        var full = false
        var forgotten = 0
        state.withLock { state in
            for key in keys {
                var batch = state.waiting[state.waiting.count - 1]
                if batch.keys.count >= settings.batchKeys || batch.writing {
                    // The writer thread makes the next batch ahead, so its allocation is not here.
                    batch = state.spare ?? Batch(capacity: settings.batchKeys)
                    state.spare = nil
                    state.waiting.append(batch)
                    full = true
                }
                batch.add(key)
                state.waitingCount += 1
                state.keysAdded += 1
            }
            // Past the limit the oldest batch not being written is forgotten.
            while state.waitingCount > settings.pendingMax, let victim = state.waiting.firstIndex(where: { !$0.writing }), state.waiting.count > 1 {
                let droppedBatch = state.waiting.remove(at: victim)
                state.waitingCount -= droppedBatch.keys.count
                state.statistics.forgottenEarly += droppedBatch.keys.count
                state.statistics.lastLimit = "pendingMax"
                forgotten += droppedBatch.keys.count
            }
        }
        if forgotten > 0 {
            log("idempotency keys are arriving faster than they can be written: \(forgotten) waiting keys forgotten early (pendingMax \(settings.pendingMax))")
        }
        if full { wake.signal() }
    }

    // MARK: - Writing, merging, expiring

    /// Writes every waiting key to disk (fsynced) and returns once they are there: a
    /// checkpoint that no longer holds them in the ledger's table is written after this.
    public func persist() throws {
        try work.withLock { _ in
            let batches: [Batch] = state.withLock { state in
                if let last = state.waiting.last, !last.keys.isEmpty { state.waiting.append(Batch(capacity: settings.batchKeys)) }
                let batches = state.waiting.filter { !$0.keys.isEmpty }
                for batch in batches { batch.writing = true }
                return batches
            }
            for (index, batch) in batches.enumerated() {
                do {
                    try write(batch)
                } catch {
                    state.withLock { state in
                        for unwritten in batches[index...] { unwritten.writing = false }
                        state.statistics.writeFailures += 1
                        state.statistics.lastFailure = "\(error)"
                    }
                    log("cannot write idempotency keys to disk (they stay in memory): \(error)")
                    throw error
                }
            }
        }
    }

    /// One round of both threads' work, one after the other (tests, benchmarks): a full
    /// batch written, then expiry, limits and at most one merge. Whether there may be more.
    @discardableResult
    public func maintain() -> Bool {
        let wrote = writeFullBatch()
        let compacted = compact()
        return wrote || compacted
    }

    /// Writes the oldest waiting batch if it is full (or a newer one is waiting behind it).
    /// On the writer thread, which does nothing else, so a long merge never holds keys in
    /// memory past `pendingMax`.
    @discardableResult
    public func writeFullBatch() -> Bool {
        if state.withLock({ $0.spare == nil }) {
            let spare = Batch(capacity: settings.batchKeys)
            state.withLock { if $0.spare == nil { $0.spare = spare } }
        }
        return work.withLock { _ in
            let full: Batch? = state.withLock { state in
                guard let batch = state.waiting.first, !batch.writing, batch.keys.count >= settings.batchKeys || state.waiting.count > 1 else { return nil }
                batch.writing = true
                return batch
            }
            guard let full else { return false }
            do {
                try write(full)
                return true
            } catch {
                let failures = state.withLock { state -> Int in
                    full.writing = false
                    state.statistics.writeFailures += 1
                    state.statistics.lastFailure = "\(error)"
                    return state.statistics.writeFailures
                }
                // Retried every second while the disk fails: logged the first time and every minute.
                if failures == 1 || failures % 60 == 0 {
                    log("cannot write idempotency keys to disk (they stay in memory, up to pendingMax; retrying; \(failures) failures so far): \(error)")
                }
                return false
            }
        }
    }

    /// Deletes runs past the retention, keeps the limits and does at most one merge. On the
    /// merging thread; whether there may be more to do.
    @discardableResult
    public func compact() -> Bool {
        compaction.withLock { _ in
            let now = clock()
            expire(now: now)
            return mergeOnce(now: now)
        }
    }

    /// Runs the writer and the merger on threads of their own until `stop`, at nice 10: on a
    /// busy CPU (a sidecar pinned to one core) the event loops go first, and the two still get
    /// enough to keep up at saturation. (At nice 19 the merger starved there: 29 runs after
    /// 30 s at 86,000 spends/s, against 11 at nice 10, and every run adds a filter to probe
    /// and its false positives.) On Linux `setpriority(PRIO_PROCESS, 0, …)` sets the calling
    /// thread's nice value; raising it needs no privilege.
    public func start() {
        let writer = Thread { [self] in
            nameCurrentThread("tg-keys-write")
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 10)
            while !state.withLock({ $0.stopped }) {
                if !writeFullBatch() { wake.wait(timeoutMilliseconds: 1_000) }
            }
        }
        writer.name = "tollgate-keys-write"
        writer.start()
        let merger = Thread { [self] in
            nameCurrentThread("tg-keys-merge")
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 10)
            while !state.withLock({ $0.stopped }) {
                if !compact() { usleep(200_000) }
            }
        }
        merger.name = "tollgate-keys-merge"
        merger.start()
    }

    public func stop() {
        state.withLock { $0.stopped = true }
        wake.signal()
    }

    /// Keys waiting in memory to be written.
    public var waitingKeyCount: Int { state.withLock { $0.waitingCount } }

    public var statistics: Statistics {
        state.withLock { state in
            var statistics = state.statistics
            statistics.keysWaiting = state.waitingCount
            return statistics
        }
    }

    /// Every key the archive holds, waiting or on disk, past the retention or not (tests, small archives).
    public func allKeys() throws -> [ArchivedKey] {
        let (waiting, runs) = state.withLock { state in (state.waiting.flatMap(\.keys), state.runs) }
        var keys = waiting
        for run in runs { try run.forEach { keys.append($0) } }
        return keys
    }

    private func write(_ batch: Batch) throws {
        guard !batch.keys.isEmpty else {
            state.withLock { state in
                state.waiting.removeAll { $0 === batch }
                if state.waiting.isEmpty { state.waiting.append(Batch(capacity: settings.batchKeys)) }
            }
            return
        }
        let id = state.withLock { state in
            defer { state.nextRunID += 1 }
            return state.nextRunID
        }
        // KeyRun.write sorts them by digest.
        let run = try KeyRun.write(batch.keys, id: id, level: 0, in: settings.directory, bitsPerKey: settings.bitsPerKey, files: settings.files)
        state.withLock { state in
            state.runs.append(run)
            state.batchesWritten += 1
            state.waiting.removeAll { $0 === batch }
            if state.waiting.isEmpty { state.waiting.append(Batch(capacity: settings.batchKeys)) }
            state.waitingCount -= batch.keys.count
        }
        refreshStatistics()
    }

    private func window(_ decided: Instant) -> Int64 {
        let micros = decided.microsecondsSinceEpoch
        let span = windowMicroseconds
        // Rounded down; written so the most negative instant does not overflow.
        return micros >= 0 ? micros / span : (micros + 1) / span - 1
    }

    /// Deletes runs whose every key is past the retention, then keeps the limits by forgetting
    /// the runs decided first.
    private func expire(now: Instant) {
        var deleted: [KeyRun] = []
        var messages: [String] = []
        let forgetThrough = now.adding(microseconds: -settings.retentionMicroseconds)
        defer { for message in messages { log(message) } }
        state.withLock { state in
            deleted = state.runs.filter { $0.lastDecided <= forgetThrough }
            state.runs.removeAll { $0.lastDecided <= forgetThrough }
            while state.runs.count > 1 {
                let keys = state.runs.reduce(0) { $0 + $1.count }
                let bytes = state.runs.reduce(Int64(0)) { $0 + $1.bytes }
                guard keys > settings.keysMax || bytes > settings.bytesMax else { break }
                guard let oldest = state.runs.indices.min(by: { state.runs[$0].lastDecided < state.runs[$1].lastDecided }) else { break }
                let run = state.runs.remove(at: oldest)
                let limit = keys > settings.keysMax ? "keysMax \(settings.keysMax)" : "bytesMax \(settings.bytesMax)"
                state.statistics.forgottenEarly += run.count
                state.statistics.lastLimit = keys > settings.keysMax ? "keysMax" : "bytesMax"
                messages.append("the idempotency keys on disk reached \(limit): the \(run.count) keys decided first were forgotten early")
                deleted.append(run)
            }
        }
        for run in deleted { unlink(run.path) }
        if !deleted.isEmpty { refreshStatistics() }
    }

    /// Merges one group of runs, if any is due: every run of a window no new key can reach,
    /// or four runs of one level in a window still filling.
    private func mergeOnce(now: Instant) -> Bool {
        let runs = state.withLock { $0.runs }
        // Keys come to the archive a little after they were decided (minutes, at the rates the
        // table is sized for): a window that ended half a window ago is closed. A later key
        // reaching it adds a run, merged again in turn.
        let openFrom = window(now.adding(microseconds: -windowMicroseconds / 2))
        var byWindow: [Int64: [KeyRun]] = [:]
        for run in runs { byWindow[window(run.lastDecided), default: []].append(run) }
        var chosen: [KeyRun]?
        for (window, group) in byWindow.sorted(by: { $0.key < $1.key }) {
            if window < openFrom, group.count > 1 {
                chosen = Array(group.prefix(32))
                break
            }
            let byLevel = Dictionary(grouping: group, by: \.level)
            if let (_, same) = byLevel.first(where: { $0.value.count >= 4 }) {
                chosen = Array(same.sorted { $0.id < $1.id }.prefix(4))
                break
            }
        }
        guard let inputs = chosen else { return false }
        let id = state.withLock { state in
            defer { state.nextRunID += 1 }
            return state.nextRunID
        }
        do {
            let level = (inputs.map(\.level).max() ?? 0) + 1
            let merged = try KeyRun.merge(
                inputs, id: id, level: level, forgetThrough: now.adding(microseconds: -settings.retentionMicroseconds), in: settings.directory, bitsPerKey: settings.bitsPerKey, files: settings.files)
            state.withLock { state in
                let ids = Set(inputs.map(\.id))
                state.runs.removeAll { ids.contains($0.id) }
                if let merged { state.runs.append(merged) }
                state.runs.sort { $0.id < $1.id }
                state.statistics.merges += 1
            }
            for input in inputs { unlink(input.path) }
        } catch {
            state.withLock {
                $0.statistics.writeFailures += 1
                $0.statistics.lastFailure = "\(error)"
            }
            log("cannot merge runs of idempotency keys (retrying later): \(error)")
            return false
        }
        refreshStatistics()
        return true
    }

    private func refreshStatistics() {
        state.withLock { state in
            state.statistics.runs = state.runs.count
            state.statistics.keysOnDisk = state.runs.reduce(0) { $0 + $1.count }
            state.statistics.diskBytes = state.runs.reduce(Int64(0)) { $0 + $1.bytes }
            state.statistics.keysWaiting = state.waitingCount
            // A waiting key: the key itself (about 100 bytes with its answer) and its index entry.
            state.statistics.memoryBytes = state.runs.reduce(0) { $0 + $1.memoryBytes } + state.waitingCount * 160
        }
    }
}

/// A condition to sleep on until signalled or a timeout passes (an `NSCondition`, as the
/// journal writer's thread sleeps).
final class WakeSignal: @unchecked Sendable {
    private let condition = NSCondition()
    private var signalled = false

    func signal() {
        condition.lock()
        signalled = true
        condition.signal()
        condition.unlock()
    }

    func wait(timeoutMilliseconds: Int) {
        condition.lock()
        defer { condition.unlock() }
        if !signalled { _ = condition.wait(until: Date(timeIntervalSinceNow: TimeInterval(timeoutMilliseconds) / 1_000)) }
        signalled = false
    }
}
