import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization
import TollgateClient
import TollgateCluster
import TollgateLedger
import TollgateWire

/// Where a router passes on what it does not answer itself. `done` runs on `loop`.
protocol RequestForwarder: Sendable {
    func forward(_ request: WireRequest, refusedItems: [WireError?]?, on loop: any EventLoop, _ done: @escaping @Sendable (WireResponse) -> Void)
    /// One account's events, relayed from its shard: `send` gets the SUBSCRIBE answer, then
    /// each EVENT, or an error that ends the stream; each on `loop`.
    func subscribe(account: String, after: UInt64?, on loop: any EventLoop, _ send: @escaping @Sendable (WireResponse) -> Void) -> RoutedSubscription
}

/// A relayed event stream; cancelled when the client's connection closes.
final class RoutedSubscription: Sendable {
    private let task: Task<Void, Never>

    init(_ task: Task<Void, Never>) {
        self.task = task
    }

    func cancel() { task.cancel() }
}

/// tollgated in router mode (docs/CLUSTER.md, "The routing sidecar"): beside an app, it speaks
/// the gate protocol, checks each client's credential as a node would, and sends each request
/// to the leader of the shard that holds its account — a BATCH split by shard and its answers
/// put back in order; rates and plans, which every shard needs, to every shard. When a shard's
/// leader changes it asks etcd for the new one and sends the request again with the same
/// idempotency key, for up to `retrySeconds`, so a failover looks like a slow answer.
final class ShardRouter: RequestForwarder {
    let etcd: EtcdClient
    let keys: ClusterKeys
    let logger: Logger
    /// The credential the router presents to the shards' nodes (it has checked its own
    /// clients' credentials itself).
    let token: String
    let group: any EventLoopGroup
    let retryWindow: Duration
    /// How long after a move the shard a family left is asked first about keyed requests:
    /// the idempotency retention (the router's setting, which should be the nodes').
    let keyRetentionMicroseconds: Int64
    /// How long the router waits for a leader's answer before asking again (with the same key)
    /// wherever etcd then says the leader is: a leader's lease and half a second. A leader
    /// answers within its lease or not at all (it stops deciding when the lease may have run
    /// out), so a leader that is paused or cut off costs a request about a lease, not more.
    let upstreamTimeoutMilliseconds: Int64
    /// TLS to the nodes (`upstreamCAFile` …), nil for plain TCP.
    let upstreamTLS: TLSOptions?

    private struct State {
        /// The shards new account families are placed on, from `map/shards`.
        var shards: [String] = ["s0"]
        /// Where accounts are ("" for none, when asked of etcd one by one).
        var placements: [String: String] = [:]
        /// `placements` holds every placement there is (read at start, kept by the watch):
        /// an account not in it is on no shard.
        var complete = false
        /// Each shard's leader, as last read or named by a `notLeader` answer.
        var leaders: [String: String] = [:]
        /// Connections by leader address, and those being made: every request that needs one
        /// while it is made waits for the same one (a burst at start makes one, not hundreds).
        var upstreams: [String: TollgateClient] = [:]
        var connecting: [String: Task<TollgateClient, any Error>] = [:]
        /// Leader look-ups in progress, by shard, shared the same way.
        var lookups: [String: Task<String?, Never>] = [:]
        var watch: EtcdWatch?
        var stopped = false
    }

    private let state = Mutex(State())
    /// Placements kept in memory at most (about 100 bytes each); past it the router asks etcd
    /// for the accounts it does not hold.
    static let placementsMax = 1_000_000

    init(configuration: ServerConfiguration, token: String, group: any EventLoopGroup, logger: Logger) throws {
        (self.etcd, self.keys) = try configuration.etcd()
        self.logger = logger
        self.token = token
        self.group = group
        self.retryWindow = .seconds(configuration.routerRetrySeconds)
        self.keyRetentionMicroseconds = configuration.limits.idempotencyRetentionMicroseconds
        self.upstreamTimeoutMilliseconds = max(2_000, configuration.leaderLeaseSeconds * 1_000 + 500)
        self.upstreamTLS = configuration.upstreamTLS
    }

    /// Reads the shard map — the shard list and every placement, at one revision — and
    /// watches it from there, so the router knows where every account is without asking etcd
    /// per request, and sees each placement made or changed later.
    func start() async throws {
        let revision = try await loadMap()
        watchMap(after: revision)
    }

