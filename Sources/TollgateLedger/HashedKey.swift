/// Dictionary keys for the hot path. Swift's default hashing runs SipHash over every byte of
/// a string on every lookup, which was the largest single cost of a decision. These keys hash
/// their bytes once, with a fast multiply-mix hash seeded per process (so crafted keys cannot
/// be made to collide ahead of time), and hand the dictionary that value directly.
enum FastHash {
    /// Chosen at random once per process. Hash values are never stored or compared across
    /// processes; state equality compares keys, not hashes.
    static let seed: UInt64 = {
        var hasher = Hasher()
        hasher.combine(0x746F_6C6C_6761_7465 as UInt64)
        return UInt64(bitPattern: Int64(hasher.finalize()))
    }()

    @inline(__always)
    static func mix(_ left: UInt64, _ right: UInt64) -> UInt64 {
        let product = left.multipliedFullWidth(by: right)
        return product.high ^ product.low
    }

    /// A second, independent seed, for 128-bit digests.
    static let secondSeed: UInt64 = mix(seed ^ 0x2D35_8DCC_AA6C_78A5, 0x8BB8_4B93_962E_ACC9) | 1

    /// Fixed seeds, for the digests and fingerprints a checkpoint stores: they must come out
    /// the same in the next process. Where they pick a hash-table bucket, the per-process
    /// `seed` is mixed in first, so crafted keys still cannot be aimed at one bucket.
    static let stableSeed: UInt64 = 0x5465_6C6C_6761_7465
    static let stableSecondSeed: UInt64 = 0x4A6F_7572_6E61_6C31

    static func hash(_ string: String, seed: UInt64 = FastHash.seed) -> UInt64 {
        if let value = string.utf8.withContiguousStorageIfAvailable({ hash($0, seed: seed) }) { return value }
        var copy = string
        return copy.withUTF8 { bytes in hash(bytes, seed: seed) }
    }

    /// `hash(string, seed: stableSeed)` and `hash(string, seed: stableSecondSeed)` in one pass
    /// over the bytes: the two halves of an idempotency digest.
    @inline(__always)
    static func stablePair(_ string: String) -> (first: UInt64, second: UInt64) {
        if let value = string.utf8.withContiguousStorageIfAvailable({ stablePair($0) }) { return value }
        var copy = string
        return copy.withUTF8 { bytes in stablePair(bytes) }
    }

    static func stablePair(_ bytes: UnsafeBufferPointer<UInt8>) -> (first: UInt64, second: UInt64) {
        let length = UInt64(bytes.count) &* 0x9E37_79B9_7F4A_7C15
        var first = stableSeed ^ length
        var second = stableSecondSeed ^ length
        let read = forEachWord(bytes) { word, multiplier in
            first = mix(first ^ word, multiplier)
            second = mix(second ^ word, multiplier)
        }
        guard read else { return (mix(first, 0xA076_1D64_78BD_642F), mix(second, 0xA076_1D64_78BD_642F)) }
        return (mix(first, 0x8EBC_6AF0_9C88_C6E3), mix(second, 0x8EBC_6AF0_9C88_C6E3))
    }

    static func hash(_ bytes: UnsafeBufferPointer<UInt8>, seed: UInt64 = FastHash.seed) -> UInt64 {
        var state = seed ^ UInt64(bytes.count) &* 0x9E37_79B9_7F4A_7C15
        let read = forEachWord(bytes) { word, multiplier in state = mix(state ^ word, multiplier) }
        guard read else { return mix(state, 0xA076_1D64_78BD_642F) }
        return mix(state, 0x8EBC_6AF0_9C88_C6E3)
    }

