import Foundation
import NIOCore
import Synchronization
import Testing
import TollgateCluster

/// The JSON-gateway client against a real etcd.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct EtcdClientTests {
    @Test func putRangeDeleteAndTransactions() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }

        // Bytes of every value survive the base64 round trip.
        let binary: [UInt8] = (0...255).map { UInt8($0) }
        let first = try await client.put("/t/a", binary)
        try await client.put("/t/b", Array("two".utf8))
        try await client.put("/u/c", Array("other".utf8))
        let range = try await client.range("/t/", end: etcdPrefixEnd("/t/"))
        try #require(range.kvs.map(\.keyString) == ["/t/a", "/t/b"])
        #expect(range.kvs[0].value == binary)
        #expect(range.kvs[0].createRevision == first)
        #expect(range.count == 2 && !range.more)
        let limited = try await client.range("/t/", end: etcdPrefixEnd("/t/"), limit: 1)
        #expect(limited.kvs.count == 1 && limited.more)
        // A read at an earlier revision sees the store as it was then.
        let before = try await client.range("/t/", end: etcdPrefixEnd("/t/"), revision: first)
        #expect(before.kvs.map(\.keyString) == ["/t/a"])

        // A transaction: create only if absent.
        let created = try await client.txn(
            [.createRevision("/t/new", .equal, 0)], success: [.put(key: "/t/new", value: [1])], failure: [.range(key: "/t/new")])
        #expect(created.succeeded)
        let again = try await client.txn(
            [.createRevision("/t/new", .equal, 0)], success: [.put(key: "/t/new", value: [2])], failure: [.range(key: "/t/new")])
        #expect(!again.succeeded)
        #expect(again.results.first?.kvs.first?.value == [1])
        #expect(again.results.first?.kvs.first?.createRevision == created.revision)

        #expect(try await client.delete("/t/", end: etcdPrefixEnd("/t/")) == 3)
        #expect(try await client.range("/t/", end: etcdPrefixEnd("/t/")).kvs.isEmpty)
        #expect(try await client.range("/u/c").kvs.count == 1)
    }

    @Test func leasesExpireAndTheirKeysGoWithThem() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }

        let lease = try await client.grantLease(ttl: 2)
        #expect(lease.ttl == 2)
        try await client.put("/lease/k", [7], lease: lease.id)
        #expect(try await client.range("/lease/k").kvs.first?.lease == lease.id)
        // Kept alive past its TTL, it stays.
        for _ in 0..<4 {
            try await Task.sleep(for: .milliseconds(700))
            #expect(try await client.keepAlive(lease: lease.id) == 2)
        }
        #expect(try await client.range("/lease/k").kvs.count == 1)
        try await client.revoke(lease: lease.id)
        #expect(try await client.range("/lease/k").kvs.isEmpty)
        await #expect(throws: EtcdError.self) { try await client.keepAlive(lease: lease.id) }
        do {
            _ = try await client.keepAlive(lease: lease.id)
        } catch let error as EtcdError {
            #expect(error.kind == .leaseNotFound)
        }
    }

    @Test func aWatchReportsChangesInOrderAndEndsOnCompaction() async throws {
        let etcd = try await EtcdTestCluster.start()
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }

        let start = try await client.put("/w/0", [0])
        let seen = Mutex<[EtcdWatchEvent]>([])
        let watch = client.watch("/w/", end: etcdPrefixEnd("/w/"), from: start) { event in seen.withLock { $0.append(event) } }
        for index in 1...20 { try await client.put("/w/\(index)", [UInt8(index)]) }
        try await client.delete("/w/3")
        try await waitFor { seen.withLock { $0.flatMap(\.changes).count } == 22 }
        let changes = seen.withLock { $0.flatMap(\.changes) }
        let keys = changes.map { change -> String in
            switch change {
            case .put(let kv): "put \(kv.keyString)"
            case .delete(let kv): "delete \(kv.keyString)"
            }
        }
        #expect(keys == ["put /w/0"] + (1...20).map { "put /w/\($0)" } + ["delete /w/3"])
        watch.cancel()
        try await waitFor { seen.withLock { $0.last?.isEnd ?? false } }

        // A watch from a compacted revision ends at once and says where the store now starts.
        let latest = try await client.put("/w/last", [1])
        try await client.compact(to: latest)
        let old = Mutex<[EtcdWatchEvent]>([])
        _ = client.watch("/w/", end: etcdPrefixEnd("/w/"), from: start) { event in old.withLock { $0.append(event) } }
        try await waitFor { old.withLock { $0.last?.isEnd ?? false } }
        guard case .ended(_, let compactedAt)? = old.withLock({ $0.last }) else {
            Issue.record("the watch did not end")
            return
        }
        #expect(compactedAt == latest)
    }

    @Test func theClientMovesToAnotherMemberWhenOneDies() async throws {
        let etcd = try await EtcdTestCluster.start(size: 3)
        defer { etcd.stop() }
        let client = EtcdClient(endpoints: etcd.endpoints, callTimeout: .seconds(1))
        defer { client.close() }
        try await client.put("/m/k", [1])
        // The member the client talks to first is the first endpoint; kill it.
        etcd.kill(0)
        var wrote = false
        for _ in 0..<20 where !wrote {
            do {
                try await client.put("/m/k", [2])
                wrote = true
            } catch let error as EtcdError {
                #expect(error.outcomeUnknown, "\(error)")
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        #expect(wrote)
        #expect(try await client.range("/m/k").kvs.first?.value == [2])
        // Back again, the cluster has all three members.
        try etcd.restart(0)
        try await etcd.waitUntilWritable()
    }

    @Test func endpointsParseOrSayWhichIsWrong() {
        #expect(EtcdEndpoint("127.0.0.1:2379") == EtcdEndpoint(host: "127.0.0.1", port: 2379))
        #expect(EtcdEndpoint("http://etcd-0.etcd:2379/") == EtcdEndpoint(host: "etcd-0.etcd", port: 2379))
        #expect(EtcdEndpoint("https://etcd:2379") == nil)
        #expect(EtcdEndpoint("etcd") == nil)
        #expect(EtcdEndpoint("etcd:0") == nil)
        #expect(EtcdEndpoint(":2379") == nil)
        guard case .failure(let error) = EtcdEndpoint.list("a:1, b:x") else {
            Issue.record("a bad endpoint was accepted")
            return
        }
        #expect(error.message.contains("'b:x'"))
        #expect((try? EtcdEndpoint.list("a:1, b:2").get())?.count == 2)
        #expect(etcdPrefixEnd("/a/") == "/a0")
    }
}

/// Polls `condition` every 20 ms until it holds, or fails after `timeout`.
func waitFor(_ timeout: Duration = .seconds(10), _ condition: () -> Bool) async throws {
    let start = ContinuousClock.now
    while !condition() {
        if ContinuousClock.now - start > timeout { throw EtcdTestError("timed out after \(timeout)") }
        try await Task.sleep(for: .milliseconds(20))
    }
}

extension EtcdWatchEvent {
    var changes: [Change] {
        if case .changes(let changes, _) = self { return changes }
        return []
    }

    var isEnd: Bool {
        if case .ended = self { return true }
        return false
    }
}
