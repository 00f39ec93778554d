import Foundation
import Synchronization
import Testing
import TollgateClient
import TollgateCluster
import TollgateLedger
import TollgateLedgerTestSupport
import TollgateWire

#if canImport(Glibc)
import Glibc
#endif

/// A real tollgated, started as one node of a shard, that a test kills, pauses and restarts.
final class NodeProcess: Sendable {
    static let binary = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build/debug/tollgated").path
    /// Every node's admin token: written into each data directory before it starts.
    static let token = "tg_cluster-test-token-0123456789"

    let name: String
    let port: Int
    let data: String
    let etcd: [EtcdEndpoint]
    let extra: [String]
    /// Settings given as TOLLGATE_* variables.
    let settings: [String: String]
    /// The host it advertises to routers and other nodes (with its port), if not 127.0.0.1.
    let advertiseHost: String?
    let shard: String
    let cluster: String
    /// A router rather than a node of a shard.
    let isRouter: Bool
    private let pid = Mutex<pid_t>(0)

    init(
        name: String, directory: String, etcd: [EtcdEndpoint], shard: String = "s0", cluster: String = "test", router: Bool = false, extra: [String] = [],
        data: String? = nil, admin: Bool = false, environment: [String: String] = [:], advertiseHost: String? = nil
    ) throws {
        self.name = name
        self.settings = environment
        self.advertiseHost = advertiseHost
        self.adminPort = admin ? try freePort() : nil
        self.cluster = cluster
        self.shard = shard
        self.isRouter = router
        self.port = try freePort()
        self.data = data ?? directory + "/" + name
        self.etcd = etcd
        self.extra = extra
        self.log = directory + "/" + name + ".log"
        try FileManager.default.createDirectory(atPath: self.data, withIntermediateDirectories: true)
        try (Self.token + "\n").write(toFile: self.data + "/admin.token", atomically: true, encoding: .utf8)
        chmod(self.data + "/admin.token", 0o600)
    }

    /// Its standard error: the log.
    let log: String
    /// The admin HTTP port, if it has one.
    let adminPort: Int?

