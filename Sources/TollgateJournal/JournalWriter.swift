import Foundation
import NIOCore
import Synchronization
import TollgateLedger

#if canImport(Glibc)
import Glibc
#endif

/// How the journal keeps what the ledger decides (README, "Durability").
public enum JournalMode: Sendable, Equatable {
    /// Nothing is written: tests and benchmarks only. Everything is lost on exit.
    case none
    /// The answer leaves first; a writer thread writes and fsyncs what has accumulated every
    /// interval. A crash loses at most the last interval.
    case async(intervalMicroseconds: Int64)
    /// The answer waits for the group-commit fsync that covers its record.
    case sync
    /// As `sync`, and each batch is first kept by the writer's replica (a shard's journal in
    /// etcd, docs/CLUSTER.md): a record is durable once the replica has it and the local file
    /// too. Without a replica (a follower, which takes records already replicated), as `sync`.
    /// A batch goes as soon as an answer waits for it, else after `intervalMicroseconds`.
    case replicated(intervalMicroseconds: Int64)
}

/// Where a `replicated` journal keeps each batch before the local file.
public protocol JournalReplica: AnyObject, Sendable {
    /// Keeps `records` — whole records `first...through`, laid out as in a segment — and
    /// returns once they are kept, or why not. Called on the writer's thread, which it may
    /// block. A batch that failed is offered again, possibly with more records after it: the
    /// replica keeps track of what it has already kept.
    func keep(_ records: ByteBuffer, first: UInt64, through: UInt64) -> JournalReplicaResult
}

public enum JournalReplicaResult: Sendable, Equatable {
    case kept
    /// Not kept this time; the writer tries again.
    case failed(String)
}

/// The file operations the writer uses, so tests can make them fail.
public protocol JournalFiles: Sendable {
    func write(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int
    func sync(_ descriptor: Int32) -> Int32
    /// Creates a segment file (open(2) with O_CREAT); -1 with errno set on failure.
    func create(_ path: String) -> Int32
    /// Opens an existing segment to append to it; -1 with errno set on failure.
    func openForAppend(_ path: String) -> Int32
    /// Cuts a file back to `size` bytes (ftruncate(2)); 0, or -1 with errno set.
    func truncate(_ descriptor: Int32, _ size: Int) -> Int32
    func close(_ descriptor: Int32)
}

extension JournalFiles {
    public func create(_ path: String) -> Int32 {
        open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o600)
    }

    public func openForAppend(_ path: String) -> Int32 {
        open(path, O_WRONLY | O_APPEND)
    }

    public func truncate(_ descriptor: Int32, _ size: Int) -> Int32 {
        ftruncate(descriptor, off_t(size))
    }

    public func close(_ descriptor: Int32) {
        _ = Glibc.close(descriptor)
    }
}

public struct SystemJournalFiles: JournalFiles {
    public init() {}

    public func write(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
        var written = 0
        while written < bytes.count {
            let result = Glibc.write(descriptor, bytes.baseAddress! + written, bytes.count - written)
            if result < 0 {
                if errno == EINTR { continue }
                return -1
            }
            written += result
        }
        return written
    }

    public func sync(_ descriptor: Int32) -> Int32 {
        fdatasync(descriptor)
    }
}

public struct JournalError: Error, Sendable, CustomStringConvertible {
    public var description: String
    /// The record is certainly not in the journal and never will be (the writer stopped with
    /// it unwritten, or cut back what reached the file): its change can be reported as not
    /// made. False when that cannot be known.
    public var notKept: Bool

    public init(_ description: String, notKept: Bool = false) {
        self.description = description
        self.notKept = notKept
    }
}

