/// The idempotency keys beyond the in-memory table.
///
/// The ledger keeps its most recent keys, with their full answers, in `IdempotencyTable`, at
/// most `LedgerLimits.idempotencyKeysMax` of them. When it has somewhere to put older keys
/// (`archivesEvictedKeys`), a full table hands its oldest key on instead of forgetting it:
/// the key, its fingerprint, its answer and the instant it was decided at, as an `ArchivedKey`,
/// taken by the server under the ledger's lock (`passEvictedKeys(to:)` after each decision,
/// `takeEvictedKeys()` after recovery) and kept on disk.
/// Which tier holds a key never changes what a retry gets: a key is remembered from its
/// decision until `idempotencyRetentionMicroseconds` later, in whichever tier it is. Both
/// tiers keep the decision instant — a recorded fact — not an expiry, so what is forgotten
/// and when follows from the journal and the retention in force, whatever else is configured.

/// A remembered key in the form the disk tier keeps: the key's 128-bit digest, the command's
/// fingerprint, the instant its request was decided (the journal record's), and the answer it
/// got. It is remembered while `decidedAt` + the retention is later than the ledger's clock.
public struct ArchivedKey: Hashable, Sendable {
    public var low: UInt64
    public var high: UInt64
    public var fingerprint: UInt64
    public var decidedAt: Instant
    public var answer: Answer

    public init(low: UInt64, high: UInt64, fingerprint: UInt64, decidedAt: Instant, answer: Answer) {
        self.low = low
        self.high = high
        self.fingerprint = fingerprint
        self.decidedAt = decidedAt
        self.answer = answer
    }

    /// The digest of (account, key) a command's key is kept under.
    public static func digest(account: String, key: String) -> (low: UInt64, high: UInt64) {
        let key = IdempotencyTable.Key(scope: account, key: key)
        return (key.low, key.high)
    }

    /// The answer in the compact form checkpoints use (a few dozen bytes).
    public var encodedAnswer: [UInt8] {
        var writer = SnapshotWriter()
        writer.write(answer)
        return writer.bytes
    }

    /// Reads an answer written by `encodedAnswer`; nil if the bytes are not one.
    public static func decodeAnswer(_ bytes: [UInt8]) -> Answer? {
        var reader = SnapshotReader(bytes: bytes)
        guard let answer = try? reader.readAnswer(), reader.position == bytes.count else { return nil }
        return answer
    }
}

/// Where the ledger finds keys that are no longer in its table: the server's disk tier,
/// through the answers it has already read for the request at hand.
public protocol OlderKeys {
    /// The key, if a tier beyond the table holds it (past its retention or not: the ledger decides).
    /// May read the disk; the server reads ahead, off the event loop, whatever it can.
    func find(low: UInt64, high: UInt64) -> ArchivedKey?
}

/// No tier beyond the table.
public enum NoOlderKeys: OlderKeys {
    public func find(low: UInt64, high: UInt64) -> ArchivedKey? { nil }
}

/// Keys the table let go of, waiting for the server to take them. Not part of the ledger's
/// value: where a key is kept does not change what the ledger decides.
struct EvictedKeys: Hashable, Sendable {
    var enabled = false
    var keys: [ArchivedKey] = []

    static func == (lhs: EvictedKeys, rhs: EvictedKeys) -> Bool { true }
    func hash(into hasher: inout Hasher) {}
}

extension Ledger {
    /// Whether a full table hands its oldest keys on (`passEvictedKeys`, `takeEvictedKeys`) rather than forget
    /// them. The server turns it on when it has a disk tier; it is not journaled or
    /// checkpointed, because it does not change any decision.
    public var archivesEvictedKeys: Bool {
        get { evicted.enabled }
        set { evicted.enabled = newValue }
    }

    public var hasEvictedKeys: Bool { !evicted.keys.isEmpty }

    /// The keys in the in-memory table, oldest first, in the disk tier's form (tests, tools).
    public var rememberedKeys: [ArchivedKey] { idempotency.entries }

    /// The keys the table let go of since the last call, oldest first.
    public mutating func takeEvictedKeys() -> [ArchivedKey] {
        // Swapped out, not copied: the caller takes the storage and the ledger starts anew.
        var taken: [ArchivedKey] = []
        swap(&taken, &evicted.keys)
        return taken
    }

    /// Hands the keys the table let go of since the last call to `body`, oldest first, then
    /// empties the list keeping its storage: the server's path, one call per decision with a
    /// full table, allocates nothing (`takeEvictedKeys` gives a new array each time).
    public mutating func passEvictedKeys(to body: ([ArchivedKey]) -> Void) {
        body(evicted.keys)
        evicted.keys.removeAll(keepingCapacity: true)
    }

    /// Makes room for one more key: the oldest goes to the evicted keys, or is forgotten
    /// early (and counted) when there is nowhere to put it.
    mutating func makeRoomForKey() {
        while idempotency.count >= limits.idempotencyKeysMax, let oldest = idempotency.removeOldest() {
            if evicted.enabled {
                evicted.keys.append(oldest)
            } else {
                idempotencyKeysForgottenEarly += 1
            }
        }
    }
}