    /// Loads the shard list and the placements as of one revision; returns it. Past
    /// `placementsMax` placements the rest are asked for when needed.
    private func loadMap() async throws -> Int64 {
        let head = try await etcd.range(keys.shardList)
        let revision = head.revision
        var list: [String]?
        if let value = head.kvs.first?.value {
            guard let parsed = try? JSONDecoder().decode([String].self, from: Data(value)), !parsed.isEmpty, parsed.allSatisfy(ClusterKeys.isValidName) else {
                throw ServerError("\(keys.shardList) in etcd is not a JSON array of shard names")
            }
            list = parsed
        }
        var placements: [String: String] = [:]
        var complete = true
        var from = keys.placementsPrefix
        let end = etcdPrefixEnd(keys.placementsPrefix)
        while true {
            let page = try await etcd.range(from, end: end, limit: 10_000, revision: revision)
            for kv in page.kvs {
                placements[String(kv.keyString.dropFirst(keys.placementsPrefix.count))] = String(decoding: kv.value, as: UTF8.self)
            }
            guard page.more, let last = page.kvs.last else { break }
            if placements.count >= Self.placementsMax {
                complete = false
                break
            }
            from = last.keyString + "\0"
        }
        state.withLock { state in
            if let list { state.shards = list }
            state.placements = placements
            state.complete = complete
        }
        return revision
    }

    private func watchMap(after revision: Int64) {
        let watch = etcd.watch(keys.mapPrefix, end: etcdPrefixEnd(keys.mapPrefix), from: revision &+ 1) { [weak self] event in
            guard let self else { return }
            switch event {
            case .changes(let changes, _):
                for change in changes {
                    let kv: EtcdKeyValue
                    var deleted = false
                    switch change {
                    case .put(let value): kv = value
                    case .delete(let value):
                        kv = value
                        deleted = true
                    }
                    let key = kv.keyString
                    if key == self.keys.shardList, !deleted, let list = try? JSONDecoder().decode([String].self, from: Data(kv.value)), !list.isEmpty,
                        list.allSatisfy(ClusterKeys.isValidName)
                    {
                        // Accounts no shard holds were sent by the old list's hash: forget them.
                        self.state.withLock { state in
                            state.shards = list
                            state.placements = state.placements.filter { !$0.value.isEmpty }
                        }
                    } else if key.hasPrefix(self.keys.placementsPrefix) {
                        let account = String(key.dropFirst(self.keys.placementsPrefix.count))
                        self.state.withLock { state in
                            if deleted { state.placements[account] = nil } else { state.placements[account] = String(decoding: kv.value, as: UTF8.self) }
                        }
                    }
                }
            case .ended:
                // What changed meanwhile is unknown: ask etcd per account until the map is
                // read again, then watch from there.
                self.state.withLock { state in
                    state.complete = false
                    state.placements = [:]
                }
                self.reloadMap()
            case .created: break
            }
        }
        let cancel = state.withLock { state -> Bool in
            if state.stopped { return true }
            state.watch = watch
            return false
        }
        if cancel { watch.cancel() }
    }

    private func reloadMap() {
        Task {
            while !state.withLock({ $0.stopped }) {
                try? await Task.sleep(for: .milliseconds(200))
                if let revision = try? await loadMap() {
                    watchMap(after: revision)
                    return
                }
            }
        }
    }

    func stop() async {
        let (watch, upstreams) = state.withLock { state in
            state.stopped = true
            defer { state.upstreams = [:] }
            return (state.watch, Array(state.upstreams.values))
        }
        watch?.cancel()
        for upstream in upstreams { await upstream.close() }
        etcd.close()
    }

    // MARK: Placement

    /// The shard a new family `account` goes to: its name's hash over the shard list (FNV-1a,
    /// the same on every router).
    func hashShard(_ account: String) -> String {
        let shards = state.withLock { $0.shards }
        return shards[Int(fnv1a64(account) % UInt64(shards.count))]
    }

    /// Where `account` is, or nil if no shard holds it. Both are remembered: the watch on the
    /// map tells of placements made later (and a new shard list clears what was remembered).
    func shard(of account: String) async throws -> String? {
        try await placement(of: account)?.shard
    }

