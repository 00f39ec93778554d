import Foundation
import NIOCore
import Synchronization
import Testing
import TollgateCluster
import TollgateJournal
import TollgateLedger

/// Election, fencing and the replicated journal against a real etcd.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct ShardLogTests {
    let keys = ClusterKeys(cluster: "test")!

    /// A candidate whose lease lasts the whole test unless the test ends it (a short lease
    /// could lapse on a busy machine between two steps, and fence appends the test expects).
    func election(_ client: EtcdClient, _ node: String, ttl: Int64 = 60) -> ShardElection {
        ShardElection(client: client, keys: keys, shard: "s0", record: LeaderRecord(node: node, address: "127.0.0.1:\(node.count)"), ttlSeconds: ttl)
    }

    @Test func oneCandidateLeadsAndAnotherTakesOverWhenItsLeaseGoes() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }
        let a = election(client, "a", ttl: 5)
        let b = election(client, "b", ttl: 5)

        guard case .elected(let first) = try await a.tryToLead() else {
            Issue.record("the first candidate did not lead")
            return
        }
        // a renews its lease from the start (a busy machine may take seconds between steps).
        let keeper = a.keep(first) { _ in }
        guard case .led(let seen) = try await b.tryToLead() else {
            Issue.record("a second candidate led too")
            return
        }
        #expect(seen.record == a.record && seen.token == first.token)
        #expect(try await b.current().record?.node == "a")

        // While a renews its lease, b waits; when a stops renewing (killed, paused), b leads
        // within about a TTL, with a later token.
        let started = ContinuousClock.now
        let campaign = Task { try await b.campaign() }
        try await Task.sleep(for: .seconds(3))
        #expect(try await b.current().record?.node == "a", "b took over while a still renewed its lease")
        keeper.stop()
        let second = try await campaign.value
        let waited = ContinuousClock.now - started
        #expect(second.token > first.token)
        let now = try await a.current()
        #expect(now.record == b.record && now.token == second.token)
        #expect(waited < .seconds(20), "took over after \(waited)")

        // Resigning frees the shard at once.
        await b.resign(second)
        #expect(try await a.current().record == nil)
    }

    @Test func aDeposedLeaderCanNeverAppend() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }
        let log = ShardLog(client: client, keys: keys, shard: "s0")
        let records = makeRecords(6)

        guard case .elected(let old) = try await election(client, "a").tryToLead() else {
            Issue.record("a did not lead")
            return
        }
        let one = entry(records, 1...2)
        guard case .appended = try await log.append(one, token: old.token) else {
            Issue.record("the leader could not append")
            return
        }
        // a's lease is gone (as if a were paused past it); b is elected.
        try await client.revoke(lease: old.lease)
        let new = try await election(client, "b").campaign()

        // Everything a tries now is refused, and names the new leader's token.
        #expect(try await log.append(entry(records, 3...4), token: old.token) == .fenced(by: new.token))
        #expect(try await log.trim(before: 3, token: old.token) == nil)
        // Its earlier append, repeated (say after a timeout), is known to have landed.
        if case .appended = try await log.append(one, token: old.token) {} else { Issue.record("a repeated append was not recognised") }

        // The new leader continues the log.
        guard case .appended = try await log.append(entry(records, 3...4), token: new.token) else {
            Issue.record("the new leader could not append")
            return
        }
        // A different entry where one exists, while leading, is a divergence and an error.
        await #expect(throws: ShardLogError.self) { try await log.append(entry(records, 3...3), token: new.token) }

        let read = try await log.read(from: 1)
        try #require(read.entries.map(\.first) == [1, 3])
        #expect(read.entries[0].bytes == one.bytes)
        var chain: UInt32 = 0
        var sequences: [UInt64] = []
        for entry in read.entries {
            let parsed = try entry.records(chainingTo: chain).get()
            sequences += parsed.map(\.record.sequence)
            chain = parsed.last!.checksum
        }
        #expect(sequences == [1, 2, 3, 4])
        #expect(try await log.oldestFirst() == 1)
        #expect(try await log.newest()?.first == 3)
        #expect(try await log.lastSequence() == 4)
        #expect(try await log.trim(before: 3, token: new.token) == 1)
        #expect(try await log.oldestFirst() == 3)
    }

    @Test func aWatchingFollowerSeesEveryEntryInOrder() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }
        let log = ShardLog(client: client, keys: keys, shard: "s0")
        let records = makeRecords(40)
        let leader = try await election(client, "a").campaign()
        _ = try await log.append(entry(records, 1...5), token: leader.token)

        // A follower reads what is there, then watches from that revision.
        let start = try await log.read(from: 1)
        let seen = Mutex<[UInt64]>(start.entries.map(\.first))
        let watch = log.watch(after: start.revision) { report in
            if case .entries(let entries, _) = report { seen.withLock { $0 += entries.map(\.first) } }
        }
        defer { watch.cancel() }
        var next: UInt64 = 6
        while next <= 40 {
            _ = try await log.append(entry(records, next...(next + 4)), token: leader.token)
            next += 5
        }
        try await waitFor { seen.withLock { $0.count } == 8 }
        #expect(seen.withLock { $0 } == [1, 6, 11, 16, 21, 26, 31, 36])
    }

    @Test func aDamagedEntryIsFoundAndNamed() {
        let records = makeRecords(3)
        var bytes = entry(records, 1...3).bytes
        #expect((try? LogEntry(first: 1, bytes: bytes).records(chainingTo: 0).get())?.count == 3)
        // Starting elsewhere than its key says.
        #expect(throws: LogDamage.self) { try LogEntry(first: 2, bytes: bytes).records(chainingTo: nil).get() }
        // Not chained to the record before it.
        #expect(throws: LogDamage.self) { try LogEntry(first: 1, bytes: bytes).records(chainingTo: 99).get() }
        // A flipped byte, a cut, nothing.
        bytes[bytes.count - 3] ^= 0x40
        #expect(throws: LogDamage.self) { try LogEntry(first: 1, bytes: bytes).records(chainingTo: 0).get() }
        #expect(throws: LogDamage.self) { try LogEntry(first: 1, bytes: Array(bytes.prefix(40))).records(chainingTo: 0).get() }
        #expect(throws: LogDamage.self) { try LogEntry(first: 1, bytes: []).records(chainingTo: 0).get() }
        // The last sequence there is: refused, since whatever follows would overflow.
        var last = ByteBuffer()
        _ = JournalRecord(sequence: .max, instant: Instant(microsecondsSinceEpoch: 1), key: "k", command: .addMember(account: "a", member: "m"))
            .write(to: &last, previousChecksum: 0)
        #expect(throws: LogDamage.self) { try LogEntry(first: .max, bytes: Array(last.readableBytesView)).records(chainingTo: nil).get() }
    }

    @Test func theKeeperSaysWhenTheLeaseIsTakenAway() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }
        let a = election(client, "a", ttl: 3)
        let leadership = try await a.campaign()
        let lost = Mutex<String?>(nil)
        let keeper = a.keep(leadership) { reason in lost.withLock { $0 = reason } }
        defer { keeper.stop() }
        // Revoked from outside (an operator, or etcd 3.4's old leader: etcd issue #15247).
        try await client.revoke(lease: leadership.lease)
        try await waitFor { lost.withLock { $0 } != nil }
        #expect(lost.withLock { $0 }?.contains("expired") == true)
        #expect(try await a.current().record == nil)
    }

    @Test func namesAndKeys() {
        #expect(ClusterKeys(cluster: "prod-eu.1") != nil)
        #expect(ClusterKeys(cluster: "") == nil)
        #expect(ClusterKeys(cluster: "../x") == nil)
        #expect(ClusterKeys(cluster: "A") == nil)
        #expect(ClusterKeys(cluster: String(repeating: "a", count: 64)) == nil)
        let key = keys.logKey("s0", first: 42)
        #expect(key == "/tollgate/test/shards/s0/log/00000000000000000042")
        #expect(keys.firstSequence(ofLogKey: key, shard: "s0") == 42)
        #expect(keys.firstSequence(ofLogKey: keys.logKey("s0", first: .max), shard: "s0") == .max)
        #expect(keys.firstSequence(ofLogKey: key, shard: "s1") == nil)
        #expect(keys.firstSequence(ofLogKey: keys.logPrefix("s0") + "12", shard: "s0") == nil)
        #expect(keys.logKey("s0", first: 9) < keys.logKey("s0", first: 10))
    }
}

/// Journal records 1...count, chained from checksum 0, as the journal writes them.
func makeRecords(_ count: Int) -> [[UInt8]] {
    var chain: UInt32 = 0
    return (1...count).map { sequence in
        var buffer = ByteBuffer()
        let record = JournalRecord(
            sequence: UInt64(sequence), instant: Instant(microsecondsSinceEpoch: Int64(sequence)), key: "k\(sequence)",
            command: .addMember(account: "acme", member: "m\(sequence)"))
        chain = record.write(to: &buffer, previousChecksum: chain)
        return Array(buffer.readableBytesView)
    }
}

func entry(_ records: [[UInt8]], _ sequences: ClosedRange<UInt64>) -> LogEntry {
    LogEntry(first: sequences.lowerBound, bytes: sequences.flatMap { records[Int($0) - 1] })
}