/// Appends records off the decision path. `append` only encodes into memory (called under
/// the ledger's lock, so sequence order is decision order); a writer thread writes and
/// fsyncs batches — every interval in `async` mode, as soon as anything waits in `sync` mode
/// (group commit) — and rotates segments when they pass `segmentBytes`.
///
/// When a write or fsync fails, what reached the file of that batch is cut back, the batch
/// stays queued ahead of anything appended later, and the writer tries again every interval;
/// answers waiting for those records keep waiting, and `failureReason` says why (the server
/// refuses new mutations meanwhile). A segment that could not be created, or a cut-back that
/// failed, is retried before anything else is written, so the file never holds a record
/// twice or a record after a gap. Only when the writer stops with records unwritten are their
/// waiters told `notKept`.
public final class JournalWriter: @unchecked Sendable {
    public let mode: JournalMode
    public let directory: String
    public let segmentBytes: Int
    private let files: any JournalFiles

    private struct Pending {
        var buffer = ByteBuffer()
        var nextSequence: UInt64
        var lastChecksum: UInt32
        var waiters: [Waiter] = []
        var stopping = false
        var stopped = false
        /// When the oldest record in `buffer` was appended (monotonic nanoseconds); 0 if none.
        var bufferedSince: UInt64 = 0
    }

    /// Someone waiting for a sequence to be on disk: told on `loop` if it has one (all of a
    /// batch's waiters on one loop in one task), else on the writer's thread.
    private struct Waiter {
        var sequence: UInt64
        var loop: (any EventLoop)?
        var done: @Sendable (Result<Void, JournalError>) -> Void
    }

    private let condition = NSCondition()
    private var pending: Pending
    private let appended = Atomic<UInt64>(0)
    private let durable = Atomic<UInt64>(0)
    private let durableAt: Mutex<Checkpoint.Position>
    /// When the oldest record not yet durable was appended (monotonic nanoseconds); 0 if none.
    private let undurableSince = Atomic<UInt64>(0)
    private let failure = Mutex<String?>(nil)
    private var thread: Thread?
    private let stopped = NSCondition()
    private var isStopped = false

    // Owned by the writer thread.
    /// A written batch's buffer, kept (up to `spareCapacityMax`) to take the next records.
    private var spare: ByteBuffer?
    private static let spareCapacityMax = 4 << 20
    private var descriptor: Int32 = -1
    private var segmentSize = 0
    /// A failed write's bytes could not be cut back: nothing is written until they are.
    private var needsCutBack = false
    /// Failed writes and fsyncs so far, for metrics.
    private let failures = Atomic<Int>(0)
    /// Where a `replicated` journal keeps batches first; nil while following.
    private let replica = Mutex<(any JournalReplica)?>(nil)
    /// The replica failed a batch at least once: it may hold records the writer could not
    /// confirm, so records unwritten at a stop are not known to be lost.
    private let replicaMayHold = Atomic<Bool>(false)

    /// `thread: false` makes a writer that writes only when `flushPending` is called, for
    /// deterministic simulation tests.
    public init(
        directory: String, mode: JournalMode, after scan: JournalScan, segmentBytes: Int = 64 << 20, files: any JournalFiles = SystemJournalFiles(),
        thread startsThread: Bool = true
    ) throws {
        self.mode = mode
        self.directory = directory
        self.segmentBytes = segmentBytes
        self.files = files
        self.pending = Pending(nextSequence: scan.lastSequence + 1, lastChecksum: scan.lastChecksum)
        self.durableAt = Mutex(Checkpoint.Position(sequence: scan.lastSequence, checksum: scan.lastChecksum))
        appended.store(scan.lastSequence, ordering: .relaxed)
        durable.store(scan.lastSequence, ordering: .relaxed)
        if mode == .none { return }
        if let last = scan.segments.last, FileManager.default.fileExists(atPath: last) {
            descriptor = files.openForAppend(last)
            segmentSize = Int((try? FileManager.default.attributesOfItem(atPath: last)[.size] as? Int) ?? 0)
        }
        if descriptor < 0 {
            try openSegment(firstSequence: scan.lastSequence + 1, previousChecksum: scan.lastChecksum)
        }
        guard startsThread else { return }
        let thread = Thread { [weak self] in
            nameCurrentThread("tg-journal")
            self?.run()
        }
        thread.name = "tollgate-journal"
        self.thread = thread
        thread.start()
    }

