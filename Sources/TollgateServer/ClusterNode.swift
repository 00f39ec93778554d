import Logging
import Foundation
import NIOCore
import Synchronization
import TollgateCluster
import TollgateJournal
import TollgateLedger
import TollgateWire

/// One replica of a shard (docs/CLUSTER.md): it takes the shard's replicated journal from
/// etcd while it follows, campaigns for the leader key, and when elected reads the whole
/// tail, then decides with every batch kept in etcd first, fenced by its token. When its
/// leadership ends — the lease lapsed, or an append was fenced — it stops deciding at once
/// and calls `deposed`: its memory may hold decisions no one will ever see, so the server
/// shuts down and starts again from its local checkpoint and journal, which never hold
/// anything etcd lacks.
final class ClusterNode: Sendable {
    let configuration: ServerConfiguration
    let client: EtcdClient
    let log: ShardLog
    let election: ShardElection
    let service: LedgerService
    let logger: Logger
    private let deposed: @Sendable (String) -> Void
    private let now: @Sendable () -> Instant
    private let leading: @Sendable () -> Void
    /// The sequence the node's newest checkpoint includes (0: none).
    private let checkpointed: @Sendable () -> UInt64
    /// The admin token other nodes of the shard accept, to copy their files.
    private let token: String
    /// How often the node publishes its status, and the lease that holds it.
    static let statusInterval: Duration = .seconds(2)
    static let statusLeaseSeconds: Int64 = 10
    /// How often the leader trims the log.
    static let trimInterval: Duration = .seconds(5)

    private struct State {
        var watch: EtcdWatch?
        var keeper: ShardElection.Keeper?
        var leadership: Leadership?
        var campaign: Task<Void, Never>?
        var stopped = false
        var leader: CurrentLeader?
        var housekeeping: Task<Void, Never>?
        var statusLease: Int64 = 0
        /// The checkpoint floor the last trim saw: a trim goes no further than the lower of it
        /// and the floor now, so a node that has just copied a checkpoint has a round to
        /// publish its status before the log moves past it.
        var previousFloor: UInt64 = 0
    }

    private let state = Mutex(State())

