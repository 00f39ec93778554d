import Foundation
import NIOCore
import Synchronization
import Testing
@testable import TollgateCluster
import TollgateJournal
import TollgateLedger
import TollgateLedgerTestSupport

/// A journal writer in `replicated` mode with its batches kept in etcd first.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct ReplicatedJournalTests {
    let keys = ClusterKeys(cluster: "test")!

    static func directory() throws -> String {
        let path = NSTemporaryDirectory() + "tollgate-replicated-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func localRecords(_ directory: String) throws -> [JournalRecord] {
        var records: [JournalRecord] = []
        _ = try Journal.scan(directory: directory, repair: false) { records.append($0) }
        return records
    }

    /// The shard's whole log from record 1, page by page: each entry with its records, each
    /// chained to the one before (a break throws).
    static func wholeLog(_ log: ShardLog) async throws -> [(entry: LogEntry, records: [ReadRecord])] {
        var whole: [(entry: LogEntry, records: [ReadRecord])] = []
        var next: UInt64 = 1
        var chain: UInt32 = 0
        while true {
            let read = try await log.read(from: next)
            for entry in read.entries {
                let records = try entry.records(chainingTo: chain).get()
                whole.append((entry, records))
                chain = records.last!.checksum
                next = records.last!.record.sequence + 1
            }
            if !read.more || read.entries.isEmpty { return whole }
        }
    }

    /// An append whose answer never came is settled by what etcd holds where it wrote: its
    /// own entry counts as kept; nothing there, as not kept; another leader's entry (this
    /// leader was paused or cut off past its lease meanwhile) as overwritten — fenced, never
    /// "kept", which would acknowledge records etcd does not have. (A paused leader once
    /// counted the new leader's entry as its own and wrote its own records locally.)
    @Test func anUnansweredAppendIsSettledByItsOwnBytesOnly() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints, callTimeout: .seconds(15))
        defer { client.close() }
        let log = ShardLog(client: client, keys: keys, shard: "s0")
        let first = ShardElection(client: client, keys: keys, shard: "s0", record: LeaderRecord(node: "a", address: "a:1"), ttlSeconds: 60)
        let a = try await first.campaign()
        #expect(try await log.append(LogEntry(first: 1, bytes: [1, 1, 1]), token: a.token) == .appended(revision: try await log.newest()!.revision))

        let attempted = (entry: LogEntry(first: 4, bytes: [0xA, 0xA]), last: UInt64(6))
        #expect(try await ReplicatedJournal.settle(log, after: 3, attempted: attempted) == .kept(3), "nothing landed")
        _ = try await log.append(attempted.entry, token: a.token)
        #expect(try await ReplicatedJournal.settle(log, after: 3, attempted: attempted) == .kept(6), "its own entry landed")

        // Another leader takes over and writes where the first one's next append went.
        await first.resign(a)
        let second = ShardElection(client: client, keys: keys, shard: "s0", record: LeaderRecord(node: "b", address: "b:1"), ttlSeconds: 60)
        let b = try await second.campaign()
        let lost = (entry: LogEntry(first: 7, bytes: [0xB]), last: UInt64(9))
        _ = try await log.append(LogEntry(first: 7, bytes: [0xC, 0xC]), token: b.token)
        #expect(try await ReplicatedJournal.settle(log, after: 6, attempted: lost) == .overwritten(at: 7))
        await second.resign(b)
    }

    static func command(_ index: Int) -> Command {
        .addMember(account: "acme", member: "m\(index)")
    }

    @Test func everyBatchIsInEtcdBeforeItIsDurableAndAFollowerCopiesIt() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        // A generous deadline: this checks what is kept, not how fast, on however busy a machine.
        let client = EtcdClient(endpoints: etcd.endpoints, callTimeout: .seconds(15))
        defer { client.close() }
        let log = ShardLog(client: client, keys: keys, shard: "s0")
        // A lease long enough for the whole test, and renewed: a lapsed lease would fence the
        // appends (as it should), which is not what this test is about.
        let election = ShardElection(client: client, keys: keys, shard: "s0", record: LeaderRecord(node: "a", address: "a:1"), ttlSeconds: 60)
        let leadership = try await election.campaign()
        let keeper = election.keep(leadership) { _ in }
        defer { keeper.stop() }
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }

        // A writer without a thread: the test decides when it writes, so the whole journal goes
        // as one batch, larger than an entry may be.
        let writer = try JournalWriter(directory: directory, mode: .replicated(intervalMicroseconds: 2_000), after: JournalScan(), thread: false)
        let replica = ReplicatedJournal(log: log, token: leadership.token, keptThrough: 0) { _ in }
        writer.replicate(to: replica)
        let padding = String(repeating: "k", count: 100)
        var last: UInt64 = 0
        for index in 1...12_000 {
            last = writer.append(Self.command(index), key: "\(padding)-\(index)", instant: Instant(microsecondsSinceEpoch: Int64(index)))
        }
        // Blocking (the replica waits for etcd): on a thread of its own, tried until it goes
        // through (a busy etcd may time out a call).
        let durable = await OffPool.blocking("flush") { () -> Bool in
            let start = ContinuousClock.now
            while !writer.flushPending(), ContinuousClock.now - start < .seconds(90) { Thread.sleep(forTimeInterval: 0.2) }
            return writer.durableSequence == 12_000
        }
        try #require(durable, "the journal was not kept in etcd: \(writer.failureReason ?? "no failure reported")")
        #expect(replica.keptThrough == last)

        // etcd holds exactly the local journal's records, in entries within the size limit.
        let whole = try await Self.wholeLog(log)
        let fromEtcd = whole.map(\.entry)
        #expect(fromEtcd.allSatisfy { $0.bytes.count <= ShardLog.entryBytesMax })
        try #require(fromEtcd.count > 1)
        let replicated = whole.flatMap { $0.records.map(\.record) }
        let local = try Self.localRecords(directory)
        #expect(replicated.count == 12_000)
        #expect(replicated == local)

        // A follower's journal takes the entries as they are and ends up the same.
        let followerDirectory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: followerDirectory) }
        let follower = try JournalWriter(directory: followerDirectory, mode: .replicated(intervalMicroseconds: 2_000), after: JournalScan())
        var previous: UInt32 = 0
        for entry in fromEtcd {
            let records = try entry.records(chainingTo: previous).get()
            try follower.appendRecords(
                ByteBuffer(bytes: entry.bytes), first: entry.first, through: records.last!.record.sequence, previousChecksum: previous, checksum: records.last!.checksum)
            previous = records.last!.checksum
        }
        // Records that do not continue it are refused.
        #expect(throws: JournalError.self) {
            try follower.appendRecords(ByteBuffer(bytes: fromEtcd[0].bytes), first: 1, through: 5, previousChecksum: 0, checksum: 1)
        }
        follower.close()
        writer.close()
        #expect(try Self.localRecords(followerDirectory) == local)
    }

    @Test func aFencedLeaderKeepsNothingMoreAndIsTold() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }
        let log = ShardLog(client: client, keys: keys, shard: "s0")
        // a's lease ends when the test revokes it, not before, however slow the machine.
        let a = ShardElection(client: client, keys: keys, shard: "s0", record: LeaderRecord(node: "a", address: "a:1"), ttlSeconds: 60)
        let b = ShardElection(client: client, keys: keys, shard: "s0", record: LeaderRecord(node: "b", address: "b:1"), ttlSeconds: 60)
        let leadership = try await a.campaign()
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = try JournalWriter(directory: directory, mode: .replicated(intervalMicroseconds: 2_000), after: JournalScan())
        let fenced = Mutex<[String]>([])
        let replica = ReplicatedJournal(log: log, token: leadership.token, keptThrough: 0) { reason in fenced.withLock { $0.append(reason) } }
        writer.replicate(to: replica)
        for index in 1...10 { writer.append(Self.command(index), key: "k\(index)", instant: Instant(microsecondsSinceEpoch: Int64(index))) }
        #expect(await OffPool.blocking("wait") { writer.waitUntilDurable(10, timeoutMilliseconds: 60_000) })

        // a's lease is taken away (as if it had been paused past it); b leads.
        try await client.revoke(lease: leadership.lease)
        let next = try await b.campaign()
        #expect(next.token > leadership.token)

        for index in 11...20 { writer.append(Self.command(index), key: "k\(index)", instant: Instant(microsecondsSinceEpoch: Int64(index))) }
        #expect(!(await OffPool.blocking("wait") { writer.waitUntilDurable(11, timeoutMilliseconds: 1_500) }))
        #expect(writer.failureReason?.contains("fenced") == true)
        #expect(fenced.withLock { $0.count } == 1)
        #expect(replica.fencedBecause != nil)
        // Neither etcd nor the local file has anything a fenced leader decided.
        #expect(try await log.read(from: 11).entries.isEmpty)
        writer.close()
        #expect(try Self.localRecords(directory).count == 10)
    }

    /// etcd paused mid-append: the client times out, and etcd may still apply the append when
    /// it resumes. The replica reads back what landed and sends only the rest: the log ends up
    /// with every record once, in order.
    @Test func anAppendWhoseOutcomeIsUnknownIsSettledFromEtcd() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints, callTimeout: .milliseconds(500))
        defer { client.close() }
        let log = ShardLog(client: client, keys: keys, shard: "s0")
        let election = ShardElection(client: client, keys: keys, shard: "s0", record: LeaderRecord(node: "a", address: "a:1"), ttlSeconds: 60)
        let leadership = try await election.campaign()
        let keeper = election.keep(leadership) { _ in }
        defer { keeper.stop() }
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = try JournalWriter(directory: directory, mode: .replicated(intervalMicroseconds: 2_000), after: JournalScan())
        let replica = ReplicatedJournal(log: log, token: leadership.token, keptThrough: 0) { _ in }
        writer.replicate(to: replica)

        var sequence: UInt64 = 0
        for round in 0..<6 {
            for index in 0..<50 {
                let n = round * 50 + index
                sequence = writer.append(Self.command(n), key: "k\(n)", instant: Instant(microsecondsSinceEpoch: Int64(n)))
            }
            if round == 2 { etcd.pause(0) }
            if round == 3 {
                try await Task.sleep(for: .milliseconds(1_500))
                etcd.resume(0)
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let through = sequence
        #expect(await OffPool.blocking("wait") { writer.waitUntilDurable(through, timeoutMilliseconds: 60_000) })
        writer.close()

        var next: UInt64 = 1
        var replicated: [JournalRecord] = []
        for (entry, records) in try await Self.wholeLog(log) {
            #expect(entry.first == next)
            replicated += records.map(\.record)
            next = records.last!.record.sequence + 1
        }
        #expect(replica.settledCount >= 1)
        #expect(replicated.count == 300)
        #expect(replicated == (try Self.localRecords(directory)))
    }

    @Test func entriesAreCutAtRecordBoundariesAfterWhatIsKept() throws {
        let records = makeRecords(50)
        let batch = ByteBuffer(bytes: records.flatMap { $0 })
        // All of it in one entry.
        let whole = ReplicatedJournal.entries(of: batch, first: 1, after: 0).map(\.entry)
        try #require(whole.map(\.first) == [1])
        #expect(whole[0].bytes == records.flatMap { $0 })
        // What etcd holds already is skipped.
        let rest = ReplicatedJournal.entries(of: batch, first: 1, after: 30).map(\.entry)
        try #require(rest.map(\.first) == [31])
        #expect(rest[0].bytes == records[30...].flatMap { $0 })
        #expect(ReplicatedJournal.entries(of: batch, first: 1, after: 50).isEmpty)
    }
}
