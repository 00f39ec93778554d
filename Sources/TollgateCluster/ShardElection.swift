import Foundation
import NIOCore
import Synchronization

/// Who leads a shard, as its leader key says: what a follower names to a client, and where a
/// router sends the shard's requests.
public struct LeaderRecord: Codable, Sendable, Equatable {
    /// The node's name, unique in the shard.
    public var node: String
    /// Its gate address (HOST:PORT), as clients and routers reach it.
    public var address: String

    public init(node: String, address: String) {
        self.node = node
        self.address = address
    }

    var bytes: [UInt8] { Array((try? JSONEncoder().encode(self)) ?? Data()) }

    init?(bytes: [UInt8]) {
        guard let record = try? JSONDecoder().decode(LeaderRecord.self, from: Data(bytes)) else { return nil }
        self = record
    }
}

/// Leading a shard: the lease that keeps the leader key, and the key's create revision, which
/// every append carries as its fencing token.
public struct Leadership: Sendable, Equatable {
    public var lease: Int64
    public var token: Int64
    public var record: LeaderRecord
    /// Until when the lease surely lasts: its TTL from the moment the grant was sent (etcd
    /// started its TTL later). Past it, this node must act as if it no longer leads.
    public var validUntil: NIODeadline
}

/// The shard's current leader and its token.
public struct CurrentLeader: Sendable, Equatable {
    public var record: LeaderRecord?
    public var token: Int64
    /// The store's revision when this was read.
    public var revision: Int64
}

/// What one try to lead came to.
public enum Attempt: Sendable, Equatable {
    case elected(Leadership)
    /// Another node leads (or its key is still there).
    case led(CurrentLeader)
}

/// Leader election for one shard on an etcd lease: the leader key is created only if absent,
/// attached to the candidate's lease; it goes when the lease does (the leader stopped renewing
/// it, or resigned). Being elected is not what makes a node's appends safe — fencing is: each
/// append compares the leader key's create revision with the token it got here, so a leader
/// that was paused past its lease and did not notice can never append.
public final class ShardElection: Sendable {
    public let client: EtcdClient
    public let keys: ClusterKeys
    public let shard: String
    public let record: LeaderRecord
    /// The lease's time to live: how long a dead leader keeps its shard without a leader.
    public let ttlSeconds: Int64

    public init(client: EtcdClient, keys: ClusterKeys, shard: String, record: LeaderRecord, ttlSeconds: Int64) {
        self.client = client
        self.keys = keys
        self.shard = shard
        self.record = record
        self.ttlSeconds = ttlSeconds
    }

    /// Who leads now, read from etcd (linearizable).
    public func current() async throws -> CurrentLeader {
        let range = try await client.range(keys.leader(shard))
        let kv = range.kvs.first
        return CurrentLeader(record: kv.flatMap { LeaderRecord(bytes: $0.value) }, token: kv?.createRevision ?? 0, revision: range.revision)
    }

    /// One try: the leader key if it is free, on a lease granted for it. Otherwise the leader
    /// there is now (and the lease is revoked).
    public func tryToLead() async throws -> Attempt {
        let sent = NIODeadline.now()
        let lease = try await client.grantLease(ttl: ttlSeconds)
        let validUntil = sent + .seconds(min(ttlSeconds, lease.ttl))
        let key = keys.leader(shard)
        do {
            let result = try await client.txn(
                [.createRevision(key, .equal, 0)], success: [.put(key: key, value: record.bytes, lease: lease.id)], failure: [.range(key: key)])
            if result.succeeded {
                return .elected(Leadership(lease: lease.id, token: result.revision, record: record, validUntil: validUntil))
            }
            try? await client.revoke(lease: lease.id)
            let kv = result.results.first?.kvs.first
            return .led(CurrentLeader(record: kv.flatMap { LeaderRecord(bytes: $0.value) }, token: kv?.createRevision ?? 0, revision: result.revision))
        } catch let error as EtcdError where error.outcomeUnknown {
            // The put may have landed: look. If the key is ours (on this lease), we lead.
            if let kv = try? await client.range(key).kvs.first, kv.lease == lease.id {
                return .elected(Leadership(lease: lease.id, token: kv.createRevision, record: record, validUntil: validUntil))
            }
            try? await client.revoke(lease: lease.id)
            throw error
        }
    }

