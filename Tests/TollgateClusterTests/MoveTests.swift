import Foundation
import Synchronization
import Testing
import TollgateClient
import TollgateCluster
import TollgateLedger
import TollgateWire

/// `tollgate cluster move`: a family moved between two shards of two nodes each, on a real
/// etcd, while an app spends on it through the router.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct MoveTests {
    let keys = ClusterKeys(cluster: "test")!
    static let cli = URL(fileURLWithPath: NodeProcess.binary).deletingLastPathComponent().appendingPathComponent("tollgate").path

    /// Runs the CLI on a thread of its own; its exit status and what it printed.
    func tollgate(_ arguments: [String], etcd: EtcdTestCluster) async throws -> (status: Int32, output: String) {
        let endpoints = etcd.endpoints.map { "\($0.host):\($0.port)" }.joined(separator: ",")
        return try await OffPoolProcess.run(Self.cli, arguments + ["--etcd", endpoints, "--cluster", "test"], environment: ["TOLLGATE_TOKEN": NodeProcess.token])
    }

    /// Load on a family (a root and a child) through the router, pipelined on one connection,
    /// while the family moves: the app sees slower answers, not errors; every spend is kept
    /// once (retried with its key, it answers as it did, also for keys the old shard decided);
    /// a hold reserved before the move commits after it; the pools add up to the credit; the
    /// old shard refuses the family's new requests and names the new one; the family cannot
    /// move again while the old shard keeps its keys.
    @Test func aFamilyMovesUnderLoadWithNothingLostOrChargedTwice() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.cli), "build the tollgate CLI first")
        let cluster = try await RouterTests().start(shards: ["s0", "s1"])
        defer { cluster.stop() }
        let gate = try await RouterTests().routerClient(cluster.router, timeoutMilliseconds: 30_000)
        defer { Task { await gate.close() } }
        _ = try await gate.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch), key: "rate")
        _ = try await gate.apply(.createAccount(CreateAccount(account: "org")), key: "create-org")
        _ = try await gate.apply(.createAccount(CreateAccount(account: "team", parent: "org")), key: "create-team")
        _ = try await gate.apply(.addMember(account: "org", member: "alice"), key: "member-alice")
        _ = try await gate.apply(.setMemberCap(account: "org", member: "alice", limit: 900_000), key: "cap-alice")
        _ = try await gate.apply(.addGrant(AddGrant(account: "org", amount: 1_000_000, effectiveAt: .epoch)), key: "grant-org")
        let held = try await gate.reserve(account: "org", member: "alice", product: "p", quantity: 50, ttlMilliseconds: 600_000, key: "hold-before")
        let hold = try #require(held.hold)

        let etcd = EtcdClient(endpoints: cluster.etcd.endpoints)
        defer { etcd.close() }
        let source = try #require(try await etcd.range(keys.placement("org")).kvs.first.map { String(decoding: $0.value, as: UTF8.self) })
        let destination = source == "s0" ? "s1" : "s0"

        let shared = LoadRecord()
        let slowest = Slowest()
        let load = Task {
            await withTaskGroup(of: Void.self) { group in
                for (worker, account) in ["org", "org", "team", "team"].enumerated() {
                    group.addTask {
                        var index = 0
                        while !shared.stop.withLock({ $0 }) {
                            let key = "w\(worker)-\(index)"
                            let member: String? = account == "org" ? "alice" : nil
                            // An answer lost to an error is asked again with the same key.
                            for attempt in 0..<5 {
                                do {
                                    let sent = ContinuousClock.now
                                    let decision = try await gate.spend(account: account, member: member, product: "p", quantity: 1, key: key)
                                    let took = ContinuousClock.now - sent
                                    slowest.value.withLock { $0 = max($0, took) }
                                    shared.done.withLock { $0.append((key, account, decision)) }
                                    break
                                } catch {
                                    if attempt == 4 { shared.failures.withLock { $0.append("\(key): \(error)") } }
                                }
                            }
                            index += 1
                        }
                    }
                }
            }
        }
        // However slow the machine: the load is under way before the move and goes on after it.
        try await waitFor(.seconds(60)) { shared.done.withLock { $0.count } >= 20 }
        let beforeMove = shared.done.withLock { $0.count }
        let moved = try await tollgate(["cluster", "move", "org", "--to", destination], etcd: cluster.etcd)
        #expect(moved.status == 0, "\(moved.output)")
        #expect(moved.output.contains("moved org (2 accounts"), "\(moved.output)")
        let afterMove = shared.done.withLock { $0.count }
        try await waitFor(.seconds(60)) { shared.done.withLock { $0.count } >= afterMove + 20 }
        shared.stop.withLock { $0 = true }
        await load.value
        let spends = shared.done.withLock { $0 }
        #expect(shared.failures.withLock { $0 }.isEmpty, "the app saw errors: \(shared.failures.withLock { $0.prefix(5) })")
        #expect(spends.count >= afterMove + 20, "the load did not go on after the move: \(beforeMove) then \(spends.count)")
        print("family move under load: \(moved.output.trimmingCharacters(in: .whitespacesAndNewlines)); \(spends.count) spends acknowledged (\(beforeMove) before the move), the slowest answer \(slowest.value.withLock { $0 })")

        // Both accounts point at the new shard, with where they came from.
        for account in ["org", "team"] {
            let text = try await etcd.range(keys.placement(account)).kvs.first.map { String(decoding: $0.value, as: UTF8.self) }
            let placement = try #require(text.flatMap(AccountPlacement.init(text:)))
            #expect(placement.shard == destination && placement.movedFrom == source, "\(account): \(text ?? "-")")
        }
        // Every spend, retried with its key through the router, answers as it first did: the
        // keys decided before the move by the old shard, those after by the new one.
        for spend in spends {
            let again = try await gate.spend(account: spend.account, member: spend.account == "org" ? "alice" : nil, product: "p", quantity: 1, key: spend.key)
            #expect(again == spend.decision, "\(spend.key)")
        }
        // The hold reserved before the move commits on the new shard, under its id.
        let committed = try await gate.commit(account: "org", hold: hold, amount: .credits(20), key: "commit-before")
        #expect(committed.committed == 20 && committed.returned == 30)
        // Nothing lost, nothing charged twice.
        let balance = try await gate.balance(account: "org")
        #expect(balance.funds.pool == 1_000_000 - Int64(spends.count) - 20, "\(spends.count) spends")
        let alice = try await gate.balance(account: "org", member: "alice")
        #expect(alice.levels.first?.consumed == Int64(spends.filter { $0.account == "org" }.count) + 20)

        // The old shard's leader refuses the family's new requests and names the new shard.
        let old = try await leader(of: cluster.shards[source]!).client()
        do {
            _ = try await old.spend(account: "team", member: nil, product: "p", quantity: 1, key: "direct-after")
            Issue.record("the old shard decided for a family that left it")
        } catch {
            guard case .refused(let refusal) = error else { throw error }
            #expect(refusal.error.code == .familyMoved && refusal.error.subject.contains(destination), "\(refusal)")
        }
        await old.close()
        // Its followers have the family frozen too, and the new shard's followers have it live:
        // each follower's ledger is its leader's, read back after a restart as leader below.

        // The placement says where it came from; a second move waits for the keys' retention.
        let shown = try await tollgate(["cluster", "placement", "org"], etcd: cluster.etcd)
        #expect(shown.output.contains("\(destination) (moved from \(source)"), "\(shown.output)")
        let again = try await tollgate(["cluster", "move", "org", "--to", source], etcd: cluster.etcd)
        #expect(again.status != 0 && again.output.contains("can move again after"), "\(again.output)")

        // The new shard's leader dies: its follower takes over with the family, which goes on
        // spending through the router as before.
        let newLeader = try await leader(of: cluster.shards[destination]!)
        await newLeader.kill9()
        let after = try await gate.spend(account: "team", member: nil, product: "p", quantity: 1, key: "after-failover")
        #expect(after.cost == 1)
        let final = try await gate.balance(account: "org")
        #expect(final.funds.pool == 1_000_000 - Int64(spends.count) - 20 - 1)
    }

    /// A move the new shard refuses (an account of the family's name is there already) is
    /// undone: the family is live on its shard again and the app never noticed.
    @Test func aRefusedMoveIsUndone() async throws {
        let cluster = try await RouterTests().start(shards: ["s0", "s1"])
        defer { cluster.stop() }
        let gate = try await RouterTests().routerClient(cluster.router)
        defer { Task { await gate.close() } }
        _ = try await gate.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch), key: "rate")
        _ = try await gate.apply(.createAccount(CreateAccount(account: "org")), key: "create-org")
        _ = try await gate.apply(.addGrant(AddGrant(account: "org", amount: 500, effectiveAt: .epoch)), key: "grant-org")
        _ = try await gate.spend(account: "org", member: nil, product: "p", quantity: 5, key: "spend-1")
        let etcd = EtcdClient(endpoints: cluster.etcd.endpoints)
        defer { etcd.close() }
        let source = try #require(try await etcd.range(keys.placement("org")).kvs.first.map { String(decoding: $0.value, as: UTF8.self) })
        let destination = source == "s0" ? "s1" : "s0"
        // Someone made an "org" on the other shard directly, behind the router's back.
        let other = try await leader(of: cluster.shards[destination]!).client()
        _ = try await other.apply(.createAccount(CreateAccount(account: "org")), key: "stray")
        await other.close()

        let moved = try await tollgate(["cluster", "move", "org", "--to", destination], etcd: cluster.etcd)
        #expect(moved.status != 0)
        #expect(moved.output.contains("alreadyExists") && moved.output.contains("the move was undone"), "\(moved.output)")
        #expect(try await etcd.range(keys.placement("org")).kvs.first.map { String(decoding: $0.value, as: UTF8.self) } == source)
        let spent = try await gate.spend(account: "org", member: nil, product: "p", quantity: 7, key: "spend-2")
        #expect(spent.cost == 7)
        #expect(try await gate.spend(account: "org", member: nil, product: "p", quantity: 5, key: "spend-1").cost == 5)
        #expect(try await gate.balance(account: "org").funds.pool == 488)
    }
}

final class Slowest: Sendable {
    let value = Mutex<Duration>(.zero)
}

/// A child process run to its end on a thread of its own.
enum OffPoolProcess {
    static func run(_ path: String, _ arguments: [String], environment extra: [String: String]) async throws -> (status: Int32, output: String) {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: path)
                process.arguments = arguments
                process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
                let pipe = Pipe()
                process.standardOutput = pipe
                process.standardError = pipe
                do {
                    try process.run()
                    let data = pipe.fileHandleForReading.readDataToEndOfFile()
                    process.waitUntilExit()
                    continuation.resume(returning: (process.terminationStatus, String(decoding: data, as: UTF8.self)))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.start()
        }
    }
}
