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
/// entry where it tried to write: if it holds exactly the entry it sent, that counts as
/// kept; if it holds another entry, another leader wrote there (this node was paused or cut
/// off past its lease) and this node is fenced — never "kept", which would acknowledge
/// records etcd does not have.
///
/// Once fenced it never appends again: every later batch fails, and `fenced` is called once,
/// for the node to step down.
public final class ReplicatedJournal: JournalReplica, Sendable {
    public let log: ShardLog
    public let token: Int64
    private let onFenced: @Sendable (String) -> Void

    private struct State {
        var keptThrough: UInt64
        /// The entry whose append had an unknown outcome, until it is settled.
        var uncertain: (entry: LogEntry, last: UInt64)?
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
        if let attempted = current.uncertain {
            let kept = current.keptThrough
            switch blocking({ [log] in try await Self.settle(log, after: kept, attempted: attempted) }) {
            case .success(.kept(let kept)):
                current.keptThrough = kept
                state.withLock {
                    $0.keptThrough = kept
                    $0.uncertain = nil
                    $0.settled += 1
                }
            case .success(.overwritten(let first)):
                let reason = "fenced: after an unanswered append, the replicated journal holds another leader's entry at \(first); this node no longer leads"
                state.withLock { $0.fencedBecause = reason }
                onFenced(reason)
                return .failed(reason)
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
                if (error as? EtcdError)?.outcomeUnknown ?? true { state.withLock { $0.uncertain = (entry.entry, last) } }
                return .failed("\(error)")
            }
        }
        return .kept
    }

    public enum Settled: Equatable, Sendable {
        /// etcd holds the journal through this sequence (the attempted entry's last, if it landed).
        case kept(UInt64)
        /// Another entry is where this node tried to write: another leader's.
        case overwritten(at: UInt64)
    }

    /// After an append of `attempted` whose outcome is unknown: whether etcd holds it. Only
    /// that entry can be this node's (an append stops at its first failure); anything else
    /// right after `keptThrough` was written by another leader.
    public static func settle(_ log: ShardLog, after keptThrough: UInt64, attempted: (entry: LogEntry, last: UInt64)) async throws -> Settled {
        let read = try await log.read(from: keptThrough + 1, limit: 1)
        guard let next = read.entries.first, next.first == keptThrough + 1 else { return .kept(keptThrough) }
        guard next.first == attempted.entry.first, next.bytes == attempted.entry.bytes else { return .overwritten(at: next.first) }
        return .kept(attempted.last)
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
