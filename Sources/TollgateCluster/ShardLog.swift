import NIOCore
import TollgateJournal

/// One entry of a shard's replicated journal: whole journal records, in order.
public struct LogEntry: Sendable, Equatable {
    /// The sequence of its first record (the key says it too).
    public var first: UInt64
    public var bytes: [UInt8]
    /// The etcd revision that wrote it.
    public var revision: Int64

    public init(first: UInt64, bytes: [UInt8], revision: Int64 = 0) {
        self.first = first
        self.bytes = bytes
        self.revision = revision
    }

    /// What its records are, checked: sequences from `first` without a gap, each chained to
    /// the one before. `previousChecksum` is the checksum the first record must chain to, when
    /// known.
    public func records(chainingTo previousChecksum: UInt32?) -> Result<[ReadRecord], LogDamage> {
        var records: [ReadRecord] = []
        var expected = first
        var chain = previousChecksum
        var offset = 0
        let problem: LogDamage? = bytes.withUnsafeBytes { buffer in
            while offset < buffer.count {
                switch JournalRecord.read(buffer, at: offset) {
                case .failure(let problem):
                    return LogDamage(first: first, reason: "record at byte \(offset): \(problem)")
                case .success(let read):
                    // The last sequence is refused: every later step adds one to a sequence.
                    guard read.record.sequence == expected, expected < UInt64.max else {
                        return LogDamage(first: first, reason: "sequence \(read.record.sequence) where \(expected) was expected")
                    }
                    if let chain, read.previousChecksum != chain {
                        return LogDamage(first: first, reason: "record \(read.record.sequence) does not chain to the one before")
                    }
                    records.append(read)
                    chain = read.checksum
                    expected += 1
                    offset += read.size
                }
            }
            return records.isEmpty ? LogDamage(first: first, reason: "the entry holds no record") : nil
        }
        if let problem { return .failure(problem) }
        return .success(records)
    }
}

/// A log entry that does not hold what it must.
public struct LogDamage: Error, Sendable, Equatable, CustomStringConvertible {
    public var first: UInt64
    public var reason: String
    public var description: String { "the replicated journal's entry at \(first) is damaged: \(reason)" }
}

/// What an append came to.
public enum AppendOutcome: Sendable, Equatable {
    /// The entry is in etcd (committed by a quorum), at this revision.
    case appended(revision: Int64)
    /// This node no longer leads: the leader key's create revision is `by` now (0: no leader),
    /// not the token the append carried. Nothing was written.
    case fenced(by: Int64)
}

public struct ShardLogError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A shard's journal in etcd: appended by its leader only, in transactions fenced by the
/// leader key's create revision; read and watched by every node of the shard.
public struct ShardLog: Sendable {
    public let client: EtcdClient
    public let keys: ClusterKeys
    public let shard: String
    /// An entry's size limit: well under etcd's `--max-request-bytes` (1.5 MiB by default),
    /// and small enough that one append — sent as base64 in JSON, applied and fsynced by a
    /// quorum — stays short next to a call's deadline (etcd advises small requests). A bigger
    /// batch is several entries.
    public static let entryBytesMax = 256 << 10
    /// What one record alone may take: a record carries one request of at most 1 MiB (a
    /// cluster's `maxFrameBody` is held to that), such as a family moved in. As base64 in
    /// JSON it is still under etcd's 1.5 MiB request limit.
    public static let loneRecordBytesMax = (1 << 20) + (4 << 10)

    public init(client: EtcdClient, keys: ClusterKeys, shard: String) {
        self.client = client
        self.keys = keys
        self.shard = shard
    }

    /// Appends an entry if, and only if, the leader key still has create revision `token`
    /// and no entry starts at `entry.first` yet. Safe to repeat after an error whose outcome
    /// is unknown: if the same bytes are already there, it answers `.appended`.
    public func append(_ entry: LogEntry, token: Int64) async throws -> AppendOutcome {
        guard entry.bytes.count <= Self.loneRecordBytesMax else {
            throw ShardLogError("an entry of \(entry.bytes.count) bytes is over the limit of \(Self.loneRecordBytesMax)")
        }
        let leaderKey = keys.leader(shard)
        let key = keys.logKey(shard, first: entry.first)
        let result = try await client.txn(
            [.createRevision(leaderKey, .equal, token), .createRevision(key, .equal, 0)],
            success: [.put(key: key, value: entry.bytes)],
            failure: [.range(key: leaderKey), .range(key: key)])
        if result.succeeded { return .appended(revision: result.revision) }
        let leader = result.results.first?.kvs.first
        let existing = result.results.count > 1 ? result.results[1].kvs.first : nil
        if let existing, existing.value == entry.bytes { return .appended(revision: existing.modRevision) }
        let now = leader?.createRevision ?? 0
        if now != token { return .fenced(by: now) }
        throw ShardLogError(
            "the replicated journal already has a different entry at \(entry.first) while this node leads (token \(token)): the journals have diverged")
    }