    func placement(of account: String) async throws -> AccountPlacement? {
        let (known, complete) = state.withLock { ($0.placements[account], $0.complete) }
        if let known { return known.isEmpty ? nil : parsed(known, account) }
        if complete { return nil }
        return try await freshPlacement(of: account)
    }

    /// The placement as etcd has it now, remembered.
    func freshPlacement(of account: String) async throws -> AccountPlacement? {
        guard let value = try await etcd.range(keys.placement(account)).kvs.first?.value else {
            remember(account, on: "")
            return nil
        }
        let text = String(decoding: value, as: UTF8.self)
        remember(account, on: text)
        return parsed(text, account)
    }

    private func parsed(_ text: String, _ account: String) -> AccountPlacement? {
        if let placement = AccountPlacement(text: text) { return placement }
        logger.warning("a placement in etcd is not a shard name", metadata: ["account": "\(account)", "value": "\(text)"])
        return nil
    }

    private func remember(_ account: String, on placement: String) {
        state.withLock { state in
            if state.placements.count >= Self.placementsMax {
                state.placements = [:]
                state.complete = false
            }
            state.placements[account] = placement
        }
    }

    /// Places a new account: with its parent's shard, or a new family by its hash. If another
    /// router placed it first, that placement stands.
    func place(_ account: String, parent: String?) async throws -> String {
        var shard: String
        if let parent {
            shard = try await self.shard(of: parent) ?? hashShard(parent)
        } else {
            shard = hashShard(account)
        }
        let key = keys.placement(account)
        let result = try await etcd.txn([.createRevision(key, .equal, 0)], success: [.put(key: key, value: Array(shard.utf8))], failure: [.range(key: key)])
        if !result.succeeded, let existing = result.results.first?.kvs.first?.value {
            shard = String(decoding: existing, as: UTF8.self)
        }
        remember(account, on: shard)
        return shard
    }

    // MARK: Events

    func subscribe(account: String, after: UInt64?, on loop: any EventLoop, _ send: @escaping @Sendable (WireResponse) -> Void) -> RoutedSubscription {
        RoutedSubscription(Task { await self.relayEvents(account: account, after: after, loop: loop, send: send) })
    }

