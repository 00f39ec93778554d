import Foundation
import Synchronization
import Testing
import TollgateClient
import TollgateCluster
import TollgateLedger
import TollgateWire

/// Routers in front of two shards of two nodes each, on a real etcd.
@Suite(.enabled(if: EtcdTestCluster.enabled, "etcd is not installed"), .serialized)
struct RouterTests {
    let keys = ClusterKeys(cluster: "test")!

    struct Cluster {
        var etcd: EtcdTestCluster
        var shards: [String: [NodeProcess]]
        var router: NodeProcess

        var everyone: [NodeProcess] { shards.values.flatMap { $0 } + [router] }

        func stop() {
            everyone.forEach { $0.stop() }
            etcd.stop()
        }
    }

    func start(shards names: [String]) async throws -> Cluster {
        let etcd = try await EtcdTestCluster.start(size: 1)
        let client = EtcdClient(endpoints: etcd.endpoints)
        try await client.put(keys.shardList, Array(try JSONEncoder().encode(names)))
        client.close()
        var shards: [String: [NodeProcess]] = [:]
        for shard in names {
            shards[shard] = try ["a", "b"].map { try NodeProcess(name: "\(shard)-\($0)", directory: etcd.directory, etcd: etcd.endpoints, shard: shard) }
        }
        let router = try NodeProcess(name: "router", directory: etcd.directory, etcd: etcd.endpoints, router: true)
        let cluster = Cluster(etcd: etcd, shards: shards, router: router)
        for node in cluster.everyone { try node.start() }
        for nodes in shards.values { _ = try await leader(of: nodes) }
        return cluster
    }

    /// Account families spread over the shards by the map; each shard holds only its own;
    /// rates reach every shard; a BATCH across shards is answered in order.
    @Test func eachFamilyLivesOnOneShardAndAppsSeeOneGate() async throws {
        let cluster = try await start(shards: ["s0", "s1"])
        defer { cluster.stop() }
        let gate = try await routerClient(cluster.router)
        defer { Task { await gate.close() } }

        _ = try await gate.apply(.setRate(product: "p", creditsPerUnit: 3, effectiveAt: .epoch), key: "rate-p")
        let accounts = (0..<16).map { "acct\($0)" }
        for account in accounts {
            _ = try await gate.apply(.createAccount(CreateAccount(account: account)), key: "create-\(account)")
            _ = try await gate.apply(.addMember(account: account, member: "m"), key: "member-\(account)")
            _ = try await gate.apply(.addGrant(AddGrant(account: account, amount: 1_000, effectiveAt: .epoch)), key: "grant-\(account)")
        }
        // A child joins its parent's shard.
        _ = try await gate.apply(.createAccount(CreateAccount(account: "child0", parent: "acct0")), key: "create-child0")

        let etcd = EtcdClient(endpoints: cluster.etcd.endpoints)
        defer { etcd.close() }
        var placed: [String: String] = [:]
        for account in accounts + ["child0"] {
            placed[account] = try await etcd.range(keys.placement(account)).kvs.first.map { String(decoding: $0.value, as: UTF8.self) }
        }
        #expect(Set(placed.values) == ["s0", "s1"], "the families did not spread over both shards: \(placed)")
        #expect(placed["child0"] == placed["acct0"])

        // Each shard's leader knows its own accounts only, and every shard has the rate.
        for (shard, nodes) in cluster.shards {
            let direct = try await leader(of: nodes).client()
            for account in accounts {
                let here = placed[account] == shard
                do {
                    _ = try await direct.spend(account: account, member: "m", product: "p", quantity: 1, key: "direct-\(account)-\(shard)")
                    #expect(here, "\(account) is on \(placed[account]!) but \(shard) decided for it")
                } catch {
                    guard case .refused(let refusal) = error else { throw error }
                    #expect(!here && refusal.error.code == .unknownAccount, "\(account) on \(shard): \(refusal)")
                }
            }
            await direct.close()
        }

        // Through the router, every account spends; a BATCH across both shards comes back in order.
        let items: [WireRequest] = accounts.map {
            .command(.spend(Spend(DecisionRequest(account: $0, member: "m", product: "p", quantity: 2))), key: "batch-\($0)")
        } + [.check(DecisionRequest(account: "acct3", member: "m", product: "p", quantity: 1_000))]
        guard case .batch(let answers) = try await gate.send(.batch(items)) else {
            Issue.record("no BATCH answer")
            return
        }
        #expect(answers.count == items.count)
        for (index, answer) in answers.prefix(accounts.count).enumerated() {
            guard case .answer(.decision(let decision)) = answer.response else {
                Issue.record("\(accounts[index]): \(answer.response)")
                continue
            }
            #expect(decision.cost == 6)
        }
        guard case .answer(.refused(let refusal)) = answers.last?.response else {
            Issue.record("the oversized check was not refused")
            return
        }
        #expect(refusal.error.code == .insufficientFunds)
        let balance = try await gate.balance(account: "acct5")
        // The grant, less the BATCH's spend and the direct one at its shard's leader.
        #expect(balance.funds.pool == 1_000 - 6 - 3)

        // A router started now reads the whole map at start: every family is where it is.
        let late = try NodeProcess(name: "late-router", directory: cluster.etcd.directory, etcd: cluster.etcd.endpoints, router: true)
        defer { late.stop() }
        try late.start()
        let lateGate = try await routerClient(late)
        for account in accounts + ["child0"] {
            let decision = try await lateGate.check(account: account, member: account == "child0" ? nil : "m", product: "p", quantity: 1)
            #expect(decision.cost == 3)
        }
        await lateGate.close()
    }