    /// The hash's walk over the bytes: each whole 8-byte word with one multiplier, then the
    /// tail's bytes as one word with another. False (and nothing read) for a buffer with no
    /// base address, which the hash finishes differently (a stored value depends on it).
    @inline(__always)
    private static func forEachWord(_ bytes: UnsafeBufferPointer<UInt8>, _ body: (_ word: UInt64, _ multiplier: UInt64) -> Void) -> Bool {
        guard let base = bytes.baseAddress else { return false }
        let raw = UnsafeRawPointer(base)
        var offset = 0
        while offset + 8 <= bytes.count {
            body(raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self), 0xA076_1D64_78BD_642F)
            offset += 8
        }
        if offset < bytes.count {
            var tail: UInt64 = 0
            var shift: UInt64 = 0
            while offset < bytes.count {
                tail |= UInt64(raw.load(fromByteOffset: offset, as: UInt8.self)) << shift
                shift += 8
                offset += 1
            }
            body(tail, 0xE703_7ED1_A0B4_28DB)
        }
        return true
    }
}

/// Feeds values one at a time into a 64-bit hash, for fingerprints of whole commands.
struct FastHasher {
    private(set) var state: UInt64

    /// Seeded with the fixed seed: a fingerprint is the same in every process.
    init(tag: UInt64) {
        state = FastHash.mix(FastHash.stableSeed ^ tag, 0x9E37_79B9_7F4A_7C15)
    }

    mutating func add(_ value: UInt64) {
        state = FastHash.mix(state ^ value, 0xA076_1D64_78BD_642F)
    }

    mutating func add(_ value: Int64) {
        add(UInt64(bitPattern: value))
    }

    mutating func add(_ string: String) {
        add(stableHash: FastHash.hash(string, seed: FastHash.stableSeed), of: string)
    }

    /// `add(string)` with the string's stable hash already taken (the account's, which its
    /// idempotency digest takes too).
    mutating func add(stableHash: UInt64, of string: String) {
        add(stableHash)
        add(UInt64(string.utf8.count))
    }

    mutating func add(_ string: String?) {
        if let string { add(1 as UInt64); add(string) } else { add(0 as UInt64) }
    }
}

/// A key that carries its own 64-bit hash. Dictionary asks keys for `_rawHashValue(seed:)`;
/// answering from the stored hash skips SipHash entirely.
protocol PrehashedKey: Hashable {
    var hash: UInt64 { get }
}

extension PrehashedKey {
    func hash(into hasher: inout Hasher) {
        hasher.combine(hash)
    }

    func _rawHashValue(seed: Int) -> Int {
        Int(truncatingIfNeeded: FastHash.mix(hash ^ UInt64(bitPattern: Int64(seed)), 0x9E37_79B9_7F4A_7C15))
    }
}

/// A string with its hash computed once.
struct HashedString: PrehashedKey, Sendable, CustomStringConvertible {
    let string: String
    let hash: UInt64

    init(_ string: String) {
        self.string = string
        self.hash = FastHash.hash(string)
    }

    static func == (lhs: HashedString, rhs: HashedString) -> Bool {
        lhs.hash == rhs.hash && lhs.string == rhs.string
    }

    var description: String { string }
}

/// A hold id as a dictionary key, hashed with one multiply instead of SipHash.
struct HoldKey: PrehashedKey, Sendable {
    let id: HoldID

    var hash: UInt64 { id ^ FastHash.seed }

    init(_ id: HoldID) {
        self.id = id
    }
}

/// A member's id within its account, as one key for the ledger-wide member index: one hash
/// table for every member instead of one per account, so a lookup touches fewer cache lines.
struct MemberKey: PrehashedKey, Sendable {
    let account: Int32
    let member: String
    let hash: UInt64

    init(account: Int32, member: String) {
        self.account = account
        self.member = member
        self.hash = FastHash.mix(FastHash.hash(member) ^ UInt64(UInt32(bitPattern: account)), 0x9FB2_1C65_1E98_DF25)
    }

    static func == (lhs: MemberKey, rhs: MemberKey) -> Bool {
        lhs.hash == rhs.hash && lhs.account == rhs.account && lhs.member == rhs.member
    }
}