    /// GET of a path on the admin port: the body, or nil.
    func adminGet(_ path: String) async -> String? {
        guard let port = adminPort else { return nil }
        return await OffPool.blocking("admin-get") { () -> String? in
            let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard descriptor >= 0 else { return nil }
            defer { close(descriptor) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else { return nil }
            let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
            guard request.withUnsafeBytes({ send(descriptor, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
            var response: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65_536)
            while true {
                let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
                if count <= 0 { break }
                response += chunk[0..<count]
            }
            return String(decoding: response, as: UTF8.self)
        }
    }

    func start() throws {
        let role = isRouter ? ["--router"] : ["--shard", shard, "--node", name, "--journal-mode", "replicated"] + (advertiseHost.map { ["--advertise", "\($0):\(port)"] } ?? [])
        let arguments =
            [
                Self.binary, "--port", String(port), "--admin-port", adminPort.map(String.init) ?? "off", "--data-dir", data, "--etcd", etcd.map(\.description).joined(separator: ","),
                "--cluster", cluster, "--log-level", "info",
            ] + role + extra
        var environment = ProcessInfo.processInfo.environment
        environment["TOLLGATE_JOURNAL_SEGMENT_BYTES"] = "65536"
        environment.merge(settings) { $1 }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
            posix_spawn_file_actions_destroy(&actions)
        }
        var child: pid_t = 0
        guard posix_spawn(&child, Self.binary, &actions, nil, argv, envp) == 0 else { throw EtcdTestError("cannot start \(Self.binary)") }
        pid.withLock { $0 = child }
    }

    var isRunning: Bool { pid.withLock { $0 } != 0 }

    /// SIGKILL; returns once the process is gone.
    func kill9() async {
        let child = pid.withLock { pid in defer { pid = 0 }; return pid }
        guard child != 0 else { return }
        kill(child, SIGKILL)
        await OffPool.blocking("reap") {
            var status: Int32 = 0
            waitpid(child, &status, 0)
        }
    }

    func pause() { kill(pid.withLock { $0 }, SIGSTOP) }
    func terminate() { kill(pid.withLock { $0 }, SIGTERM) }
    func resume() { kill(pid.withLock { $0 }, SIGCONT) }

    /// Waits for the process to exit by itself (a deposed leader does); its exit status, or
    /// nil if it is still running after `timeout`.
    func waitForExit(timeout: Duration) async -> Int32? {
        let child = pid.withLock { $0 }
        guard child != 0 else { return nil }
        let start = ContinuousClock.now
        while ContinuousClock.now - start < timeout {
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child {
                pid.withLock { $0 = 0 }
                return (status >> 8) & 0xFF
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return nil
    }

    func stop() {
        let child = pid.withLock { pid in defer { pid = 0 }; return pid }
        guard child != 0 else { return }
        kill(child, SIGCONT)
        kill(child, SIGKILL)
        Thread.detachNewThread {
            var status: Int32 = 0
            waitpid(child, &status, 0)
        }
    }

    func client(timeoutMilliseconds: Int64 = 2_000) async throws -> TollgateClient {
        try await TollgateClient.connect(.init(port: port, token: Self.token, requestTimeoutMilliseconds: timeoutMilliseconds, retries: 0))
    }

    /// Whether this node decides now: a read it answers, rather than refusing `notLeader`.
    func leads() async -> Bool {
        guard let client = try? await client(timeoutMilliseconds: 1_000) else { return false }
        defer { Task { await client.close() } }
        do {
            _ = try await client.balance(account: "nobody")
            return true
        } catch {
            if case .refused = error { return true }  // unknownAccount: decided
            return false
        }
    }
}

/// Waits until one of `nodes` leads; returns it.
func leader(of nodes: [NodeProcess], timeout: Duration = .seconds(30)) async throws -> NodeProcess {
    let start = ContinuousClock.now
    while ContinuousClock.now - start < timeout {
        for node in nodes where node.isRunning {
            if await node.leads() { return node }
        }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw EtcdTestError("no node led within \(timeout)")
}

/// Nodes of one shard on a real etcd, killed and restarted under load.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct ClusterNodeTests {
    struct Outcome {
        var acknowledged: [(key: String, member: String, answer: Decision)] = []
        var unanswered: [(key: String, member: String)] = []
    }

    /// Spends of 1 credit under unique keys from several clients, until the node stops
    /// answering (or `duration` has passed).
    /// How many spends a running load has had acknowledged: a fault is injected once the load
    /// is under way, however slow the machine.
    final class Progress: Sendable {
        private let count = Mutex(0)
        func add() { count.withLock { $0 += 1 } }
        var acknowledged: Int { count.withLock { $0 } }

        /// Waits until `target` spends are acknowledged (or a minute passes).
        func wait(atLeast target: Int) async throws {
            try await waitFor(.seconds(60)) { acknowledged >= target }
        }
    }

    static func load(_ node: NodeProcess, round: Int, clients: Int, for duration: Duration? = nil, progress: Progress? = nil) async -> Outcome {
        let start = ContinuousClock.now
        return await withTaskGroup(of: Outcome.self) { group in
            for client in 0..<clients {
                group.addTask {
                    var outcome = Outcome()
                    guard let gate = try? await node.client(timeoutMilliseconds: 3_000) else { return outcome }
                    let member = "m\(client)"
                    for index in 0..<1_000_000 {
                        if let duration, ContinuousClock.now - start > duration { break }
                        let key = "r\(round)-\(client)-\(index)"
                        do {
                            let decision = try await gate.spend(account: "acct", member: member, product: "p", quantity: 1, key: key)
                            outcome.acknowledged.append((key, member, decision))
                            progress?.add()
                        } catch {
                            outcome.unanswered.append((key, member))
                            break
                        }
                    }
                    await gate.close()
                    return outcome
                }
            }
            var total = Outcome()
            for await outcome in group {
                total.acknowledged += outcome.acknowledged
                total.unanswered += outcome.unanswered
            }
            return total
        }
    }

    static func setUp(_ node: NodeProcess, clients: Int) async throws {
        let setup = try await node.client()
        _ = try await setup.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch), key: "setup-rate")
        _ = try await setup.apply(.createAccount(CreateAccount(account: "acct")), key: "setup-account")
        _ = try await setup.apply(.addGrant(AddGrant(account: "acct", amount: 1_000_000_000, effectiveAt: .epoch)), key: "setup-grant")
        for client in 0..<clients { _ = try await setup.apply(.addMember(account: "acct", member: "m\(client)"), key: "setup-m\(client)") }
        await setup.close()
    }

    /// kill -9 of the leader under load, again and again: a follower takes over; every
    /// acknowledged spend is kept (its retry answers as first answered), a spend whose answer
    /// was lost is charged once when retried, and the ledger stays whole.
    @Test func killingTheLeaderLosesNoAcknowledgedChange() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: NodeProcess.binary), "build tollgated first")
        let etcd = try await EtcdTestCluster.start(size: 3)
        defer { etcd.stop() }
        let directory = etcd.directory
        let nodes = try ["a", "b", "c"].map { try NodeProcess(name: $0, directory: directory, etcd: etcd.endpoints) }
        defer { nodes.forEach { $0.stop() } }
        for node in nodes { try node.start() }
        let clients = 4
        var current = try await leader(of: nodes)
        try await Self.setUp(current, clients: clients)

