import Testing
import TollgateLedger
import TollgateLedgerTestSupport

@Suite struct IdempotencyTests {
    @Test func aRetryReturnsTheOriginalAnswerAndChangesNothing() throws {
        var driver = makeDriver()
        driver.grant(100)
        let first = driver.reserve(30, key: "agent-step-1")
        let before = driver.ledger
        driver.advance(microseconds: second)
        let retry = driver.reserve(30, key: "agent-step-1")
        #expect(retry == first)
        #expect(driver.ledger.openHoldCount == before.openHoldCount)
        #expect(driver.balance(account: "acct").funds.pool == 70)
        let hold = try #require(first.decision?.hold)
        let commit = driver.commit(hold, .credits(10), key: "commit-1")
        #expect(driver.commit(hold, .credits(10), key: "commit-1") == commit)
        #expect(driver.balance(account: "acct").levels.last?.consumed == 10)
    }

    @Test func theSameKeyWithOtherFieldsIsAConflict() {
        var driver = makeDriver()
        driver.grant(100)
        _ = driver.spend(10, key: "k")
        let conflict = driver.spend(11, key: "k")
        #expect(conflict.refusal?.error == LedgerError(.idempotencyConflict, level: .request, subject: "k"))
        #expect(driver.balance(account: "acct").funds.pool == 90)
    }

    @Test func partialCommitRetriesNeverDoubleCharge() throws {
        var driver = makeDriver()
        driver.grant(100)
        let hold = try #require(driver.reserve(50).decision?.hold)
        for _ in 0..<3 { _ = driver.commit(hold, .credits(10), final: false, key: "chunk-1") }
        for _ in 0..<3 { _ = driver.commit(hold, .credits(10), final: false, key: "chunk-2") }
        #expect(driver.ledger.hold(hold)?.committed == 20)
        #expect(driver.ledger.hold(hold)?.held == 30)
    }

    @Test func refusalsAreRememberedButInvalidInputIsNot() {
        var driver = makeDriver()
        #expect(driver.spend(10, key: "a").errorCode == .insufficientFunds)
        driver.grant(100)
        // A retry of a refused request gets the refusal again; a new attempt needs a new key.
        #expect(driver.spend(10, key: "a").errorCode == .insufficientFunds)
        #expect(driver.spend(10, key: "b").decision != nil)
        #expect(driver.spend(0, key: "c").errorCode == .amountOutOfRange)
        #expect(driver.spend(1, key: "c").decision != nil, "invalid input did not claim the key")
    }

    @Test func keysAreScopedByAccount() {
        var driver = makeDriver()
        driver.grant(100)
        driver.setUp(.createAccount(CreateAccount(account: "other")))
        driver.setUp(.addMember(account: "other", member: "m1"))
        driver.grant(100, account: "other")
        _ = driver.spend(10, key: "shared")
        #expect(driver.spend(20, account: "other", key: "shared").decision?.cost == 20)
    }

    @Test func keysAreForgottenAfterTheRetention() {
        var limits = LedgerLimits()
        limits.idempotencyRetentionMicroseconds = 10 * second
        var driver = makeDriver(limits: limits)
        driver.grant(100)
        _ = driver.spend(10, key: "k")
        driver.advance(microseconds: 10 * second - 1)
        _ = driver.spend(10, key: "k")
        #expect(driver.balance(account: "acct").funds.pool == 90)
        driver.advance(microseconds: 1)
        _ = driver.spend(10, key: "k")
        #expect(driver.balance(account: "acct").funds.pool == 80)
    }

    @Test func aFullTableWithNowhereToPutKeysForgetsTheOldestAndNeverRefuses() {
        var limits = LedgerLimits()
        limits.idempotencyKeysMax = 20
        var driver = makeDriver(limits: limits)
        driver.grant(100)
        let used = driver.ledger.idempotencyKeyCount
        for index in 0..<(20 - used) { _ = driver.spend(1, key: "fill-\(index)") }
        // Full: a new key is decided, not refused; the oldest key (from set-up) is forgotten.
        #expect(driver.spend(1, key: "one-more").decision != nil)
        #expect(driver.ledger.idempotencyKeysForgottenEarly == 1)
        #expect(driver.ledger.idempotencyKeyCount == 20)
        let before = driver.balance(account: "acct").funds.pool
        _ = driver.spend(1, key: "fill-5")
        #expect(driver.balance(account: "acct").funds.pool == before, "recent keys are still known")
    }

