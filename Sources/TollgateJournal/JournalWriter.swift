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
}

/// The file operations the writer uses, so tests can make them fail.
public protocol JournalFiles: Sendable {
    func write(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int
    func sync(_ descriptor: Int32) -> Int32
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

    public init(_ description: String) {
        self.description = description
    }
}

/// Appends records off the decision path. `append` only encodes into memory (called under
/// the ledger's lock, so sequence order is decision order); a writer thread writes and
/// fsyncs batches — every interval in `async` mode, as soon as anything waits in `sync` mode
/// (group commit) — and rotates segments when they pass `segmentBytes`.
public final class JournalWriter: @unchecked Sendable {
    public let mode: JournalMode
    public let directory: String
    public let segmentBytes: Int
    private let files: any JournalFiles

    private struct Pending {
        var buffer = ByteBuffer()
        var nextSequence: UInt64
        var lastChecksum: UInt32
        var waiters: [(UInt64, @Sendable (Result<Void, JournalError>) -> Void)] = []
        var stopping = false
    }

    private let condition = NSCondition()
    private var pending: Pending
    private let durable = Atomic<UInt64>(0)
    private let failure = Mutex<String?>(nil)
    private var thread: Thread?
    private let stopped = NSCondition()
    private var isStopped = false

    // Owned by the writer thread.
    private var descriptor: Int32 = -1
    private var segmentSize = 0
    /// Failed writes and fsyncs so far, for metrics.
    private let failures = Atomic<Int>(0)

    public init(directory: String, mode: JournalMode, after scan: JournalScan, segmentBytes: Int = 64 << 20, files: any JournalFiles = SystemJournalFiles()) throws {
        self.mode = mode
        self.directory = directory
        self.segmentBytes = segmentBytes
        self.files = files
        self.pending = Pending(nextSequence: scan.lastSequence + 1, lastChecksum: scan.lastChecksum)
        durable.store(scan.lastSequence, ordering: .relaxed)
        if mode == .none { return }
        if let last = scan.segments.last, FileManager.default.fileExists(atPath: last) {
            descriptor = open(last, O_WRONLY | O_APPEND)
            segmentSize = Int((try? FileManager.default.attributesOfItem(atPath: last)[.size] as? Int) ?? 0)
        }
        if descriptor < 0 {
            try openSegment(firstSequence: scan.lastSequence + 1, previousChecksum: scan.lastChecksum)
        }
        let thread = Thread { [weak self] in self?.run() }
        thread.name = "tollgate-journal"
        self.thread = thread
        thread.start()
    }

    /// The last record appended (in memory or on disk) and its checksum: what a checkpoint
    /// taken now includes. Read it under the same lock that orders appends.
    public var appendedPosition: Checkpoint.Position {
        condition.lock()
        defer { condition.unlock() }
        return Checkpoint.Position(sequence: pending.nextSequence - 1, checksum: pending.lastChecksum)
    }

    /// The highest sequence known to be on disk.
    public var durableSequence: UInt64 { durable.load(ordering: .acquiring) }

    /// Why the journal is not writing, if it is not. It retries every interval and clears this
    /// once a write and fsync succeed again.
    public var failureReason: String? { failure.withLock { $0 } }

    public var failureCount: Int { failures.load(ordering: .relaxed) }

    /// Adds a record; returns its sequence number. Cheap: memory only.
    @discardableResult
    public func append(_ command: Command, key: String, instant: Instant) -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        let sequence = pending.nextSequence
        pending.nextSequence += 1
        if mode == .none {
            durable.store(sequence, ordering: .releasing)
            return sequence
        }
        let record = JournalRecord(sequence: sequence, instant: instant, key: key, command: command)
        pending.lastChecksum = record.write(to: &pending.buffer, previousChecksum: pending.lastChecksum)
        return sequence
    }

    /// Calls `done` once `sequence` is on disk (at once if it already is), on the writer's
    /// thread. In `sync` mode this wakes the writer.
    public func whenDurable(_ sequence: UInt64, _ done: @escaping @Sendable (Result<Void, JournalError>) -> Void) {
        if let reason = failureReason {
            done(.failure(JournalError(reason)))
            return
        }
        if sequence <= durableSequence {
            done(.success(()))
            return
        }
        condition.lock()
        pending.waiters.append((sequence, done))
        condition.signal()
        condition.unlock()
    }