        let cycles = Int(ProcessInfo.processInfo.environment["TOLLGATE_FAILOVER_CYCLES"] ?? "") ?? 3
        var acknowledged: [(key: String, member: String, answer: Decision)] = []
        var retried = 0
        var failovers: [Duration] = []
        for cycle in 0..<cycles {
            let loaded = current
            let progress = Progress()
            async let outcome = Self.load(loaded, round: cycle, clients: clients, progress: progress)
            try await progress.wait(atLeast: Int.random(in: 10...60))
            let killed = ContinuousClock.now
            await current.kill9()
            let result = await outcome
            #expect(result.acknowledged.count > 0, "cycle \(cycle): the load did not get going")
            acknowledged += result.acknowledged

            let next = try await leader(of: nodes)
            failovers.append(ContinuousClock.now - killed)
            #expect(next !== current)
            let gate = try await next.client()
            // Every acknowledged spend of this cycle is there: its retry gets the first answer.
            for spend in result.acknowledged {
                let retry = try await gate.spend(account: "acct", member: spend.member, product: "p", quantity: 1, key: spend.key)
                #expect(retry == spend.answer, "cycle \(cycle): acknowledged \(spend.key) was lost or answered differently")
            }
            // A spend whose answer was lost is charged once, whether or not it was applied.
            for lost in result.unanswered {
                _ = try await gate.spend(account: "acct", member: lost.member, product: "p", quantity: 1, key: lost.key)
                retried += 1
            }
            let balance = try await gate.balance(account: "acct")
            let consumed = balance.levels.first { $0.level == .account }!.consumed
            #expect(balance.funds.pool + consumed == 1_000_000_000, "cycle \(cycle)")
            #expect(consumed == Int64(acknowledged.count + retried), "cycle \(cycle): credits consumed differ from spends made")
            await gate.close()
            // The killed node comes back as a follower.
            try current.start()
            current = next
        }
        // The last killed node has caught up: make it lead, and it holds the same ledger.
        let before = try await current.client()
        let consumedBefore = try await before.balance(account: "acct").levels.first { $0.level == .account }!.consumed
        await before.close()
        try await Task.sleep(for: .seconds(1))
        await current.kill9()
        let last = try await leader(of: nodes)
        let gate = try await last.client()
        let consumedAfter = try await gate.balance(account: "acct").levels.first { $0.level == .account }!.consumed
        #expect(consumedAfter == consumedBefore)
        await gate.close()
        print(
            "cluster failover: \(cycles) leader kills, \(acknowledged.count) spends acknowledged, \(retried) unanswered and retried; failover took \(failovers.map { "\($0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) ms" }.joined(separator: ", "))"
        )
        for failover in failovers { #expect(failover < .seconds(15)) }
    }

