/// A key that picks its own shard: ids handed out in sequence spread evenly by their low bits.
protocol ShardedKey: Hashable, Sendable {
    var shard: Int { get }
}

extension HoldKey: ShardedKey {
    var shard: Int { Int(truncatingIfNeeded: id & UInt64(ShardedTable<HoldKey, Int>.shardMask)) }
}

extension UInt64: ShardedKey {
    var shard: Int { Int(truncatingIfNeeded: self & UInt64(ShardedTable<UInt64, Int>.shardMask)) }
}

/// A dictionary in 1,024 shards, for the tables every decision may change (open holds,
/// resolved holds, grants by id). A checkpoint copies the ledger value under the decision lock;
/// with a flat dictionary the first change after it copied the whole table (0.2–0.3 s with
/// many holds open, every decision waiting). Here it copies the array of shard references and
/// the one shard it touches: 1/1,024 of the table. (With 256 shards, 1,000,000 accounts and
/// 300,000 holds open, the first reserve after a copy took 16 ms; bench/README.md,
/// "Checkpoints".)
struct ShardedTable<Key: ShardedKey, Value: Hashable & Sendable>: Hashable, Sendable {
    static var shardCount: Int { 1_024 }
    static var shardMask: Int { shardCount - 1 }

    private var shards = [[Key: Value]](repeating: [:], count: shardCount)
    private(set) var count = 0

    init() {}

    var isEmpty: Bool { count == 0 }

    subscript(key: Key) -> Value? {
        get { shards[key.shard][key] }
        set {
            let shard = key.shard
            if let newValue {
                if shards[shard].updateValue(newValue, forKey: key) == nil { count += 1 }
            } else if shards[shard].removeValue(forKey: key) != nil {
                count -= 1
            }
        }
    }

    @discardableResult
    mutating func removeValue(forKey key: Key) -> Value? {
        let removed = shards[key.shard].removeValue(forKey: key)
        if removed != nil { count -= 1 }
        return removed
    }

    /// Every value, shard by shard (no meaningful order).
    var values: [Value] { shards.flatMap { $0.values } }

    /// Every entry, shard by shard (no meaningful order).
    var entries: [(key: Key, value: Value)] { shards.flatMap { $0.map { (key: $0.key, value: $0.value) } } }

    mutating func reserveCapacity(_ capacity: Int) {
        let each = capacity / Self.shardCount + 1
        for index in shards.indices { shards[index].reserveCapacity(each) }
    }
}