    /// The last record appended (in memory or on disk) and its checksum. Read it under the
    /// same lock that orders appends.
    public var appendedPosition: Checkpoint.Position {
        condition.lock()
        defer { condition.unlock() }
        return Checkpoint.Position(sequence: pending.nextSequence - 1, checksum: pending.lastChecksum)
    }

    /// The sequence of the last record appended; any state a reader saw before reading this
    /// is covered by it.
    public var appendedSequence: UInt64 { appended.load(ordering: .acquiring) }

    /// The highest sequence known to be on disk.
    public var durableSequence: UInt64 { durable.load(ordering: .acquiring) }

    /// The last record on disk and its checksum: where a checkpoint may stand.
    public var durablePosition: Checkpoint.Position { durableAt.withLock { $0 } }

    /// How long the oldest record not yet on disk has waited (0 when everything is on disk),
    /// given the monotonic time now in nanoseconds: what `async` mode's window is held to.
    public func lagNanoseconds(now: UInt64) -> UInt64 {
        let since = undurableSince.load(ordering: .relaxed)
        return since == 0 || now <= since ? 0 : now - since
    }

    /// Why the journal is not writing, if it is not. It retries every interval and clears this
    /// once a write and fsync succeed again.
    public var failureReason: String? { failure.withLock { $0 } }

    public var failureCount: Int { failures.load(ordering: .relaxed) }

    /// Whether the writer has stopped (closed or abandoned): nothing more will be kept.
    public var hasStopped: Bool {
        condition.lock()
        defer { condition.unlock() }
        return pending.stopped
    }