    /// The leader is paused (SIGSTOP) past its lease; another node takes over and decides;
    /// the old leader resumes. It decides nothing more — every request it is sent is refused —
    /// its appends are fenced, and it exits for its supervisor to restart it.
    @Test func aPausedLeaderThatResumesIsFencedAndStepsDown() async throws {
        let etcd = try await EtcdTestCluster.start(size: 1)
        defer { etcd.stop() }
        let nodes = try ["a", "b"].map { try NodeProcess(name: $0, directory: etcd.directory, etcd: etcd.endpoints, admin: true) }
        defer { nodes.forEach { $0.stop() } }
        for node in nodes { try node.start() }
        let clients = 2
        let old = try await leader(of: nodes)
        let new = nodes.first { $0 !== old }!
        try await Self.setUp(old, clients: clients)

        // Load on the old leader, which is paused in the middle of it.
        let progress = Progress()
        async let before = Self.load(old, round: 0, clients: clients, progress: progress)
        try await progress.wait(atLeast: 20)
        old.pause()
        let first = await before
        #expect(first.acknowledged.count > 0)
        // The other node takes over once the lease has lapsed, and decides.
        let elected = try await leader(of: [new])
        #expect(elected === new)
        let during = await Self.load(new, round: 1, clients: clients, for: .milliseconds(500))

        // The old leader wakes up. Whatever it is asked now, it decides nothing.
        old.resume()
        var decidedByOld = 0
        for attempt in 0..<20 {
            guard let gate = try? await old.client(timeoutMilliseconds: 1_000) else { break }
            if (try? await gate.spend(account: "acct", member: "m0", product: "p", quantity: 1, key: "old-\(attempt)")) != nil { decidedByOld += 1 }
            await gate.close()
        }
        #expect(decidedByOld == 0, "a deposed leader decided after it woke up")
        let status = await old.waitForExit(timeout: .seconds(20))
        #expect(status == 75, "the deposed leader did not exit to restart (status \(status.map(String.init) ?? "none"))")

        // Every acknowledged spend, on either side of the takeover, is kept, once.
        let gate = try await new.client()
        var retried = 0
        for spend in first.acknowledged + during.acknowledged {
            let retry = try await gate.spend(account: "acct", member: spend.member, product: "p", quantity: 1, key: spend.key)
            #expect(retry == spend.answer, "acknowledged \(spend.key) was lost")
        }
        for lost in first.unanswered + during.unanswered {
            _ = try await gate.spend(account: "acct", member: lost.member, product: "p", quantity: 1, key: lost.key)
            retried += 1
        }
        let consumed = try await gate.balance(account: "acct").levels.first { $0.level == .account }!.consumed
        #expect(consumed == Int64(first.acknowledged.count + during.acknowledged.count + retried))
        // No key the old leader was sent after waking was charged.
        for attempt in 0..<20 {
            do {
                _ = try await gate.spend(account: "acct", member: "m0", product: "p", quantity: 2, key: "old-\(attempt)")
            } catch {
                if case .refused(let refusal) = error, refusal.error.code == .idempotencyConflict {
                    Issue.record("old-\(attempt), sent to the deposed leader, was charged")
                }
            }
        }
        await gate.close()
        // Restarted, the old leader follows, caught up; /metrics says who leads. (Polled: a
        // node restarting on a busy machine takes a while to open its ports and catch up.)
        try old.start()
        func sequence(_ text: String) -> Double? {
            text.split(separator: "\n").first { $0.hasPrefix("tollgate_cluster_journal_sequence ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        var oldMetrics = ""
        var newMetrics = ""
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .seconds(60) {
            oldMetrics = await old.adminGet("/metrics") ?? ""
            newMetrics = await new.adminGet("/metrics") ?? ""
            if oldMetrics.contains("tollgate_cluster_leading 0"), sequence(oldMetrics) != nil, sequence(oldMetrics) == sequence(newMetrics) { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(!(await old.leads()))
        #expect(await new.leads())
        #expect(oldMetrics.contains("tollgate_cluster_leading 0"), "\(oldMetrics.suffix(300))")
        #expect(newMetrics.contains("tollgate_cluster_leading 1"), "\(newMetrics.suffix(300))")
        #expect(sequence(oldMetrics) != nil && sequence(oldMetrics) == sequence(newMetrics), "the follower is not caught up")
    }
}

/// A leader stopped cleanly gives its shard up before it exits.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct ResignTests {
    /// SIGTERM: the leader finishes, resigns (deletes its leader key) and exits 0, so the
    /// other node does not wait out the lease; nothing it acknowledged is lost.
    @Test func aLeaderStoppedCleanlyResigns() async throws {
        let etcd = try await EtcdTestCluster.start(size: 1)
        defer { etcd.stop() }
        let nodes = try ["a", "b"].map { try NodeProcess(name: $0, directory: etcd.directory, etcd: etcd.endpoints) }
        defer { nodes.forEach { $0.stop() } }
        for node in nodes { try node.start() }
        let old = try await leader(of: nodes)
        let other = nodes.first { $0 !== old }!
        try await ClusterNodeTests.setUp(old, clients: 1)
        let gate = try await old.client()
        let decision = try await gate.spend(account: "acct", member: "m0", product: "p", quantity: 1, key: "before-stop")
        await gate.close()

        old.terminate()
        #expect(await old.waitForExit(timeout: .seconds(30)) == 0)
        // The key is not the old leader's any more the moment it has exited: gone, or already
        // the other node's.
        let client = EtcdClient(endpoints: etcd.endpoints)
        defer { client.close() }
        let current = try await ShardElection(client: client, keys: ClusterKeys(cluster: "test")!, shard: "s0", record: LeaderRecord(node: "-", address: "-"), ttlSeconds: 1).current()
        #expect(current.record?.node != old.name, "the stopped leader still held the shard")
        #expect(try await leader(of: [other]) === other)
        let retry = try await other.client()
        #expect(try await retry.spend(account: "acct", member: "m0", product: "p", quantity: 1, key: "before-stop") == decision)
        await retry.close()
    }
}

/// A node started on a data directory that is not its shard's.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct JoiningTests {
    /// A journal that goes past the shard's log in etcd (another cluster's data directory) and
    /// one that differs from it at its last record: the node refuses to start, saying why,
    /// rather than follow (or lead) a history that is not the shard's.
    @Test func aNodeRefusesAJournalThatIsNotItsShards() async throws {
        let etcd = try await EtcdTestCluster.start(size: 1)
        defer { etcd.stop() }
        let first = try NodeProcess(name: "a", directory: etcd.directory, etcd: etcd.endpoints)
        defer { first.stop() }
        try first.start()
        _ = try await leader(of: [first])
        try await ClusterNodeTests.setUp(first, clients: 2)
        await first.kill9()

        // The same data directory in another cluster, whose journal in etcd is empty.
        let stranger = try NodeProcess(name: "a2", directory: etcd.directory, etcd: etcd.endpoints, cluster: "other", data: first.data)
        defer { stranger.stop() }
        try stranger.start()
        #expect(await stranger.waitForExit(timeout: .seconds(30)) == 1)
        let log = (try? String(contentsOfFile: stranger.log, encoding: .utf8)) ?? ""
        #expect(log.contains("does not belong to this shard"), "the log says: \(log.suffix(500))")

        // A journal as long as the shard's, with another last record: a node of cluster "other"
        // writes as many records, then the first node's data directory joins it.
        let other = try NodeProcess(name: "b", directory: etcd.directory, etcd: etcd.endpoints, cluster: "other")
        defer { other.stop() }
        try other.start()
        _ = try await leader(of: [other])
        let gate = try await other.client()
        _ = try await gate.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch), key: "setup-rate")
        _ = try await gate.apply(.createAccount(CreateAccount(account: "acct")), key: "setup-account")
        _ = try await gate.apply(.addGrant(AddGrant(account: "acct", amount: 5, effectiveAt: .epoch)), key: "setup-grant")
        for client in 0..<2 { _ = try await gate.apply(.addMember(account: "acct", member: "x\(client)"), key: "other-m\(client)") }
        await gate.close()
        let differing = try NodeProcess(name: "a3", directory: etcd.directory, etcd: etcd.endpoints, cluster: "other", data: first.data)
        defer { differing.stop() }
        try differing.start()
        #expect(await differing.waitForExit(timeout: .seconds(30)) == 1)
        let text = (try? String(contentsOfFile: differing.log, encoding: .utf8)) ?? ""
        #expect(text.contains("differ at record"), "the log says: \(text.suffix(500))")
    }
}

/// Partitions between a leader and etcd, made by a proxy on the leader's way to etcd.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct PartitionTests {
    /// `.blackhole`: the leader hears nothing and is heard by no one. `.dropReplies`: etcd
    /// applies what the leader sends (renewals, appends), the leader never learns it. Either
    /// way the leader stops deciding by its lease's deadline and exits; the other node takes
    /// over; every acknowledged spend is kept and every other is charged once when retried.
    @Test(arguments: [PartitionProxy.Mode.blackhole, .dropReplies])
    func aLeaderCutOffFromEtcdStepsDownAndLosesNothingAcknowledged(mode: PartitionProxy.Mode) async throws {
        let etcd = try await EtcdTestCluster.start(size: 1)
        defer { etcd.stop() }
        let proxy = PartitionProxy(to: "127.0.0.1", port: etcd.members[0].clientPort)
        defer { proxy.stop() }
        let proxied = EtcdEndpoint(host: "127.0.0.1", port: try await proxy.start())
        let cut = try NodeProcess(name: "a", directory: etcd.directory, etcd: [proxied])
        let other = try NodeProcess(name: "b", directory: etcd.directory, etcd: etcd.endpoints)
        defer { [cut, other].forEach { $0.stop() } }
        try cut.start()
        #expect(try await leader(of: [cut]) === cut)
        try other.start()
        let clients = 2
        try await ClusterNodeTests.setUp(cut, clients: clients)

        let progress = ClusterNodeTests.Progress()
        async let outcome = ClusterNodeTests.load(cut, round: 0, clients: clients, progress: progress)
        try await progress.wait(atLeast: 20)
        proxy.set(mode)
        let first = await outcome
        #expect(first.acknowledged.count > 0)
        let status = await cut.waitForExit(timeout: .seconds(20))
        #expect(status == 75, "the cut-off leader did not step down (exit status \(status.map(String.init) ?? "none"))")
        #expect(try await leader(of: [other]) === other)

        let gate = try await other.client()
        for spend in first.acknowledged {
            let retry = try await gate.spend(account: "acct", member: spend.member, product: "p", quantity: 1, key: spend.key)
            #expect(retry == spend.answer, "acknowledged \(spend.key) was lost")
        }
        for lost in first.unanswered {
            _ = try await gate.spend(account: "acct", member: lost.member, product: "p", quantity: 1, key: lost.key)
        }
        let consumed = try await gate.balance(account: "acct").levels.first { $0.level == .account }!.consumed
        #expect(consumed == Int64(first.acknowledged.count + first.unanswered.count))
        await gate.close()

        // Healed, the old leader comes back as a follower and catches up.
        proxy.set(.open)
        try cut.start()
        try await Task.sleep(for: .seconds(2))
        #expect(!(await cut.leads()))
    }