    /// Subscribes at a node of the account's shard (any: followers have the events of the
    /// records they apply) and passes each event on; when that stream ends — the node died or
    /// restarts — subscribes again, at the shard's leader, after the last event passed on (the
    /// shard's nodes number events alike: the numbers are in the journal). A family that moves
    /// ends the stream: its new shard numbers events its own way.
    private func relayEvents(account: String, after start: UInt64?, loop: any EventLoop, send: @escaping @Sendable (WireResponse) -> Void) async {
        var after = start
        var answered = false
        var shardOfAccount: String?
        var failingSince: ContinuousClock.Instant?
        while !Task.isCancelled {
            do {
                let shard = try await target(account)
                if let previous = shardOfAccount, previous != shard {
                    loop.execute {
                        send(.error(WireError(.unavailable, "\(account)'s family moved from shard \(previous) to \(shard), which numbers its events its own way: subscribe again")))
                    }
                    return
                }
                shardOfAccount = shard
                guard let address = await leader(of: shard), let endpoint = EtcdEndpoint(address) else {
                    throw ServerError("shard \(shard) has no leader")
                }
                let client = try await TollgateClient.connect(
                    .init(
                        host: endpoint.host, port: endpoint.port, clientName: "tollgated-router", token: token, requestTimeoutMilliseconds: upstreamTimeoutMilliseconds,
                        retries: 0, tls: upstreamTLS),
                    group: group)
                let subscription: (nextSequence: UInt64, events: AsyncStream<LedgerEvent>)
                do {
                    subscription = try await client.subscribe(after: after, account: account)
                } catch {
                    await client.close()
                    forgetLeader(of: shard, address: address)
                    throw error
                }
                failingSince = nil
                if !answered {
                    answered = true
                    let next = subscription.nextSequence
                    loop.execute { send(.subscribed(nextSequence: next)) }
                    if after == nil { after = next > 0 ? next - 1 : 0 }
                }
                for await event in subscription.events {
                    if Task.isCancelled { break }
                    after = event.sequence
                    loop.execute { send(.event(event)) }
                }
                await client.close()
                if Task.isCancelled { return }
                forgetLeader(of: shard, address: address)
                logger.info("an event stream's node went away; subscribing again", metadata: ["account": "\(account)", "shard": "\(shard)", "after": "\(after ?? 0)"])
            } catch {
                if Task.isCancelled { return }
                let since = failingSince ?? ContinuousClock.now
                failingSince = since
                if ContinuousClock.now - since > retryWindow {
                    let message = "the router cannot follow \(account)'s events (tried for \(retryWindow)): \(error)"
                    loop.execute { send(.error(WireError(.unavailable, message))) }
                    return
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    // MARK: Forwarding

    func forward(_ request: WireRequest, refusedItems: [WireError?]?, on loop: any EventLoop, _ done: @escaping @Sendable (WireResponse) -> Void) {
        Task {
            let response = await route(request, refusedItems: refusedItems)
            loop.execute { done(response) }
        }
    }

    /// Routes a request; when etcd cannot be read (a member down, an election), tries again
    /// until `retryWindow` has passed.
    func route(_ request: WireRequest, refusedItems: [WireError?]? = nil) async -> WireResponse {
        let start = ContinuousClock.now
        var attempt = 0
        while true {
            do {
                return try await routeOnce(request, refusedItems: refusedItems)
            } catch {
                attempt += 1
                if ContinuousClock.now - start > retryWindow {
                    return .error(WireError(.unavailable, "the router cannot read the shard map from etcd: \(error)"))
                }
                try? await Task.sleep(for: .milliseconds(min(200, 25 << min(attempt, 3))))
            }
        }
    }

    private func routeOnce(_ request: WireRequest, refusedItems: [WireError?]?) async throws -> WireResponse {
        switch request {
        case .check(let decision):
            return try await sendFollowingMoves(request, account: decision.account, keyed: false)
        case .balance(let account, _), .balanceAt(let account, _, _):
            return try await sendFollowingMoves(request, account: account, keyed: false)
        case .command(let command, _):
            switch command {
            case .setRate, .setMeteredRate, .definePlan:
                return await broadcast(request)
            case .moveFamilyOut, .moveFamilyIn:
                return .error(
                    WireError(.forbidden, "\(command.opcode.name) goes to one shard's leader, named by the operator: `tollgate cluster move` sends it"))
            case .createAccount(let create):
                return await send(request, to: try await place(create.account, parent: create.parent))
            case .provision(let provision):
                return await send(request, to: try await place(provision.account, parent: provision.parent))
            case .setParent(let account, let parent):
                let own = try await target(account)
                if let parent, try await target(parent) != own {
                    return .error(
                        WireError(
                            .forbidden,
                            "\(account) is on shard \(own) and \(parent) is not: a family must be on one shard (docs/CLUSTER.md, \"The shard map and the routing sidecar\")"))
                }
                return try await sendFollowingMoves(request, account: account, keyed: true, first: own)
            default:
                return try await sendFollowingMoves(request, account: command.account, keyed: true)
            }
        case .batch(let items):
            return try await routeBatch(items, refusedItems: refusedItems)
        default:
            return .error(WireError(.unavailable, "\(request.opcode.name) is not passed on by a router"))
        }
    }

    /// The shard an existing account's requests go to; an account no shard holds goes to
    /// the shard its hash names, which answers `unknownAccount`.
    private func target(_ account: String) async throws -> String {
        try await shard(of: account) ?? hashShard(account)
    }

    /// Where a request goes first: for a request with an idempotency key, the shard its
    /// family left while keys decided there are kept (it answers those as it first did, and
    /// `familyMoved` to the rest); else the shard that holds it.
    private func firstTarget(_ account: String, keyed: Bool) async throws -> String {
        guard let placement = try await placement(of: account) else { return hashShard(account) }
        guard keyed else { return placement.shard }
        return placement.firstShard(forKeyedRequestAt: Self.wallMicroseconds(), retentionMicroseconds: keyRetentionMicroseconds)
    }

    static func wallMicroseconds() -> Int64 { wallClock().microsecondsSinceEpoch }

    /// Sends to the shard the family is on, following it when the shard answers
    /// `familyMoved`: a shard it left (asked first about keyed requests, or named by a
    /// placement not yet updated here) sends the router to etcd for where it is now; while
    /// etcd still names the shard it left (a move under way), the router waits and asks again,
    /// for up to `retryWindow`.
    private func sendFollowingMoves(_ request: WireRequest, account: String, keyed: Bool, first: String? = nil) async throws -> WireResponse {
        var target: String
        if let first { target = first } else { target = try await firstTarget(account, keyed: keyed) }
        let start = ContinuousClock.now
        while true {
            let response = await send(request, to: target)
            guard response.isFamilyMoved else { return response }
            if let now = try await freshPlacement(of: account)?.shard, now != target {
                target = now
                continue
            }
            if ContinuousClock.now - start > retryWindow { return response }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// A BATCH: its items grouped by shard, each group sent as a BATCH of its own (all at
    /// once), the answers put back in the items' order.
    private func routeBatch(_ items: [WireRequest], refusedItems: [WireError?]?) async throws -> WireResponse {
        var groups: [String: [Int]] = [:]
        var answers = [BatchItemResponse?](repeating: nil, count: items.count)
        for (index, item) in items.enumerated() {
            if let refusal = refusedItems?[index] {
                answers[index] = BatchItemResponse(opcode: item.opcode, response: .error(refusal))
                continue
            }
            switch item {
            case .check(let decision): groups[try await firstTarget(decision.account, keyed: false), default: []].append(index)
            case .command(let command, _): groups[try await firstTarget(command.account, keyed: true), default: []].append(index)
            default: groups[try await target(""), default: []].append(index)
            }
        }
        try await sendBatchGroups(groups, items, into: &answers)
        // Items whose family is not where they were sent: to where etcd says it is now, as
        // `sendFollowingMoves` does for one request.
        let start = ContinuousClock.now
        var sentTo: [Int: String] = [:]
        for (shard, indices) in groups { for index in indices { sentTo[index] = shard } }
        while true {
            let moved = answers.indices.filter { answers[$0]?.response.isFamilyMoved == true }
            if moved.isEmpty { break }
            var regrouped: [String: [Int]] = [:]
            var waiting = false
            for index in moved {
                let account: String
                switch items[index] {
                case .check(let decision): account = decision.account
                case .command(let command, _): account = command.account
                default: continue
                }
                guard let now = try await freshPlacement(of: account)?.shard, now != sentTo[index] else {
                    waiting = true
                    continue
                }
                regrouped[now, default: []].append(index)
                sentTo[index] = now
            }
            if regrouped.isEmpty {
                if !waiting || ContinuousClock.now - start > retryWindow { break }
                try? await Task.sleep(for: .milliseconds(50))
                continue
            }
            try await sendBatchGroups(regrouped, items, into: &answers)
        }
        return .batch(answers.map { $0! })
    }

    private func sendBatchGroups(_ groups: [String: [Int]], _ items: [WireRequest], into answers: inout [BatchItemResponse?]) async throws {
        let results = await withTaskGroup(of: (String, WireResponse).self) { group in
            for (shard, indices) in groups {
                let subset = indices.map { items[$0] }
                group.addTask { (shard, await self.send(.batch(subset), to: shard)) }
            }
            var results: [String: WireResponse] = [:]
            for await (shard, response) in group { results[shard] = response }
            return results
        }
        for (shard, indices) in groups {
            switch results[shard] {
            case .batch(let responses)? where responses.count == indices.count:
                for (index, response) in zip(indices, responses) { answers[index] = response }
            case .error(let error)?:
                for index in indices { answers[index] = BatchItemResponse(opcode: items[index].opcode, response: .error(error)) }
            default:
                let error = WireError(.internalError, "shard \(shard) answered a BATCH with something else")
                for index in indices { answers[index] = BatchItemResponse(opcode: items[index].opcode, response: .error(error)) }
            }
        }
    }

    /// A request every shard must apply (rates, plans): sent to each, under the same key; the
    /// first shard's answer, unless one refused or failed — then that, so the client retries
    /// with the same key (shards that applied it answer as before).
    private func broadcast(_ request: WireRequest) async -> WireResponse {
        let shards = state.withLock { $0.shards }
        let responses = await withTaskGroup(of: (Int, WireResponse).self) { group in
            for (index, shard) in shards.enumerated() {
                group.addTask { (index, await self.send(request, to: shard)) }
            }
            var responses = [WireResponse?](repeating: nil, count: shards.count)
            for await (index, response) in group { responses[index] = response }
            return responses.map { $0! }
        }
        for response in responses {
            switch response {
            case .error, .answer(.refused): return response
            default: continue
            }
        }
        return responses[0]
    }

    /// Sends to the shard's leader; through a failover (no leader, a `notLeader` answer, a
    /// connection lost), asks again and resends the same request until `retryWindow` passes.
    func send(_ request: WireRequest, to shard: String) async -> WireResponse {
        let start = ContinuousClock.now
        var attempt = 0
        var last = WireError(.unavailable, "shard \(shard) has no leader")
        while true {
            if attempt > 0 {
                if ContinuousClock.now - start > retryWindow {
                    return .error(WireError(last.status == .notLeader ? .unavailable : last.status, "shard \(shard): \(last.message) (retried for \(retryWindow))"))
                }
                try? await Task.sleep(for: .milliseconds(min(200, 25 << min(attempt, 3))))
            }
            attempt += 1
            guard let address = await leader(of: shard) else { continue }
            let upstream: TollgateClient
            do {
                upstream = try await connection(to: address)
            } catch {
                last = WireError(.unavailable, "cannot reach the leader at \(address): \(error)")
                forgetLeader(of: shard, address: address)
                continue
            }
            do {
                let response = try await upstream.send(request)
                if case .error(let error) = response, error.status == .notLeader || error.status == .unavailable {
                    last = error
                    if let named = error.leaderAddress, named != address {
                        state.withLock { $0.leaders[shard] = named }
                    } else {
                        forgetLeader(of: shard, address: address)
                    }
                    continue
                }
                return response
            } catch {
                last = WireError(.unavailable, "the leader at \(address) did not answer: \(error)")
                await drop(address)
                forgetLeader(of: shard, address: address)
            }
        }
    }

    private func leader(of shard: String) async -> String? {
        let lookup = state.withLock { state -> Task<String?, Never>? in
            if state.leaders[shard] != nil { return nil }
            if let pending = state.lookups[shard] { return pending }
            let made = Task { [etcd, keys] () -> String? in
                guard let value = try? await etcd.range(keys.leader(shard)).kvs.first?.value,
                    let record = try? JSONDecoder().decode(LeaderRecord.self, from: Data(value))
                else { return nil }
                return record.address
            }
            state.lookups[shard] = made
            return made
        }
        guard let lookup else { return state.withLock { $0.leaders[shard] } }
        let address = await lookup.value
        state.withLock { state in
            if state.lookups[shard] == lookup {
                state.lookups[shard] = nil
                if let address { state.leaders[shard] = address }
            }
        }
        return address
    }

    private func forgetLeader(of shard: String, address: String) {
        state.withLock { state in
            if state.leaders[shard] == address { state.leaders[shard] = nil }
        }
    }

    private func connection(to address: String) async throws -> TollgateClient {
        let token = self.token
        let group = self.group
        let timeout = upstreamTimeoutMilliseconds
        let tls = upstreamTLS
        let (existing, pending) = state.withLock { state -> (TollgateClient?, Task<TollgateClient, any Error>?) in
            if let existing = state.upstreams[address] { return (existing, nil) }
            if let pending = state.connecting[address] { return (nil, pending) }
            let made = Task { () throws -> TollgateClient in
                guard let endpoint = EtcdEndpoint(address) else { throw ServerError("the leader's address \(address) is not HOST:PORT") }
                return try await TollgateClient.connect(
                    .init(
                        host: endpoint.host, port: endpoint.port, clientName: "tollgated-router", token: token, connections: 2, requestTimeoutMilliseconds: timeout,
                        retries: 0, tls: tls),
                    group: group)
            }
            state.connecting[address] = made
            return (nil, made)
        }
        if let existing { return existing }
        let task = pending!
        do {
            let client = try await task.value
            state.withLock { state in
                if state.connecting[address] == task {
                    state.connecting[address] = nil
                    state.upstreams[address] = client
                }
            }
            return client
        } catch {
            state.withLock { state in
                if state.connecting[address] == task { state.connecting[address] = nil }
            }
            throw error
        }
    }

    private func drop(_ address: String) async {
        let client = state.withLock { $0.upstreams.removeValue(forKey: address) }
        await client?.close()
    }
}

extension WireResponse {
    /// A refusal because the account's family is on another shard now.
    var isFamilyMoved: Bool {
        if case .answer(.refused(let refusal)) = self { return refusal.error.code == .familyMoved }
        return false
    }
}