    /// Adds a record; returns its sequence number. Cheap: memory only. `body`: the command's
    /// request body as it arrived, journaled as it is (see `JournalRecord.write`).
    @discardableResult
    public func append(_ command: Command, key: String, instant: Instant, body: ByteBuffer? = nil) -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        let sequence = pending.nextSequence
        pending.nextSequence += 1
        if mode == .none {
            appended.store(sequence, ordering: .releasing)
            durable.store(sequence, ordering: .releasing)
            return sequence
        }
        if pending.bufferedSince == 0 {
            let now = Self.monotonicNow()
            pending.bufferedSince = now
            if undurableSince.load(ordering: .relaxed) == 0 { undurableSince.store(now, ordering: .relaxed) }
        }
        let record = JournalRecord(sequence: sequence, instant: instant, key: key, command: command)
        pending.lastChecksum = record.write(to: &pending.buffer, previousChecksum: pending.lastChecksum, body: body)
        appended.store(sequence, ordering: .releasing)
        return sequence
    }

    /// A `replicated` journal keeps every batch written from now on in `replica` before its
    /// local file (nil: stops). Records appended before may be in the next batch: the replica
    /// is told where it starts, and skips those it holds.
    public func replicate(to replica: (any JournalReplica)?) {
        if case .replicated = mode {} else { precondition(replica == nil, "only a replicated journal has a replica") }
        self.replica.withLock { $0 = replica }
    }

    /// Appends records another node decided, already encoded and already replicated (a
    /// follower's journal): `bytes` holds records `first...through` chained from
    /// `previousChecksum`, the last with checksum `checksum`. Refused unless they continue
    /// this journal exactly.
    public func appendRecords(_ bytes: ByteBuffer, first: UInt64, through: UInt64, previousChecksum: UInt32, checksum: UInt32) throws {
        condition.lock()
        defer { condition.unlock() }
        guard first == pending.nextSequence, previousChecksum == pending.lastChecksum, through >= first, through < UInt64.max else {
            throw JournalError(
                "records \(first)...\(through) do not continue the journal, which ends at \(pending.nextSequence - 1) (checksum \(pending.lastChecksum), theirs chain to \(previousChecksum))")
        }
        pending.nextSequence = through + 1
        pending.lastChecksum = checksum
        if mode == .none {
            appended.store(through, ordering: .releasing)
            durable.store(through, ordering: .releasing)
            return
        }
        if pending.bufferedSince == 0 {
            let now = Self.monotonicNow()
            pending.bufferedSince = now
            if undurableSince.load(ordering: .relaxed) == 0 { undurableSince.store(now, ordering: .relaxed) }
        }
        var bytes = bytes
        pending.buffer.writeBuffer(&bytes)
        appended.store(through, ordering: .releasing)
    }

    /// Calls `done` once `sequence` is on disk (at once if it already is), on the writer's
    /// thread. In `sync` mode this wakes the writer. While the disk fails it keeps waiting;
    /// it is told `notKept` only if the writer stops without having written the record.
    public func whenDurable(_ sequence: UInt64, _ done: @escaping @Sendable (Result<Void, JournalError>) -> Void) {
        register(Waiter(sequence: sequence, loop: nil, done: done))
    }

    /// As `whenDurable`, but `done` runs on `loop` (at once, if the record is already on
    /// disk and this is called on `loop`). The waiters a batch covers on one loop are told in
    /// one task: one wake-up of that loop per fsync, not one per answer.
    public func whenDurable(_ sequence: UInt64, on loop: any EventLoop, _ done: @escaping @Sendable (Result<Void, JournalError>) -> Void) {
        register(Waiter(sequence: sequence, loop: loop, done: done))
    }

    private func register(_ waiter: Waiter) {
        if waiter.sequence <= durableSequence {
            Self.tell([waiter], .success(()))
            return
        }
        condition.lock()
        if pending.stopped {
            condition.unlock()
            let result: Result<Void, JournalError> =
                waiter.sequence <= durableSequence ? .success(()) : .failure(JournalError("the journal is closed", notKept: true))
            Self.tell([waiter], result)
            return
        }
        pending.waiters.append(waiter)
        condition.signal()
        condition.unlock()
    }

    /// Runs the waiters' callbacks: those without a loop here, those with one in one task per
    /// loop (in the order they waited), or here if already on it.
    private static func tell(_ waiters: [Waiter], _ result: Result<Void, JournalError>) {
        var groups: [(loop: any EventLoop, dones: [@Sendable (Result<Void, JournalError>) -> Void])] = []
        for waiter in waiters {
            guard let loop = waiter.loop else {
                waiter.done(result)
                continue
            }
            if let index = groups.firstIndex(where: { $0.loop === loop }) {
                groups[index].dones.append(waiter.done)
            } else {
                groups.append((loop, [waiter.done]))
            }
        }
        for (loop, dones) in groups {
            if loop.inEventLoop {
                for done in dones { done(result) }
            } else {
                loop.execute { for done in dones { done(result) } }
            }
        }
    }

    /// Blocks until `sequence` is on disk, or false after the timeout (or if it never will be).
    /// For background work such as checkpoints, never for an event loop.
    public func waitUntilDurable(_ sequence: UInt64, timeoutMilliseconds: Int) -> Bool {
        if sequence <= durableSequence { return true }
        let kept = Mutex(false)
        let done = DispatchSemaphore(value: 0)
        whenDurable(sequence) { result in
            if case .success = result { kept.withLock { $0 = true } }
            done.signal()
        }
        _ = done.wait(timeout: .now() + .milliseconds(timeoutMilliseconds))
        return kept.withLock { $0 } || sequence <= durableSequence
    }

    /// Writes what is pending, stops the thread and closes the file.
    public func close() {
        guard thread != nil else {
            guard mode != .none else { return }
            condition.lock()
            let done = pending.stopped
            pending.stopping = true
            condition.unlock()
            if !done {
                _ = step()
                finish()
            }
            return
        }
        condition.lock()
        pending.stopping = true
        condition.signal()
        condition.unlock()
        stopped.lock()
        while !isStopped { stopped.wait() }
        stopped.unlock()
        thread = nil
    }

    static func monotonicNow() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    private var interval: TimeInterval {
        if case .async(let microseconds) = mode { return Double(microseconds) / 1_000_000 }
        if case .replicated(let microseconds) = mode { return Double(microseconds) / 1_000_000 }
        return 0.5
    }

    private func run() {
        while true {
            condition.lock()
            if case .async = mode, !pending.stopping {
                _ = condition.wait(until: Date(timeIntervalSinceNow: interval))
            } else {
                while pending.waiters.isEmpty && !pending.stopping && !needsRepair {
                    _ = condition.wait(until: Date(timeIntervalSinceNow: interval))
                    if pending.buffer.readableBytes > 0 { break }
                }
            }
            condition.unlock()
            let (stopped, failed) = step()
            if stopped { break }
            if failed {
                // Wait before trying the disk again.
                Thread.sleep(forTimeInterval: max(interval, 0.05))
            }
        }
        finish()
    }

    /// A writer made with `thread: false` does nothing by itself: each call writes and syncs
    /// what is pending, as the writer thread does once per interval, and answers the waiters
    /// it covers. For deterministic simulation tests. False if the write failed.
    @discardableResult
    public func flushPending() -> Bool {
        precondition(thread == nil, "flushPending is for a writer without its own thread")
        return !step().failed
    }

    /// A crash, for simulation tests of a writer without a thread: the file is closed and
    /// nothing pending is written or answered.
    public func abandon() {
        precondition(thread == nil, "abandon is for a writer without its own thread")
        condition.lock()
        pending.stopping = true
        pending.stopped = true
        pending.waiters = []
        condition.unlock()
        if descriptor >= 0 { files.close(descriptor) }
        descriptor = -1
    }

    private func finish() {
        if descriptor >= 0 { files.close(descriptor) }
        descriptor = -1
        stopped.lock()
        isStopped = true
        stopped.signal()
        stopped.unlock()
    }

    /// One round of the writer: takes what is pending, writes and syncs it, answers the
    /// waiters it covers and keeps the rest. Returns whether the writer has stopped and
    /// whether the write failed.
    private func step() -> (stopped: Bool, failed: Bool) {
        condition.lock()
        var batch = pending.buffer
        // The last batch's storage, emptied, takes the next records: appends under the ledger's
        // lock do not allocate and regrow a buffer after every write.
        pending.buffer = spare ?? ByteBuffer()
        spare = nil
        let batchSince = pending.bufferedSince
        pending.bufferedSince = 0
        let through = pending.nextSequence - 1
        let throughChecksum = pending.lastChecksum
        var waiters = pending.waiters
        pending.waiters = []
        let stopping = pending.stopping
        condition.unlock()

        let result = flush(batch, through: through, checksum: throughChecksum)

        var answered: [Waiter] = []
        condition.lock()
        switch result {
        case .success:
            if batch.capacity <= Self.spareCapacityMax {
                batch.clear()  // the only reference left: keeps its storage
                spare = batch
            }
            undurableSince.store(pending.bufferedSince, ordering: .relaxed)
            let durableNow = durableSequence
            answered = waiters.filter { $0.sequence <= durableNow }
            waiters.removeAll { $0.sequence <= durableNow }
        case .failure:
            if batch.readableBytes > 0 {
                // Keep the batch for the next attempt, ahead of anything appended since.
                var retry = batch
                retry.writeImmutableBuffer(pending.buffer)
                pending.buffer = retry
                if batchSince != 0 { pending.bufferedSince = batchSince }
            }
        }
        pending.waiters = waiters + pending.waiters
        var unkept: [Waiter] = []
        if stopping {
            // Whatever is still unwritten is not kept: the process is going.
            pending.stopped = true
            if case .failure = result, needsCutBack, descriptor >= 0, files.truncate(descriptor, segmentSize) == 0 { needsCutBack = false }
            unkept = pending.waiters
            pending.waiters = []
        }
        condition.unlock()
        Self.tell(answered, .success(()))
        let failed: Bool
        if case .failure = result { failed = true } else { failed = false }
        if stopping {
            let reason = failureReason ?? "the journal closed before writing it"
            let known = !needsCutBack && !replicaMayHold.load(ordering: .relaxed)
            Self.tell(unkept, .failure(JournalError("not kept: \(reason)", notKept: known)))
        }
        return (stopping, failed)
    }

    /// Something must be put right before the next write: a segment to create, bytes to cut.
    private var needsRepair: Bool { descriptor < 0 || needsCutBack }

    private func failed(_ reason: String) -> Result<Void, JournalError> {
        failures.wrappingAdd(1, ordering: .relaxed)
        failure.withLock { $0 = reason }
        return .failure(JournalError(reason))
    }

    /// Writes and syncs a batch whose last record is `sequence` with checksum `checksum`,
    /// after putting right what an earlier failure left.
    private func flush(_ batch: ByteBuffer, through sequence: UInt64, checksum: UInt32) -> Result<Void, JournalError> {
        if needsCutBack {
            guard files.truncate(descriptor, segmentSize) == 0 else {
                return failed("cannot cut back a failed journal write: \(String(cString: strerror(errno)))")
            }
            needsCutBack = false
        }
        if descriptor < 0 {
            let position = durablePosition
            do {
                try openSegment(firstSequence: position.sequence + 1, previousChecksum: position.checksum)
            } catch {
                return failed("\(error)")
            }
        }
        if batch.readableBytes > 0, let replica = replica.withLock({ $0 }) {
            // Kept elsewhere first: the local file never holds a record the replica lacks.
            if case .failed(let reason) = replica.keep(batch, first: durablePosition.sequence + 1, through: sequence) {
                replicaMayHold.store(true, ordering: .relaxed)
                return failed("the replicated journal did not keep the batch: \(reason)")
            }
        }
        if batch.readableBytes > 0 {
            let written = batch.withUnsafeReadableBytes { files.write(descriptor, $0) }
            if written != batch.readableBytes || files.sync(descriptor) != 0 {
                let reason = "journal \(written != batch.readableBytes ? "write" : "fsync") failed: \(String(cString: strerror(errno)))"
                // Cut off whatever part of the batch reached the file, so the retry starts clean
                // and does not trust pages a failed fsync may have dropped.
                if files.truncate(descriptor, segmentSize) != 0 { needsCutBack = true }
                return failed(reason)
            }
            segmentSize += written
            durableAt.withLock { $0 = Checkpoint.Position(sequence: sequence, checksum: checksum) }
            durable.store(sequence, ordering: .releasing)
        }
        if failureReason != nil { failure.withLock { $0 = nil } }
        if segmentSize >= segmentBytes {
            // Records still buffered continue the chain from this batch's last record, with the
            // next sequence numbers: exactly what the new segment's header says. The batch is
            // kept either way; a segment that cannot be created is retried before the next write.
            files.close(descriptor)
            descriptor = -1
            do {
                try openSegment(firstSequence: sequence + 1, previousChecksum: checksum)
            } catch {
                _ = failed("\(error)")
            }
        }
        return .success(())
    }

    private func openSegment(firstSequence: UInt64, previousChecksum: UInt32) throws {
        let path = directory + "/" + SegmentHeader.fileName(firstSequence: firstSequence)
        let header = SegmentHeader(firstSequence: firstSequence, previousChecksum: previousChecksum).bytes
        let created = files.create(path)
        guard created >= 0 else { throw JournalError("cannot create \(path): \(String(cString: strerror(errno)))") }
        guard header.withUnsafeBytes({ files.write(created, $0) }) == header.count, files.sync(created) == 0 else {
            let reason = String(cString: strerror(errno))
            files.close(created)
            unlink(path)
            throw JournalError("cannot write \(path): \(reason)")
        }
        do {
            try syncDirectory(directory)
        } catch {
            files.close(created)
            throw error
        }
        descriptor = created
        segmentSize = header.count
    }
}