    /// etcd's members die and come back under load — a follower's, then etcd's leader: the
    /// shard's leader moves to the members that are left and goes on deciding; nothing
    /// acknowledged is lost.
    @Test func etcdMembersDyingUnderLoadLoseNothingAcknowledged() async throws {
        let etcd = try await EtcdTestCluster.start(size: 3)
        defer { etcd.stop() }
        let nodes = try ["a", "b"].map { try NodeProcess(name: $0, directory: etcd.directory, etcd: etcd.endpoints) }
        defer { nodes.forEach { $0.stop() } }
        for node in nodes { try node.start() }
        let clients = 2
        let current = try await leader(of: nodes)
        try await ClusterNodeTests.setUp(current, clients: clients)
        var acknowledged: [(key: String, member: String, answer: Decision)] = []
        var unanswered: [(key: String, member: String)] = []
        for round in 0..<2 {
            let etcdLeader = await etcd.leaderIndex() ?? 0
            let victim = round == 0 ? (etcdLeader + 1) % 3 : etcdLeader
            let deciding = try await leader(of: nodes)
            let progress = ClusterNodeTests.Progress()
            async let outcome = ClusterNodeTests.load(deciding, round: round, clients: clients, for: .seconds(4), progress: progress)
            try await progress.wait(atLeast: 10)
            etcd.kill(victim)
            try await Task.sleep(for: .milliseconds(1_500))
            try etcd.restart(victim)
            let result = await outcome
            #expect(result.acknowledged.count > 0, "round \(round): nothing was decided while etcd member \(victim) was down")
            acknowledged += result.acknowledged
            unanswered += result.unanswered
            try await etcd.waitUntilWritable()
        }
        #expect(acknowledged.count > 0)
        let gate = try await leader(of: nodes).client()
        for spend in acknowledged {
            let retry = try await gate.spend(account: "acct", member: spend.member, product: "p", quantity: 1, key: spend.key)
            #expect(retry == spend.answer, "acknowledged \(spend.key) was lost")
        }
        for lost in unanswered {
            _ = try await gate.spend(account: "acct", member: lost.member, product: "p", quantity: 1, key: lost.key)
        }
        let consumed = try await gate.balance(account: "acct").levels.first { $0.level == .account }!.consumed
        #expect(consumed == Int64(acknowledged.count + unanswered.count))
        await gate.close()
    }
}
