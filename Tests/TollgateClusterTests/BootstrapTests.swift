import Foundation
import Testing
import TollgateClient
import TollgateCluster
import TollgateLedger
import TollgateWire

/// The log in etcd trimmed to what every node has checkpointed, and replicas that start from
/// another node's files (ClusterBootstrap.swift) while the leader goes on deciding.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct BootstrapTests {
    let keys = ClusterKeys(cluster: "test")!
    /// Checkpoints every second, and an idempotency table of 50 keys, so the keys of most
    /// spends are on disk, in runs the new node must copy too.
    static let settings = ["TOLLGATE_CHECKPOINT_INTERVAL_SECONDS": "1", "TOLLGATE_IDEMPOTENCY_KEYS_MAX": "50"]

    func node(_ name: String, _ etcd: EtcdTestCluster, data: String? = nil) throws -> NodeProcess {
        try NodeProcess(name: name, directory: etcd.directory, etcd: etcd.endpoints, data: data, environment: Self.settings)
    }

    /// Waits until the shard's log in etcd no longer starts at record 1.
    func waitForTrim(_ etcd: EtcdTestCluster, past sequence: UInt64 = 1) async throws -> UInt64 {
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }
        let log = ShardLog(client: client, keys: keys, shard: "s0")
        let start = ContinuousClock.now
        while true {
            let oldest = (try? await log.oldestFirst()) ?? 0
            if oldest > sequence { return oldest }
            if ContinuousClock.now - start > .seconds(60) { throw EtcdTestError("the log was not trimmed past \(sequence) in 60 s (it starts at \(oldest))") }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    func log(of node: NodeProcess) -> String { (try? String(contentsOfFile: node.log, encoding: .utf8)) ?? "" }

    static func keyRuns(of node: NodeProcess) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: node.data + "/keys")) ?? []).filter { $0.hasPrefix("keys-") && $0.hasSuffix(".tgk") }.count
    }

    /// A node with an empty data directory joins after the log was trimmed: it copies the
    /// newest checkpoint and the key runs of another node while the leader takes spends, then
    /// follows. With the other two killed it leads alone, and every spend ever acknowledged —
    /// most of their keys in runs on disk — answers as it first did; the pool adds up.
    @Test func aNewNodeStartsFromAnotherNodesFilesWhileTheLeaderDecides() async throws {
        let etcd = try await EtcdTestCluster.start(size: 1)
        defer { etcd.stop() }
        let a = try node("a", etcd)
        let b = try node("b", etcd)
        defer { a.stop(); b.stop() }
        try a.start()
        try b.start()
        let first = try await leader(of: [a, b])
        try await ClusterNodeTests.setUp(first, clients: 2)
        let before = await ClusterNodeTests.load(first, round: 0, clients: 2, for: .seconds(3))
        #expect(before.unanswered.isEmpty)
        let oldest = try await waitForTrim(etcd)
        // Both nodes have keys on disk by now (a checkpoint writes the waiting ones out), so the
        // copy must take runs too.
        try await waitFor(.seconds(60)) { [a, b].allSatisfy { Self.keyRuns(of: $0) > 0 } }

        // The new node starts while a load runs at the leader.
        let c = try node("c", etcd)
        defer { c.stop() }
        let progress = ClusterNodeTests.Progress()
        async let during = ClusterNodeTests.load(first, round: 1, clients: 2, for: .seconds(6), progress: progress)
        try await progress.wait(atLeast: 20)
        try c.start()
        try await waitFor(.seconds(60)) { log(of: c).contains("joined the shard as a follower") }
        let loaded = await during
        #expect(loaded.unanswered.isEmpty, "the leader stopped answering while a node copied its files: \(loaded.unanswered.prefix(3))")
        let copied = log(of: c)
        #expect(copied.contains("copied another node's files to start from") && copied.contains("starting from another node's files"), "\(copied.suffix(2_000))")
        // The keys the other nodes had put on disk came too.
        #expect(copied.range(of: #"keyRuns[^0-9\n]{0,4}[1-9]"#, options: .regularExpression) != nil, "no key run was copied: \(copied.suffix(2_000))")

        // c alone: it must hold everything (what it has not applied yet, it reads from etcd
        // before it leads).
        let other = first === a ? b : a
        let spendsBeforeKill = before.acknowledged + loaded.acknowledged
        await first.kill9()
        await other.kill9()
        let alone = try await leader(of: [c], timeout: .seconds(30))
        let gate = try await alone.client(timeoutMilliseconds: 10_000)
        defer { Task { await gate.close() } }
        for spend in spendsBeforeKill {
            let again = try await gate.spend(account: "acct", member: spend.member, product: "p", quantity: 1, key: spend.key)
            #expect(again == spend.answer, "\(spend.key)")
        }
        let balance = try await gate.balance(account: "acct")
        #expect(balance.funds.pool == 1_000_000_000 - Int64(spendsBeforeKill.count))
        print("bootstrap: the log was trimmed to start at record \(oldest); node c copied another node's files while \(loaded.acknowledged.count) spends were acknowledged, then answered all \(spendsBeforeKill.count) retries as first answered")
    }

    /// A node down while the log was trimmed past its journal restarts, finds itself behind,
    /// copies another node's files and exits 75; started again, it swaps them in (keeping what
    /// it had aside) and follows, and takes over with nothing lost.
    @Test func aNodeLeftBehindByTheTrimStartsAgainFromAnotherNodesFiles() async throws {
        let etcd = try await EtcdTestCluster.start(size: 1)
        defer { etcd.stop() }
        let a = try node("a", etcd)
        let b = try node("b", etcd)
        defer { a.stop(); b.stop() }
        try a.start()
        try b.start()
        let first = try await leader(of: [a, b])
        let second = first === a ? b : a
        try await ClusterNodeTests.setUp(first, clients: 2)
        let early = await ClusterNodeTests.load(first, round: 0, clients: 2, for: .seconds(2))
        await second.kill9()
        // It had at most what etcd holds now.
        let client = EtcdClient(endpoints: etcd.endpoints)
        let left = try await ShardLog(client: client, keys: keys, shard: "s0").lastSequence()
        client.close()
        // Its status lapses (10 s); the leader trims past what it had.
        let late = await ClusterNodeTests.load(first, round: 1, clients: 2, for: .seconds(4))
        _ = try await waitForTrim(etcd, past: left + 1)

        try second.start()
        let status = await second.waitForExit(timeout: .seconds(60))
        #expect(status == 75, "the node left behind did not restart to take another node's files (status \(status.map(String.init) ?? "none")): \(log(of: second).suffix(2_000))")
        #expect(FileManager.default.fileExists(atPath: second.data + "/bootstrap/COMPLETE"))
        try second.start()
        try await waitFor(.seconds(60)) { log(of: second).contains("starting from another node's files") && log(of: second).contains("joined the shard as a follower") }
        let aside = try FileManager.default.contentsOfDirectory(atPath: second.data).filter { $0.hasPrefix("replaced-") }
        #expect(aside.count == 1, "what the node had is not kept aside: \(aside)")

        await first.kill9()
        let alone = try await leader(of: [second], timeout: .seconds(30))
        let gate = try await alone.client(timeoutMilliseconds: 10_000)
        defer { Task { await gate.close() } }
        let spends = early.acknowledged + late.acknowledged
        for spend in spends {
            let again = try await gate.spend(account: "acct", member: spend.member, product: "p", quantity: 1, key: spend.key)
            #expect(again == spend.answer, "\(spend.key)")
        }
        #expect(try await gate.balance(account: "acct").funds.pool == 1_000_000_000 - Int64(spends.count))
    }
}