    /// Entries from the one that starts at `first` on, at most `limit`, and the revision they
    /// were read at (watch from the one after it to hear what follows).
    public func read(from first: UInt64, limit: Int64 = 64) async throws -> (entries: [LogEntry], revision: Int64, more: Bool) {
        let range = try await client.range(keys.logKey(shard, first: first), end: etcdPrefixEnd(keys.logPrefix(shard)), limit: limit)
        var entries: [LogEntry] = []
        for kv in range.kvs {
            guard let first = keys.firstSequence(ofLogKey: kv.keyString, shard: shard) else {
                throw ShardLogError("'\(kv.keyString)' in the replicated journal's prefix is not a journal entry's key")
            }
            entries.append(LogEntry(first: first, bytes: kv.value, revision: kv.modRevision))
        }
        return (entries, range.revision, range.more)
    }

    /// The first sequence of the oldest entry still in etcd, or nil if the log is empty.
    public func oldestFirst() async throws -> UInt64? {
        let range = try await client.range(keys.logPrefix(shard), end: etcdPrefixEnd(keys.logPrefix(shard)), limit: 1)
        return range.kvs.first.flatMap { keys.firstSequence(ofLogKey: $0.keyString, shard: shard) }
    }

    /// The newest entry, or nil if the log is empty: where the log ends.
    public func newest() async throws -> LogEntry? {
        let range = try await client.range(keys.logPrefix(shard), end: etcdPrefixEnd(keys.logPrefix(shard)), limit: 1, newestFirst: true)
        guard let kv = range.kvs.first, let first = keys.firstSequence(ofLogKey: kv.keyString, shard: shard) else { return nil }
        return LogEntry(first: first, bytes: kv.value, revision: kv.modRevision)
    }

    /// The entry that holds record `sequence`, or nil if no entry starting at or before it
    /// is in the log.
    public func entry(holding sequence: UInt64) async throws -> LogEntry? {
        let range = try await client.range(keys.logPrefix(shard), end: keys.logKey(shard, first: sequence &+ 1), limit: 1, newestFirst: true)
        guard let kv = range.kvs.first, let first = keys.firstSequence(ofLogKey: kv.keyString, shard: shard) else { return nil }
        return LogEntry(first: first, bytes: kv.value, revision: kv.modRevision)
    }

    /// The sequence of the log's last record (0 if the log is empty).
    public func lastSequence() async throws -> UInt64 {
        guard let newest = try await newest() else { return 0 }
        switch newest.records(chainingTo: nil) {
        case .success(let records): return records.last!.record.sequence
        case .failure(let damage): throw damage
        }
    }

    /// Deletes the entries that start before `first` (the log's trim), fenced like an append
    /// so only the leader trims. Returns how many went, or nil if fenced.
    public func trim(before first: UInt64, token: Int64) async throws -> Int64? {
        let result = try await client.txn(
            [.createRevision(keys.leader(shard), .equal, token)],
            success: [.deleteRange(key: keys.logPrefix(shard), rangeEnd: keys.logKey(shard, first: first))])
        guard result.succeeded else { return nil }
        if case .deleteRange(let deleted)? = result.results.first { return deleted }
        return 0
    }

    /// Watches for entries appended after `revision`, calling `entries` with each batch in
    /// order. The watch ends (`.ended`) when etcd ends it; the caller reads again from where
    /// it stands and watches anew.
    public func watch(after revision: Int64, _ report: @escaping @Sendable (WatchReport) -> Void) -> EtcdWatch {
        let keys = self.keys
        let shard = self.shard
        return client.watch(keys.logPrefix(shard), end: etcdPrefixEnd(keys.logPrefix(shard)), from: revision &+ 1) { event in
            switch event {
            case .created: break
            case .changes(let changes, let revision):
                var entries: [LogEntry] = []
                for change in changes {
                    // Trims delete entries: a follower has nothing to do for them.
                    guard case .put(let kv) = change, let first = keys.firstSequence(ofLogKey: kv.keyString, shard: shard) else { continue }
                    entries.append(LogEntry(first: first, bytes: kv.value, revision: kv.modRevision))
                }
                if !entries.isEmpty { report(.entries(entries, revision: revision)) }
            case .ended(let reason, _):
                report(.ended(reason))
            }
        }
    }

    public enum WatchReport: Sendable {
        case entries([LogEntry], revision: Int64)
        case ended(String)
    }
}