    /// Writes what is pending, stops the thread and closes the file.
    public func close() {
        guard thread != nil else { return }
        condition.lock()
        pending.stopping = true
        condition.signal()
        condition.unlock()
        stopped.lock()
        while !isStopped { stopped.wait() }
        stopped.unlock()
        thread = nil
    }

    private func run() {
        let interval: TimeInterval
        if case .async(let microseconds) = mode { interval = Double(microseconds) / 1_000_000 } else { interval = 0.5 }
        while true {
            condition.lock()
            if case .async = mode, !pending.stopping {
                _ = condition.wait(until: Date(timeIntervalSinceNow: interval))
            } else {
                while pending.waiters.isEmpty && !pending.stopping {
                    _ = condition.wait(until: Date(timeIntervalSinceNow: interval))
                    if pending.buffer.readableBytes > 0 { break }
                }
            }
            let batch = pending.buffer
            pending.buffer = ByteBuffer()
            let through = pending.nextSequence - 1
            let throughChecksum = pending.lastChecksum
            let waiters = pending.waiters
            pending.waiters = []
            let stopping = pending.stopping
            condition.unlock()

            let result = flush(batch, through: through, checksum: throughChecksum)
            if case .failure = result, batch.readableBytes > 0 {
                // Keep the batch for the next attempt, ahead of anything appended since.
                condition.lock()
                var retry = batch
                retry.writeImmutableBuffer(pending.buffer)
                pending.buffer = retry
                condition.unlock()
            }
            for (sequence, done) in waiters {
                if case .failure = result { done(result) } else if sequence <= durableSequence { done(.success(())) } else { whenDurable(sequence, done) }
            }
            if stopping { break }
            if case .failure = result {
                // Wait before trying the disk again.
                Thread.sleep(forTimeInterval: max(interval, 0.05))
            }
        }
        if descriptor >= 0 { Glibc.close(descriptor) }
        stopped.lock()
        isStopped = true
        stopped.signal()
        stopped.unlock()
    }

    /// Writes and syncs a batch whose last record is `sequence` with checksum `checksum`.
    private func flush(_ batch: ByteBuffer, through sequence: UInt64, checksum: UInt32) -> Result<Void, JournalError> {
        guard batch.readableBytes > 0 else { return .success(()) }
        let written = batch.withUnsafeReadableBytes { files.write(descriptor, $0) }
        guard written == batch.readableBytes, files.sync(descriptor) == 0 else {
            let reason = "journal write failed: \(String(cString: strerror(errno)))"
            failures.wrappingAdd(1, ordering: .relaxed)
            failure.withLock { $0 = reason }
            // Cut off whatever part of the batch reached the file, so the retry starts clean.
            _ = ftruncate(descriptor, off_t(segmentSize))
            return .failure(JournalError(reason))
        }
        if failureReason != nil { failure.withLock { $0 = nil } }
        segmentSize += written
        durable.store(sequence, ordering: .releasing)
        if segmentSize >= segmentBytes {
            // Records still buffered continue the chain from this batch's last record, with the
            // next sequence numbers: exactly what the new segment's header says.
            Glibc.close(descriptor)
            descriptor = -1
            do {
                try openSegment(firstSequence: sequence + 1, previousChecksum: checksum)
            } catch {
                failure.withLock { $0 = "\(error)" }
                return .failure(JournalError("\(error)"))
            }
        }
        return .success(())
    }

    private func openSegment(firstSequence: UInt64, previousChecksum: UInt32) throws {
        let path = directory + "/" + SegmentHeader.fileName(firstSequence: firstSequence)
        let header = SegmentHeader(firstSequence: firstSequence, previousChecksum: previousChecksum).bytes
        let created = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o600)
        guard created >= 0 else { throw JournalError("cannot create \(path): \(String(cString: strerror(errno)))") }
        guard header.withUnsafeBytes({ files.write(created, $0) }) == header.count, files.sync(created) == 0 else {
            Glibc.close(created)
            throw JournalError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        syncDirectory()
        descriptor = created
        segmentSize = header.count
    }

    private func syncDirectory() {
        let directoryDescriptor = open(directory, O_RDONLY)
        if directoryDescriptor >= 0 {
            _ = fsync(directoryDescriptor)
            Glibc.close(directoryDescriptor)
        }
    }
}
