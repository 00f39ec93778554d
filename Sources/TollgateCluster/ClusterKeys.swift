/// Where a cluster keeps its state in etcd. Everything is under `/tollgate/CLUSTER/`:
///
/// - `shards/SHARD/leader`: the shard's leader (a `LeaderRecord` in JSON), attached to the
///   leader's lease. Its create revision is the leader's fencing token.
/// - `shards/SHARD/log/FIRST`: the shard's replicated journal, one entry per append, keyed by
///   the sequence of its first record as 20 decimal digits (so key order is journal order).
///   The value is journal records exactly as proto/JOURNAL.md §2 lays them out in a segment.
/// - `shards/SHARD/nodes/NODE`: what each node of the shard has applied and checkpointed
///   (attached to the node's lease), which bounds how far the log may be trimmed.
public struct ClusterKeys: Sendable, Hashable {
    public let cluster: String
    public let root: String

    /// Cluster, shard and node names: 1 to 63 of `a-z 0-9 - _ .`, not starting with `.`, so a
    /// name can never reach outside its own prefix.
    public static func isValidName(_ name: String) -> Bool {
        guard (1...63).contains(name.utf8.count), name.first != "." else { return false }
        return name.utf8.allSatisfy { byte in
            (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
        }
    }

    public init?(cluster: String) {
        guard Self.isValidName(cluster) else { return nil }
        self.cluster = cluster
        self.root = "/tollgate/\(cluster)/"
    }

    public func shard(_ shard: String) -> String { root + "shards/\(shard)/" }
    /// The shard map: `map/shards` (a JSON array of the shards new account families are
    /// placed on) and `map/accounts/ACCOUNT` (the shard that holds ACCOUNT).
    public var mapPrefix: String { root + "map/" }
    public var shardList: String { root + "map/shards" }
    public var placementsPrefix: String { root + "map/accounts/" }
    public func placement(_ account: String) -> String { placementsPrefix + account }
    public func leader(_ shard: String) -> String { self.shard(shard) + "leader" }
    public func logPrefix(_ shard: String) -> String { self.shard(shard) + "log/" }
    public func nodesPrefix(_ shard: String) -> String { self.shard(shard) + "nodes/" }
    public func node(_ shard: String, _ node: String) -> String { nodesPrefix(shard) + node }

    public func logKey(_ shard: String, first: UInt64) -> String {
        let digits = String(first)
        return logPrefix(shard) + String(repeating: "0", count: max(0, 20 - digits.count)) + digits
    }

    /// The first sequence a log key names, or nil if it is not one of `shard`'s log keys.
    public func firstSequence(ofLogKey key: String, shard: String) -> UInt64? {
        let prefix = logPrefix(shard)
        guard key.hasPrefix(prefix) else { return nil }
        let digits = key.dropFirst(prefix.count)
        guard digits.count == 20, digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return UInt64(digits)
    }
}

/// The value of `map/accounts/ACCOUNT`: the shard that holds the account — and, after
/// `tollgate cluster move`, the shard it left and when, as `SHARD from OLD at MICROSECONDS`
/// (since the epoch), so routers ask the old shard first about requests it may already have
/// decided, while their idempotency keys are kept there (docs/CLUSTER.md, "Moving a family").
public struct AccountPlacement: Hashable, Sendable, CustomStringConvertible {
    public var shard: String
    public var movedFrom: String?
    /// When the move was recorded, in microseconds since the epoch; 0 if it never moved.
    public var movedAt: Int64

    public init(shard: String, movedFrom: String? = nil, movedAt: Int64 = 0) {
        self.shard = shard
        self.movedFrom = movedFrom
        self.movedAt = movedAt
    }

    /// Nil if `text` is neither form (or names an invalid shard).
    public init?(text: String) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        switch parts.count {
        case 1 where ClusterKeys.isValidName(parts[0]):
            self.init(shard: parts[0])
        case 5 where ClusterKeys.isValidName(parts[0]) && parts[1] == "from" && ClusterKeys.isValidName(parts[2]) && parts[3] == "at":
            guard let at = Int64(parts[4]), at >= 0 else { return nil }
            self.init(shard: parts[0], movedFrom: parts[2], movedAt: at)
        default:
            return nil
        }
    }

    public var text: String {
        guard let movedFrom else { return shard }
        return "\(shard) from \(movedFrom) at \(movedAt)"
    }

    public var description: String { text }

    /// The shard to ask first about a request with an idempotency key: the one the family
    /// left, while keys decided there may still be kept (`retentionMicroseconds` after the
    /// move, by the wall clock `now`); else where it is.
    public func firstShard(forKeyedRequestAt now: Int64, retentionMicroseconds: Int64) -> String {
        guard let movedFrom, now < movedAt &+ retentionMicroseconds else { return shard }
        return movedFrom
    }
}

/// What a node of a shard publishes at `shards/SHARD/nodes/NODE`, attached to a lease of its
/// own (so it vanishes when the node stops renewing it): where it is, what it has applied and
/// its newest checkpoint. The leader trims the log to what every node's newest checkpoint
/// leaves needed; a new node copies the files of the node with the newest checkpoint.
public struct NodeStatus: Codable, Sendable, Equatable {
    public var node: String
    /// Its gate address (HOST:PORT).
    public var address: String
    /// The last record of its local journal.
    public var applied: UInt64
    /// The sequence its newest checkpoint includes (0: none yet).
    public var checkpoint: UInt64

    public init(node: String, address: String, applied: UInt64, checkpoint: UInt64) {
        self.node = node
        self.address = address
        self.applied = applied
        self.checkpoint = checkpoint
    }
}

/// FNV-1a, 64 bits: how routers place a new family on the shard list, the same on every router.
public func fnv1a64(_ text: String) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
    return hash
}