    /// Load through the router on both shards while one shard's leader is killed: the app sees
    /// slower answers, not errors, and every spend is charged once.
    @Test func aFailoverBehindTheRouterIsASlowAnswer() async throws {
        let cluster = try await start(shards: ["s0", "s1"])
        defer { cluster.stop() }
        let gate = try await routerClient(cluster.router, timeoutMilliseconds: 30_000)
        defer { Task { await gate.close() } }
        _ = try await gate.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch), key: "rate")
        let accounts = (0..<6).map { "fam\($0)" }
        for account in accounts {
            _ = try await gate.apply(.createAccount(CreateAccount(account: account)), key: "create-\(account)")
            _ = try await gate.apply(.addGrant(AddGrant(account: account, amount: 1_000_000, effectiveAt: .epoch)), key: "grant-\(account)")
        }
        let shared = LoadRecord()
        let load = Task {
            await withTaskGroup(of: Void.self) { group in
                for account in accounts {
                    group.addTask {
                        var index = 0
                        while !shared.stop.withLock({ $0 }) {
                            let key = "\(account)-\(index)"
                            do {
                                let decision = try await gate.spend(account: account, member: nil, product: "p", quantity: 1, key: key)
                                shared.done.withLock { $0.append((key, account, decision)) }
                            } catch {
                                shared.failures.withLock { $0.append("\(key): \(error)") }
                            }
                            index += 1
                        }
                    }
                }
            }
        }
        try await Task.sleep(for: .milliseconds(700))
        let s0 = cluster.shards["s0"]!
        let killed = try await leader(of: s0)
        let etcd = EtcdClient(endpoints: cluster.etcd.endpoints)
        defer { etcd.close() }
        var onS0: [String] = []
        for account in accounts where try await etcd.range(keys.placement(account)).kvs.first?.value == Array("s0".utf8) { onS0.append(account) }
        #expect(!onS0.isEmpty, "no family landed on the shard whose leader is killed")
        await killed.kill9()
        let spentAtKill = shared.done.withLock { $0.filter { onS0.contains($0.account) }.count }
        try await Task.sleep(for: .seconds(6))
        // The killed shard's families went on spending through the router after the kill.
        let spentAfter = shared.done.withLock { $0.filter { onS0.contains($0.account) }.count }
        #expect(spentAfter > spentAtKill + 10, "the families of the killed shard stopped spending: \(spentAtKill) → \(spentAfter)")
        shared.stop.withLock { $0 = true }
        await load.value

        #expect(shared.failures.withLock { $0 }.isEmpty, "the app saw errors: \(shared.failures.withLock { $0.prefix(5) })")
        let spends = shared.done.withLock { $0 }
        #expect(spends.count > 50)
        // Every spend is kept, once: retried, it answers as it did; the pools add up.
        for spend in spends.suffix(200) {
            let again = try await gate.spend(account: spend.account, member: nil, product: "p", quantity: 1, key: spend.key)
            #expect(again == spend.decision)
        }
        for account in accounts {
            let made = spends.filter { $0.account == account }.count
            let balance = try await gate.balance(account: account)
            #expect(balance.funds.pool == 1_000_000 - Int64(made), "\(account)")
        }
    }

    /// SUBSCRIBE through the router: one account's events, relayed from its shard, go on across
    /// a failover of that shard's leader with nothing missed and nothing twice; a subscription
    /// to every account is refused, saying why.
    @Test func anAccountsEventsComeThroughTheRouterAcrossAFailover() async throws {
        let cluster = try await start(shards: ["s0"])
        defer { cluster.stop() }
        let gate = try await routerClient(cluster.router, timeoutMilliseconds: 30_000)
        defer { Task { await gate.close() } }
        _ = try await gate.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch), key: "rate")
        _ = try await gate.apply(.createAccount(CreateAccount(account: "watched")), key: "create")
        _ = try await gate.apply(.addGrant(AddGrant(account: "watched", amount: 1_000, effectiveAt: .epoch)), key: "grant")
        _ = try await gate.apply(.setAlert(account: "watched", rule: AlertRule(id: "half", threshold: .credits(500))), key: "alert-half")
        _ = try await gate.apply(.setAlert(account: "watched", rule: AlertRule(id: "low", threshold: .credits(100))), key: "alert-low")

        do {
            _ = try await gate.subscribe(after: nil, account: nil)
            Issue.record("a router relayed a subscription to every account")
        } catch {
            guard case .server(let wire) = error else { throw error }
            #expect(wire.status == .unavailable && wire.message.contains("names one account"), "\(wire)")
        }

        let (_, events) = try await gate.subscribe(account: "watched")
        let received = Mutex<[LedgerEvent]>([])
        let reader = Task {
            for await event in events { received.withLock { $0.append(event) } }
        }
        defer { reader.cancel() }
        _ = try await gate.spend(account: "watched", member: nil, product: "p", quantity: 600, key: "spend-1")
        try await waitFor(.seconds(20)) { received.withLock { $0.count } == 1 }

        await (try await leader(of: cluster.shards["s0"]!)).kill9()
        _ = try await gate.spend(account: "watched", member: nil, product: "p", quantity: 350, key: "spend-2")
        try await waitFor(.seconds(30)) { received.withLock { $0.count } >= 2 }
        try await Task.sleep(for: .milliseconds(500))
        let got = received.withLock { $0 }
        #expect(got.count == 2, "\(got)")
        guard got.count == 2 else { return }
        #expect(got[1].sequence > got[0].sequence)
        if case .alert(let id, _, let balance) = got[0].kind { #expect(id == "half" && balance == 400) } else { Issue.record("\(got[0])") }
        if case .alert(let id, _, let balance) = got[1].kind { #expect(id == "low" && balance == 50) } else { Issue.record("\(got[1])") }
    }

    /// Nodes whose gate speaks only TLS, and a router that reaches them with
    /// `upstreamCAFile`: requests go through, events too.
    @Test func theRouterReachesNodesOverTLS() async throws {
        let etcd = try await EtcdTestCluster.start(size: 1)
        defer { etcd.stop() }
        let pki = etcd.directory + "/pki"
        try FileManager.default.createDirectory(atPath: pki, withIntermediateDirectories: true)
        let made = try await OffPoolProcess.run(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", pki + "/node.key", "-out", pki + "/node.pem",
                "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            ], environment: [:])
        #expect(made.status == 0, "\(made.output)")
        let client = EtcdClient(endpoints: etcd.endpoints)
        try await client.put(keys.shardList, Array(try JSONEncoder().encode(["s0"])))
        client.close()
        let tls = ["TOLLGATE_TLS_CERTIFICATE_FILE": pki + "/node.pem", "TOLLGATE_TLS_KEY_FILE": pki + "/node.key"]
        let nodes = try ["a", "b"].map {
            try NodeProcess(name: "s0-\($0)", directory: etcd.directory, etcd: etcd.endpoints, shard: "s0", environment: tls, advertiseHost: "localhost")
        }
        let router = try NodeProcess(
            name: "router", directory: etcd.directory, etcd: etcd.endpoints, router: true, environment: ["TOLLGATE_UPSTREAM_CA_FILE": pki + "/node.pem"])
        defer { (nodes + [router]).forEach { $0.stop() } }
        for node in nodes + [router] { try node.start() }
        let gate = try await routerClient(router, timeoutMilliseconds: 30_000)
        defer { Task { await gate.close() } }
        // The first request waits for the shard's first leader.
        let start = ContinuousClock.now
        while true {
            do {
                _ = try await gate.apply(.setRate(product: "p", creditsPerUnit: 2, effectiveAt: .epoch), key: "rate")
                break
            } catch {
                if ContinuousClock.now - start > .seconds(60) { throw error }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        _ = try await gate.apply(.createAccount(CreateAccount(account: "secure")), key: "create")
        _ = try await gate.apply(.addGrant(AddGrant(account: "secure", amount: 100, effectiveAt: .epoch)), key: "grant")
        #expect(try await gate.spend(account: "secure", member: nil, product: "p", quantity: 5, key: "spend").cost == 10)
        #expect(try await gate.balance(account: "secure").funds.pool == 90)
        // A plaintext connection to a node is refused: the router's requests went over TLS.
        let plain = try? await TollgateClient.connect(.init(port: nodes[0].port, token: NodeProcess.token, requestTimeoutMilliseconds: 2_000, retries: 0))
        #expect(plain == nil)
        await plain?.close()
    }

    func routerClient(_ router: NodeProcess, timeoutMilliseconds: Int64 = 10_000) async throws -> TollgateClient {
        let start = ContinuousClock.now
        while true {
            if let client = try? await TollgateClient.connect(
                .init(port: router.port, token: NodeProcess.token, requestTimeoutMilliseconds: timeoutMilliseconds, retries: 0))
            {
                return client
            }
            if ContinuousClock.now - start > .seconds(30) { throw EtcdTestError("the router did not come up") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// What a load records, shared by its tasks.
final class LoadRecord: Sendable {
    let stop = Mutex(false)
    let failures = Mutex<[String]>([])
    let done = Mutex<[(key: String, account: String, decision: Decision)]>([])
}
