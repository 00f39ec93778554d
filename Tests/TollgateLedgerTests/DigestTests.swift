import Testing
@testable import TollgateLedger

/// Idempotency digests and command fingerprints are stored: in checkpoints, in the disk tier's
/// key runs and (as the decision) in the journal's replay. A faster way of computing them must
/// give the same values, or a retry after an upgrade would miss its key or meet a conflict.
@Suite struct DigestTests {
    /// The digest as first defined: four separate passes over the scope and the key.
    static func digestAsDefined(scope: String, key: String) -> (low: UInt64, high: UInt64) {
        (FastHash.mix(
            FastHash.hash(scope, seed: FastHash.stableSeed) ^ 0x5851_F42D_4C95_7F2D, FastHash.hash(key, seed: FastHash.stableSeed) | 1),
         FastHash.mix(
            FastHash.hash(scope, seed: FastHash.stableSecondSeed) ^ 0x1405_7B7E_F767_814F,
            FastHash.hash(key, seed: FastHash.stableSecondSeed) | 1))
    }

    static let strings: [String] = {
        var strings = ["", "a", "acme", "op-1", "agent-7f3c2a91-12345", "é", "ü€𝄞", String(repeating: "x", count: 200)]
        for length in 0...40 { strings.append(String((0..<length).map { Character(UnicodeScalar(UInt8(33 + ($0 * 7 + length) % 90))) })) }
        // A native string too large to be small, and a bridged-like substring copy.
        strings.append(String("prefix-" + String(repeating: "k", count: 64)).dropFirst(3).description)
        return strings
    }()

    @Test func theOnePassDigestEqualsTheDigestAsDefined() {
        for scope in Self.strings.prefix(12) {
            for key in Self.strings {
                let digest = IdempotencyTable.Key(scope: scope, key: key)
                let defined = Self.digestAsDefined(scope: scope, key: key)
                #expect(digest.low == defined.low && digest.high == defined.high, "scope \(scope.debugDescription), key \(key.debugDescription)")
            }
        }
    }

    @Test func thePairIsTheTwoStableHashes() {
        for string in Self.strings {
            let pair = FastHash.stablePair(string)
            #expect(pair.first == FastHash.hash(string, seed: FastHash.stableSeed))
            #expect(pair.second == FastHash.hash(string, seed: FastHash.stableSecondSeed))
        }
    }

    /// Values as earlier releases computed them (checked against an independent implementation of
    /// the formula, in Python): a change to the hash itself fails here.
    @Test func digestsAndFingerprintsKeepTheirStoredValues() {
        let digest = IdempotencyTable.Key(scope: "acme", key: "agent-step-1")
        #expect(digest.low == 4_536_079_648_714_489_560)
        #expect(digest.high == 4_676_232_720_139_712_116)
        let reserve = Command.reserve(Reserve(DecisionRequest(account: "acme", member: "ana", product: "ai.assistant", quantity: 3), ttlMicroseconds: 30_000_000))
        #expect(reserve.fingerprint == 12_833_057_312_030_640_693)
    }

    @Test func aFingerprintGivenTheAccountsHashEqualsOneWithout() {
        let request = DecisionRequest(account: "acme", member: "ana", product: "ai.assistant", quantity: 3)
        let reference = HoldReference(account: "acme", hold: 42)
        let commands: [Command] = [
            .reserve(Reserve(request, ttlMicroseconds: 1_000)),
            .spend(Spend(request)),
            .spend(Spend(DecisionRequest(account: "acme", member: nil, product: "p", quantity: 1))),
            .commit(Commit(reference, amount: .held)),
            .commit(Commit(reference, amount: .credits(7), isFinal: false)),
            .commit(Commit(reference, amount: .quantity(2))),
            .release(reference),
            .extend(Extend(reference, ttlMicroseconds: 5)),
            .addMember(account: "acme", member: "ben"),
        ]
        for command in commands {
            let hash = FastHash.hash(command.account, seed: FastHash.stableSeed)
            #expect(command.fingerprint(accountHash: hash) == command.fingerprint, "\(command)")
        }
    }
}
