import Dispatch
import NIOCore
import Synchronization
import TollgateJournal

/// A leader's replica: each journal batch goes to the shard's log in etcd before the local
/// file (JournalWriter's `replicated` mode), split into entries of at most
/// `ShardLog.entryBytesMax` at record boundaries, each appended in a transaction fenced by the
/// leadership's token.
///
/// It remembers how far etcd holds the journal (`keptThrough`), so a batch offered again
/// after a failure — possibly with more records behind it — sends only what etcd lacks. After
/// an error whose outcome is unknown (a timeout, a broken connection), it first reads etcd's
/// entry where it tried to write: if that landed, it counts as kept.
///
/// Once fenced it never appends again: every later batch fails, and `fenced` is called once,
/// for the node to step down.
public final class ReplicatedJournal: JournalReplica, Sendable {
    public let log: ShardLog
    public let token: Int64
    private let onFenced: @Sendable (String) -> Void

    private struct State {
        var keptThrough: UInt64
        var uncertain = false
        var fencedBecause: String?
        var settled = 0
    }

    private let state: Mutex<State>

    /// `keptThrough`: the last sequence etcd's log holds now (a new leader has read it all).
    public init(log: ShardLog, token: Int64, keptThrough: UInt64, fenced: @escaping @Sendable (String) -> Void) {
        self.log = log
        self.token = token
        self.onFenced = fenced
        self.state = Mutex(State(keptThrough: keptThrough))
    }

    public var keptThrough: UInt64 { state.withLock { $0.keptThrough } }
    public var fencedBecause: String? { state.withLock { $0.fencedBecause } }
    /// How many appends had an unknown outcome and were settled by reading etcd back.
    public var settledCount: Int { state.withLock { $0.settled } }

    public func keep(_ records: ByteBuffer, first: UInt64, through: UInt64) -> JournalReplicaResult {
        var current = state.withLock { $0 }
        if let reason = current.fencedBecause { return .failed(reason) }
        if current.uncertain {
            switch settle(after: current.keptThrough) {
            case .success(let kept):
                current.keptThrough = kept
                state.withLock {
                    $0.keptThrough = kept
                    $0.uncertain = false
                    $0.settled += 1
                }
            case .failure(let error):
                return .failed("cannot read the replicated journal back after an unanswered append: \(error)")
            }
        }
        if through <= current.keptThrough { return .kept }
        for entry in Self.entries(of: records, first: first, after: current.keptThrough) {
            let last = entry.last
            switch blocking({ try await self.log.append(entry.entry, token: self.token) }) {
            case .success(.appended):
                state.withLock { $0.keptThrough = last }
            case .success(.fenced(let by)):
                let reason = "fenced: the shard's leader key has token \(by) now, not this node's \(token); this node no longer leads"
                state.withLock { $0.fencedBecause = reason }
                onFenced(reason)
                return .failed(reason)
            case .failure(let error):
                if (error as? EtcdError)?.outcomeUnknown ?? true { state.withLock { $0.uncertain = true } }
                return .failed("\(error)")
            }
        }
        return .kept
    }

    /// After an append whose outcome is unknown: the last sequence etcd holds, reading the
    /// entries from `keptThrough + 1` on.
    private func settle(after keptThrough: UInt64) -> Result<UInt64, any Error> {
        blocking { [log] in
            var kept = keptThrough
            while true {
                let read = try await log.read(from: kept + 1, limit: 16)
                guard let next = read.entries.first, next.first == kept + 1 else { return kept }
                for entry in read.entries {
                    guard entry.first == kept + 1 else { return kept }
                    let records = try entry.records(chainingTo: nil).get()
                    kept = records.last!.record.sequence
                }
                if !read.more { return kept }
            }
        }
    }

    /// Cuts a batch into entries of whole records after `keptThrough`, each at most
    /// `ShardLog.entryBytesMax` (a single larger record goes alone, up to
    /// `ShardLog.loneRecordBytesMax`).
    static func entries(of records: ByteBuffer, first: UInt64, after keptThrough: UInt64) -> [(entry: LogEntry, last: UInt64)] {
        var entries: [(entry: LogEntry, last: UInt64)] = []
        var sequence = first
        var start: Int?
        var startSequence: UInt64 = 0
        let bytes = records.readableBytesView
        var offset = bytes.startIndex
        func close(at end: Int) {
            if let begin = start {
                entries.append((LogEntry(first: startSequence, bytes: Array(bytes[begin..<end])), sequence - 1))
                start = nil
            }
        }
        while offset + 8 <= bytes.endIndex {
            let length = bytes[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
            let size = 8 + length
            if sequence > keptThrough {
                if let begin = start, offset + size - begin > ShardLog.entryBytesMax { close(at: offset) }
                if start == nil {
                    start = offset
                    startSequence = sequence
                }
            }
            offset += size
            sequence += 1
        }
        close(at: min(offset, bytes.endIndex))
        return entries
    }
}

/// Runs `body` on the concurrency pool and waits for it on this thread: for the journal's
/// writer thread, never for an event loop or a pool thread.
func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) -> Result<T, any Error> {
    let done = DispatchSemaphore(value: 0)
    let result = Mutex<Result<T, any Error>?>(nil)
    Task {
        let outcome: Result<T, any Error>
        do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
        result.withLock { $0 = outcome }
        done.signal()
    }
    done.wait()
    return result.withLock { $0! }
}