    /// An older tier for tests: a dictionary of what the table let go of.
    final class DictionaryTier: OlderKeys {
        var keys: [String: ArchivedKey] = [:]
        var finds = 0
        func take(_ evicted: [ArchivedKey]) { for key in evicted { keys["\(key.low)/\(key.high)"] = key } }
        func find(low: UInt64, high: UInt64) -> ArchivedKey? {
            finds += 1
            return keys["\(low)/\(high)"]
        }
    }

    @Test func aFullTableHandsItsOldestKeysOnAndRetriesFindThemThere() throws {
        var limits = LedgerLimits()
        limits.idempotencyKeysMax = 10
        var ledger = Ledger(limits: limits, startingAt: Instant(microsecondsSinceEpoch: 1_000_000))
        ledger.archivesEvictedKeys = true
        let tier = DictionaryTier()
        let at = Instant(microsecondsSinceEpoch: 1_000_000)
        func apply(_ command: Command, _ key: String) -> Answer {
            let answer = ledger.applyRecording(command, key: key, at: at, older: tier).answer
            tier.take(ledger.takeEvictedKeys())
            return answer
        }
        _ = apply(.createAccount(CreateAccount(account: "a")), "create")
        _ = apply(.addGrant(AddGrant(account: "a", amount: 1_000, effectiveAt: .epoch)), "grant")
        _ = apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch), "rate")
        var first: [Answer] = []
        for index in 0..<30 {
            first.append(apply(.spend(Spend(DecisionRequest(account: "a", member: nil, product: "p", quantity: 1))), "spend-\(index)"))
        }
        #expect(ledger.idempotencyKeyCount == 10)
        #expect(ledger.idempotencyKeysForgottenEarly == 0, "handed on, not forgotten")
        #expect(tier.keys.count == 23)
        let pool = try ledger.balance(account: "a", member: nil, at: at).get().funds.pool
        // Retries of keys in either tier get the first answer and change nothing.
        for index in [0, 5, 19, 29] {
            let retry = apply(.spend(Spend(DecisionRequest(account: "a", member: nil, product: "p", quantity: 1))), "spend-\(index)")
            #expect(retry == first[index])
        }
        #expect(try ledger.balance(account: "a", member: nil, at: at).get().funds.pool == pool)
        // The same key with other fields is a conflict from the older tier too.
        let conflict = apply(.spend(Spend(DecisionRequest(account: "a", member: nil, product: "p", quantity: 2))), "spend-0")
        #expect(conflict.refusal?.error.code == .idempotencyConflict)
        // Past the retention, a key in the older tier is a new request.
        let later = at.adding(microseconds: limits.idempotencyRetentionMicroseconds)
        let renewed = ledger.applyRecording(
            .spend(Spend(DecisionRequest(account: "a", member: nil, product: "p", quantity: 1))), key: "spend-0", at: later, older: tier)
        #expect(renewed.changedState)
        #expect(try ledger.balance(account: "a", member: nil, at: later).get().funds.pool == pool - 1)
    }

    @Test func keysMustBeUsable() {
        var driver = makeDriver()
        driver.grant(100)
        #expect(driver.spend(1, key: "").errorCode == .invalidArgument)
        #expect(driver.spend(1, key: String(repeating: "x", count: 129)).errorCode == .invalidArgument)
    }

    // The two tests below make tens of thousands of decisions: on a thread of their own
    // (`OffPool.cpu`), returning what they found, rather than on the test pool.
    @Test func theIndexRemembersExactlyTheKeysWithinRetentionUnderChurn() async throws {
        let found = try await OffPool.cpu { () throws -> [String] in
        var found: [String] = []
        var limits = LedgerLimits()
        limits.idempotencyRetentionMicroseconds = 1_000
        var driver = makeDriver(limits: limits)
        driver.grant(1_000_000_000)
        var rng = SeededGenerator(seed: 42)
        var spentAt: [Instant] = []
        var usedOwnKey: [Bool] = []
        var charged: Credits = 0
        for index in 0..<30_000 {
            // Mostly new keys; now and then a retry of a key from the last 2,000 microseconds.
            let back = Int.random(in: 1...max(1, min(index - 1, 2_000)), using: &rng)
            if index > 10, Int.random(in: 0..<4, using: &rng) == 0, usedOwnKey[index - back] {
                let original = index - back
                let stillKnown = driver.ledger.decisionInstant(for: driver.now) < spentAt[original].adding(microseconds: 1_000)
                let before = driver.ledger.creditTotals().consumed
                _ = driver.spend(Int64(original % 7 + 1), key: "key-\(original)")
                let after = driver.ledger.creditTotals().consumed
                if stillKnown {
                    if after != before { found.append("key-\(original) was charged again within retention") }
                } else {
                    if after != before + Int64(original % 7 + 1) { found.append("key-\(original) was remembered past retention") }
                    charged += Int64(original % 7 + 1)
                    // Executed anew, so remembered anew from now.
                    spentAt[original] = driver.ledger.clock
                }
                spentAt.append(driver.now)
                usedOwnKey.append(false)
                _ = driver.spend(1, key: "filler-\(index)")
                charged += 1
            } else {
                spentAt.append(driver.ledger.decisionInstant(for: driver.now))
                usedOwnKey.append(true)
                _ = try driver.spend(Int64(index % 7 + 1), key: "key-\(index)").decision.required("key-\(index) spent")
                charged += Int64(index % 7 + 1)
            }
            driver.advance(microseconds: Int64.random(in: 0...2, using: &rng))
        }
        let consumed = driver.ledger.creditTotals().consumed
        if consumed != charged { found.append("consumed \(consumed), charged \(charged)") }
        let kept = driver.ledger.idempotencyKeyCount
        if kept >= 3_000 { found.append("\(kept) keys kept") }
        return found
        }
        #expect(found.isEmpty, "\(found.prefix(5))")
    }

    @Test func anIndexSizedUpFrontAnswersExactlyAsAGrowingOne() async {
        let (differing, equal, kept, forgottenEarly) = await OffPool.cpu { () -> (Int, Bool, Int, Int) in
        var differing = 0
        // The server sizes the index for the table's limit at start; the answers, the state
        // and the keys forgotten must be those of an index that grows as keys arrive.
        var limits = LedgerLimits()
        limits.idempotencyKeysMax = 5_000
        var growing = makeDriver(limits: limits)
        var sized = makeDriver(limits: limits)
        sized.ledger.reserveIdempotencyIndex()
        growing.grant(1_000_000)
        sized.grant(1_000_000)
        var rng = SeededGenerator(seed: 7)
        for index in 0..<12_000 {
            // New keys past the limit (the oldest are forgotten early), and retries of recent ones.
            let key = Int.random(in: 0..<5, using: &rng) == 0 ? "key-\(max(0, index - Int.random(in: 1...3_000, using: &rng)))" : "key-\(index)"
            let amount = Int64(key.utf8.last! % 3) + 1
            if growing.spend(amount, key: key) != sized.spend(amount, key: key) { differing += 1 }
            growing.advance(microseconds: 1)
            sized.advance(microseconds: 1)
        }
        return (differing, growing.ledger == sized.ledger, sized.ledger.idempotencyKeyCount, Int(sized.ledger.idempotencyKeysForgottenEarly))
        }
        #expect(differing == 0, "\(differing) answers differ")
        #expect(equal)
        #expect(kept == 5_000)
        #expect(forgottenEarly > 0)
    }
}