    /// Waits until the leader key is gone (or `timeout` passes): the moment to try again.
    public func waitForVacancy(after current: CurrentLeader, timeout: Duration) async {
        if current.token == 0 { return }
        let gone = AsyncStream<Void>.makeStream()
        let watch = client.watch(keys.leader(shard), from: current.revision &+ 1) { event in
            switch event {
            case .changes(let changes, _):
                if changes.contains(where: { if case .delete = $0 { return true } else { return false } }) { gone.continuation.yield() }
            case .ended: gone.continuation.yield()
            case .created: break
            }
        }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            gone.continuation.yield()
        }
        for await _ in gone.stream { break }
        timer.cancel()
        watch.cancel()
    }

    /// Campaigns until elected or cancelled. `led` hears of each leader seen meanwhile.
    public func campaign(led: @Sendable (CurrentLeader) -> Void = { _ in }) async throws -> Leadership {
        while true {
            try Task.checkCancellation()
            do {
                switch try await tryToLead() {
                case .elected(let leadership): return leadership
                case .led(let current):
                    led(current)
                    await waitForVacancy(after: current, timeout: .seconds(ttlSeconds))
                }
            } catch let error as EtcdError where error.outcomeUnknown || error.kind == .leaseNotFound {
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    /// Keeps the lease alive until `lost` is called, which happens once: when etcd says the
    /// lease is gone, or when it was not renewed before `validUntil` (the lease may be gone
    /// for all this node can tell), or never after `Keeper.stop`. Renews every third of the
    /// TTL; `renewed` hears each new `validUntil` (the TTL from when that renewal was sent).
    public func keep(
        _ leadership: Leadership, renewed: @escaping @Sendable (NIODeadline) -> Void = { _ in }, lost: @escaping @Sendable (String) -> Void
    ) -> Keeper {
        let keeper = Keeper()
        let client = self.client
        let ttl = ttlSeconds
        let task = Task {
            var validUntil = leadership.validUntil
            while !Task.isCancelled {
                let pause = TimeAmount.milliseconds(ttl * 1000 / 3)
                // Wakes for the next renewal, or at the deadline if that comes first.
                let wake = min(NIODeadline.now() + pause, validUntil)
                let wait = wake - NIODeadline.now()
                if wait > .zero { try? await Task.sleep(for: .nanoseconds(wait.nanoseconds)) }
                if Task.isCancelled { break }
                if NIODeadline.now() >= validUntil {
                    keeper.end("the leader's lease was not renewed within its \(ttl) s")
                    break
                }
                let sent = NIODeadline.now()
                do {
                    let granted = try await client.keepAlive(lease: leadership.lease)
                    validUntil = sent + .seconds(min(ttl, granted))
                    renewed(validUntil)
                } catch let error as EtcdError where error.kind == .leaseNotFound {
                    keeper.end("the leader's lease has expired")
                    break
                } catch {
                    // Tried again at the next wake; the deadline decides.
                }
            }
        }
        keeper.start(task, lost)
        return keeper
    }

    /// Gives the shard up: deletes the leader key if it is still this leadership's, and ends
    /// the lease.
    public func resign(_ leadership: Leadership) async {
        let key = keys.leader(shard)
        _ = try? await client.txn([.createRevision(key, .equal, leadership.token)], success: [.deleteRange(key: key)])
        try? await client.revoke(lease: leadership.lease)
    }

    /// The task that renews a leader's lease.
    public final class Keeper: Sendable {
        private let state = Mutex<(task: Task<Void, Never>?, lost: (@Sendable (String) -> Void)?, ended: String?)>((nil, nil, nil))

        func start(_ task: Task<Void, Never>, _ lost: @escaping @Sendable (String) -> Void) {
            let ended = state.withLock { state -> String? in
                state.task = task
                state.lost = lost
                return state.ended
            }
            if let ended { lost(ended) }
        }

        func end(_ reason: String) {
            let lost = state.withLock { state -> (@Sendable (String) -> Void)? in
                guard state.ended == nil else { return nil }
                state.ended = reason
                return state.lost
            }
            lost?(reason)
        }

        /// Stops renewing (the lease then expires unless resigned first). `lost` is not called.
        public func stop() {
            let task = state.withLock { state -> Task<Void, Never>? in
                state.ended = state.ended ?? "stopped"
                return state.task
            }
            task?.cancel()
        }

        /// Why the leadership ended, once it has.
        public var endReason: String? { state.withLock { $0.ended } }
    }
}