    /// The node's identity and address, and where it reports; `leading` runs once elected and
    /// caught up, before it decides anything (the server moves its decision clock there).
    init(
        configuration: ServerConfiguration, address: String, service: LedgerService, logger: Logger, now: @escaping @Sendable () -> Instant,
        token: String, checkpointed: @escaping @Sendable () -> UInt64,
        leading: @escaping @Sendable () -> Void, deposed: @escaping @Sendable (String) -> Void
    ) throws {
        let (client, keys) = try configuration.etcd()
        self.configuration = configuration
        self.client = client
        self.log = ShardLog(client: client, keys: keys, shard: configuration.shard)
        let node = configuration.nodeName.isEmpty ? Self.hostName() : configuration.nodeName
        self.election = ShardElection(
            client: client, keys: keys, shard: configuration.shard, record: LeaderRecord(node: node, address: address), ttlSeconds: configuration.leaderLeaseSeconds)
        self.service = service
        self.logger = logger
        self.now = now
        self.leading = leading
        self.deposed = deposed
        self.token = token
        self.checkpointed = checkpointed
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "node" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).lowercased()
        return ClusterKeys.isValidName(name) ? name : "node"
    }

    var node: String { election.record.node }

    /// Checks that the local journal is a prefix of the shard's log, then takes every entry
    /// after it. Before the gate opens: a node that cannot join refuses to start, saying why.
    func join() async throws {
        service.follow(refusal: .notLeader(node: nil, address: nil, shard: configuration.shard))
        let local = service.journalPosition?.sequence ?? 0
        let last: UInt64
        do {
            last = try await log.lastSequence()
        } catch {
            throw ServerError("cannot read shard \(configuration.shard)'s journal from etcd (\(configuration.etcdEndpoints.joined(separator: ","))): \(error)")
        }
        // Ids are allocated from a space per shard (Ledger+Move.swift): two shards sharing one
        // could not take each other's families.
        if let value = try? await log.client.range(log.keys.shardList).kvs.first?.value,
            let list = try? JSONDecoder().decode([String].self, from: Data(value))
        {
            let mine = configuration.idSpaceTag
            if let other = list.first(where: { $0 != configuration.shard && Ledger.idSpaceTag(forShard: $0) == mine }) {
                throw ServerError(
                    "shards \(configuration.shard) and \(other) would allocate hold and grant ids from the same space (\(mine)): rename one of them (docs/CLUSTER.md, \"Moving a family\")")
            }
        }
        if local > last {
            throw ServerError(
                "this node's journal ends at record \(local) but shard \(configuration.shard)'s journal in etcd ends at \(last): this data directory does not belong to this shard (or etcd's data was replaced). Start the node with an empty data directory, or point it at the right cluster and shard.")
        }
        // The local journal's last record must be the one etcd holds at that sequence.
        if let position = service.journalPosition, position.sequence > 0, let entry = try await log.entry(holding: position.sequence) {
            if let records = try? entry.records(chainingTo: nil).get(), let mine = records.first(where: { $0.record.sequence == position.sequence }),
                mine.checksum != position.checksum
            {
                throw ServerError(
                    "this node's journal and shard \(configuration.shard)'s journal in etcd differ at record \(position.sequence): this data directory does not belong to this shard (or etcd's data was replaced). Start the node with an empty data directory, or point it at the right cluster and shard.")
            }
        }
        // Published before reading the log, so the leader trims nothing this node still needs.
        try? await publishStatus()
        let housekeeping = Task { await housekeep() }
        state.withLock { $0.housekeeping = housekeeping }
        let caughtUp: Int64
        do {
            caughtUp = try await catchUp()
        } catch let behind as BehindTheLog {
            try await stageCopy(behind)
            throw ServerError("\(behind); copied another node's files to start from", restart: true)
        }
        logger.info(
            "joined the shard as a follower",
            metadata: ["shard": "\(configuration.shard)", "node": "\(node)", "records": "\(service.journalPosition?.sequence ?? 0)", "revision": "\(caughtUp)"])
    }

    /// Takes every entry after the local journal's end; returns the etcd revision it read at.
    @discardableResult
    func catchUp() async throws -> Int64 {
        var first = true
        while true {
            let position = service.journalPosition ?? Checkpoint.Position(sequence: 0, checksum: 0)
            var from = position.sequence + 1
            if first {
                // A node started from a checkpoint taken inside an entry reads that entry too.
                if let holding = try await log.entry(holding: from), holding.first < from { from = holding.first }
                first = false
            }
            let read = try await log.read(from: from, limit: 32)
            if let oldest = read.entries.first?.first, oldest > position.sequence + 1 {
                throw BehindTheLog(shard: configuration.shard, local: position.sequence, oldest: oldest)
            }
            if read.entries.isEmpty {
                if let oldest = try await log.oldestFirst(), oldest > position.sequence + 1 {
                    throw BehindTheLog(shard: configuration.shard, local: position.sequence, oldest: oldest)
                }
                return read.revision
            }
            for entry in read.entries { try take(entry) }
            if !read.more { return read.revision }
        }
    }

    /// The local journal ends before the log in etcd begins: the leader trimmed what this node
    /// had not applied (it was down for longer than every other node took to checkpoint).
    struct BehindTheLog: Error, CustomStringConvertible {
        var shard: String
        var local: UInt64
        var oldest: UInt64
        var description: String {
            "this node's journal ends at record \(local) and shard \(shard)'s journal in etcd starts at \(oldest) (the records between were trimmed)"
        }
    }

    /// Copies another node's files into `DATA/bootstrap/`, for the next start to swap in.
    private func stageCopy(_ behind: BehindTheLog) async throws {
        logger.warning("\(behind): copying another node's checkpoint and keys to start again from", metadata: ["shard": "\(configuration.shard)"])
        let bootstrap = ClusterBootstrap(configuration: configuration, logger: logger, token: token)
        try await bootstrap.copy(needing: behind.oldest - 1, etcd: client, keys: log.keys)
    }

    // MARK: Status and trimming

    /// Publishes this node's status, and on the leader trims the log, until the node stops.
    private func housekeep() async {
        var lastTrim = ContinuousClock.now
        while !state.withLock({ $0.stopped }) {
            try? await Task.sleep(for: Self.statusInterval)
            if state.withLock({ $0.stopped }) { return }
            do {
                try await publishStatus()
            } catch {
                logger.debug("cannot publish this node's status to etcd", metadata: ["error": "\(error)"])
            }
            if ContinuousClock.now - lastTrim >= Self.trimInterval, let token = state.withLock({ $0.leadership?.token }), service.isDeciding {
                lastTrim = ContinuousClock.now
                do {
                    try await trim(token: token)
                } catch {
                    logger.warning("cannot trim the shard's journal in etcd", metadata: ["error": "\(error)"])
                }
            }
        }
    }

    /// `shards/SHARD/nodes/NODE`, on a lease of the node's own.
    private func publishStatus() async throws {
        var lease = state.withLock { $0.statusLease }
        if lease != 0, (try? await client.keepAlive(lease: lease)) ?? 0 <= 0 { lease = 0 }
        if lease == 0 {
            lease = try await client.grantLease(ttl: Self.statusLeaseSeconds).id
            state.withLock { $0.statusLease = lease }
        }
        let status = NodeStatus(
            node: node, address: election.record.address, applied: service.journalPosition?.sequence ?? 0, checkpoint: checkpointed())
        _ = try await client.put(log.keys.node(configuration.shard, node), Array(try JSONEncoder().encode(status)), lease: lease)
    }

    /// Deletes the entries every node of the shard has checkpointed past: the log keeps what
    /// the node with the oldest newest checkpoint needs after it, so any node can restart
    /// from its own files, and any node's newest checkpoint can start a new one. Fenced by the
    /// leader's token, like an append.
    private func trim(token: Int64) async throws {
        let statuses = try await client.range(log.keys.nodesPrefix(configuration.shard), end: etcdPrefixEnd(log.keys.nodesPrefix(configuration.shard))).kvs
            .compactMap { try? JSONDecoder().decode(NodeStatus.self, from: Data($0.value)) }
        guard statuses.contains(where: { $0.node == node }), let now = statuses.map(\.checkpoint).min() else { return }
        let floor = state.withLock { state -> UInt64 in
            defer { state.previousFloor = now }
            return min(now, state.previousFloor)
        }
        // A status is what etcd holds: a floor of the last sequence there is names no record.
        guard floor > 0, floor < UInt64.max else { return }
        guard let keep = try await log.entry(holding: floor + 1), let oldest = try await log.oldestFirst(), keep.first > oldest else { return }
        if let deleted = try await log.trim(before: keep.first, token: token), deleted > 0 {
            logger.info(
                "trimmed the shard's journal in etcd", metadata: ["entries": "\(deleted)", "before": "\(keep.first)", "nodes": "\(statuses.count)", "checkpointFloor": "\(floor)"])
        }
    }

    /// Takes one entry: skipped if the local journal already holds it, else it must follow
    /// the local journal's last record exactly.
    private func take(_ entry: LogEntry) throws {
        let position = service.journalPosition ?? Checkpoint.Position(sequence: 0, checksum: 0)
        if entry.first <= position.sequence {
            // An entry the local journal ends inside (a node started from a checkpoint taken
            // there): its records after the end, once the one at the end is checked.
            let records = try entry.records(chainingTo: nil).get()
            guard let last = records.last, last.record.sequence > position.sequence else { return }
            guard let mine = records.first(where: { $0.record.sequence == position.sequence }), mine.checksum == position.checksum else {
                throw ServerError("shard \(configuration.shard)'s journal in etcd differs from this node's at record \(position.sequence)")
            }
            guard let next = records.first(where: { $0.record.sequence == position.sequence + 1 }) else {
                throw ServerError("shard \(configuration.shard)'s journal in etcd has no record \(position.sequence + 1) in the entry at \(entry.first)")
            }
            let rest = LogEntry(first: position.sequence + 1, bytes: Array(entry.bytes[next.offset...]))
            try service.ingest(ByteBuffer(bytes: rest.bytes), records: try rest.records(chainingTo: position.checksum).get())
            return
        }
        guard entry.first == position.sequence + 1 else {
            throw ServerError("shard \(configuration.shard)'s journal in etcd has no record \(position.sequence + 1) (its next entry starts at \(entry.first))")
        }
        let records = try entry.records(chainingTo: position.checksum).get()
        try service.ingest(ByteBuffer(bytes: entry.bytes), records: records)
    }

    /// Follows the log and campaigns, in the background, until stopped or deposed.
    func start() {
        follow(after: nil)
        let task = Task { await campaign() }
        state.withLock { $0.campaign = task }
    }

    /// Watches the log after `revision` (nil: reads what is new first).
    private func follow(after revision: Int64?) {
        Task {
            var revision = revision
            while revision == nil {
                if state.withLock({ $0.stopped || $0.leadership != nil }) { return }
                do {
                    revision = try await catchUp()
                } catch let behind as BehindTheLog {
                    // Left behind while running (paused past its status lease, or cut off):
                    // start again from another node's files.
                    do {
                        try await stageCopy(behind)
                        depose("\(behind); copied another node's files to start from", leadershipLost: false)
                        return
                    } catch {
                        logger.warning("cannot copy another node's files; retrying", metadata: ["error": "\(error)"])
                        try? await Task.sleep(for: .seconds(2))
                    }
                } catch {
                    logger.warning("cannot read the shard's journal from etcd; retrying", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: .milliseconds(500))
                }
            }
            let watch = log.watch(after: revision!) { [weak self] report in
                guard let self else { return }
                switch report {
                case .entries(let entries, _):
                    do {
                        for entry in entries { try self.take(entry) }
                    } catch {
                        self.logger.warning("a replicated entry did not follow the local journal; reading again", metadata: ["error": "\(error)"])
                        self.refollow()
                    }
                case .ended(let reason):
                    self.logger.debug("the watch on the shard's journal ended; reading again", metadata: ["reason": "\(reason)"])
                    self.refollow()
                }
            }
            let cancel = state.withLock { state -> Bool in
                if state.stopped || state.leadership != nil { return true }
                state.watch?.cancel()
                state.watch = watch
                return false
            }
            if cancel { watch.cancel() }
        }
    }

    private func refollow() {
        let again = state.withLock { state -> Bool in
            guard !state.stopped, state.leadership == nil else { return false }
            state.watch?.cancel()
            state.watch = nil
            return true
        }
        if again {
            Task {
                try? await Task.sleep(for: .milliseconds(100))
                follow(after: nil)
            }
        }
    }

    private func noteLeader(_ current: CurrentLeader) {
        state.withLock { $0.leader = current }
        service.setFollowerRefusal(.notLeader(node: current.record?.node, address: current.record?.address, shard: configuration.shard))
    }

    /// The leader this node knows of (itself when it leads).
    var knownLeader: LeaderRecord? {
        state.withLock { state in state.leadership != nil ? election.record : state.leader?.record }
    }

    var isLeading: Bool { state.withLock { $0.leadership != nil } }

    private func campaign() async {
        let leadership: Leadership
        do {
            leadership = try await election.campaign { [weak self] current in self?.noteLeader(current) }
        } catch {
            return  // cancelled: stopping
        }
        let proceed = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.leadership = leadership
            state.watch?.cancel()
            state.watch = nil
            return true
        }
        guard proceed else {
            await election.resign(leadership)
            return
        }
        logger.notice("elected leader of the shard; reading the rest of its journal", metadata: ["shard": "\(configuration.shard)", "token": "\(leadership.token)"])
        // The lease is renewed from now on, however long the rest of the journal takes to read.
        let keeper = election.keep(
            leadership, renewed: { [service] deadline in service.leaseRenewed(until: deadline) }, lost: { [weak self] reason in self?.depose(reason) })
        state.withLock { $0.keeper = keeper }
        // Everything an earlier leader appended is fixed now (its appends are fenced): read it
        // all before deciding anything.
        while true {
            do {
                try await catchUp()
                break
            } catch let error as ServerError {
                depose("cannot take over: \(error)")
                return
            } catch {
                if keeper.endReason != nil { return }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        // Deposed meanwhile (the lease lapsed while reading): it must not start deciding.
        guard keeper.endReason == nil, !state.withLock({ $0.stopped }) else { return }
        let keptThrough = service.journalPosition?.sequence ?? 0
        let replica = ReplicatedJournal(log: log, token: leadership.token, keptThrough: keptThrough) { [weak self] reason in self?.depose(reason) }
        leading()
        service.lead(replica: replica, leaseValidUntil: service.currentLeaseDeadline ?? leadership.validUntil, now: now())
        logger.notice(
            "leading the shard", metadata: ["shard": "\(configuration.shard)", "node": "\(node)", "token": "\(leadership.token)", "records": "\(keptThrough)"])
    }

    /// Leadership is over: decide nothing more, and have the server restart.
    private func depose(_ reason: String, leadershipLost: Bool = true) {
        let first = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.stopped = true
            return true
        }
        guard first else { return }
        if leadershipLost {
            service.follow(refusal: WireError(.unavailable, "this node lost the shard's leadership and is restarting (\(reason)); retry with the same key"))
            logger.critical("no longer the shard's leader: stopping, to restart from what etcd holds", metadata: ["reason": "\(reason)"])
        } else {
            service.follow(refusal: WireError(.unavailable, "this node is restarting (\(reason)); retry with the same key"))
            logger.warning("stopping, to restart from another node's files", metadata: ["reason": "\(reason)"])
        }
        deposed(reason)
    }

    /// Stops following and campaigning; a leader resigns, so another takes over at once.
    func stop() async {
        let (watch, keeper, leadership, campaign, housekeeping, lease) = state.withLock { state in
            state.stopped = true
            return (state.watch, state.keeper, state.leadership, state.campaign, state.housekeeping, state.statusLease)
        }
        watch?.cancel()
        campaign?.cancel()
        housekeeping?.cancel()
        if lease != 0 { try? await client.revoke(lease: lease) }
        keeper?.stop()
        if let leadership { await election.resign(leadership) }
        client.close()
    }
}

extension ServerConfiguration {
    /// A client of the etcd this configuration names, and where the cluster's keys are.
    func etcd() throws -> (EtcdClient, ClusterKeys) {
        guard let keys = ClusterKeys(cluster: clusterName) else { throw ServerError("clusterName \(clusterName) is not valid") }
        let endpoints = try EtcdEndpoint.list(etcdEndpoints.joined(separator: ",")).get()
        return (EtcdClient(endpoints: endpoints, callTimeout: .milliseconds(etcdTimeoutMilliseconds)), keys)
    }
}

#if canImport(Glibc)
import Glibc
#endif
