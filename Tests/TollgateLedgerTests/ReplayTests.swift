import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// Commands are values: a recorded sequence applied to an empty ledger twice gives two equal
/// states, which is what journal replay will rely on.
@Suite struct ReplayTests {
    func recordedRun(seed: UInt64, steps: Int = 400) -> RandomRun {
        var run = RandomRun(seed: seed)
        for _ in 0..<steps { run.step() }
        return run
    }

    @Test func aRecordedSequenceAppliedTwiceFromEmptyGivesEqualStates() {
        let run = recordedRun(seed: 7)
        #expect(run.driver.journal.count > 200)
        let first = LedgerDriver.replay(run.driver.journal)
        let second = LedgerDriver.replay(run.driver.journal)
        #expect(first == second)
        #expect(first.invariantViolations().isEmpty)
    }

    @Test func replayMatchesTheLiveLedgerThatAlsoServedReads() {
        var run = recordedRun(seed: 11)
        var replayed = LedgerDriver.replay(run.driver.journal)
        let end = max(replayed.clock, run.driver.ledger.clock)
        replayed.advance(to: end)
        run.driver.ledger.advance(to: end)
        #expect(replayed == run.driver.ledger)
    }

    @Test func theComparisonCanTellStatesApart() {
        let run = recordedRun(seed: 7)
        var journal = run.driver.journal
        // Drop one accepted grant: the states must differ.
        let accepted = run.sent.last { if case .grantAdded = $0.answer { true } else { false } }!
        let index = journal.lastIndex { $0.key == accepted.key }!
        journal.remove(at: index)
        let equal = LedgerDriver.replay(journal) == LedgerDriver.replay(run.driver.journal)
        #expect(!equal)
    }

    /// A key forgotten early live (the table was full) runs again when retried; replay runs it
    /// again too, whatever table size it replays with, and every record changes the ledger.
    @Test(arguments: [1, 2, 3, 1_000_000])
    func replayDoesNotDependOnTheIdempotencyLimits(replayKeysMax: Int) throws {
        var live = LedgerLimits()
        live.idempotencyKeysMax = 3
        var driver = LedgerDriver(limits: live)
        Fixtures.seedsExample(&driver)
        for _ in 0..<3 {
            for key in ["a", "b", "c", "d", "e"] {
                driver.run(.spend(Spend(DecisionRequest(account: "acme", member: "ana", product: Fixtures.summary, quantity: 1))), key: key)
                driver.advance(microseconds: Microseconds.perSecond)
            }
        }
        #expect(driver.ledger.idempotencyKeysForgottenEarly > 0)
        var limits = live
        limits.idempotencyKeysMax = replayKeysMax
        var (replayed, unchanged) = LedgerDriver.replayReporting(driver.journal, limits: limits)
        #expect(unchanged.isEmpty, "records that changed nothing on replay: \(unchanged)")
        var original = driver.ledger
        let end = max(replayed.clock, original.clock)
        replayed.advance(to: end)
        original.advance(to: end)
        #expect(try replayed.balance(account: "acme", member: nil, at: end).get() == original.balance(account: "acme", member: nil, at: end).get())
        #expect(replayed.creditTotals() == original.creditTotals())
        #expect(replayed.openHoldCount == original.openHoldCount)
        if replayKeysMax == live.idempotencyKeysMax { #expect(Bool(replayed == original), "same limits: the very same state") }
    }

    /// With a tier to hand keys to (as tollgated has), what is remembered — every key, its
    /// answer and the instant it was decided — is the same whatever the table's size or the
    /// retention configured when replaying: only where each key is kept differs. The retention
    /// applies to the recorded decision instants, so changing it changes what is forgotten from
    /// then on, never what a replay rebuilds.
    @Test(arguments: [(2, 1_000_000), (1_000_000, 2), (5, 7)])
    func whatIsRememberedDoesNotDependOnWhereKeysAreKept(liveKeysMax: Int, replayKeysMax: Int) throws {
        func run(_ keysMax: Int, _ journal: [LedgerDriver.Entry]?) -> (Ledger, [ArchivedKey], [LedgerDriver.Entry]) {
            var limits = LedgerLimits()
            limits.idempotencyKeysMax = keysMax
            var ledger = Ledger(limits: limits, startingAt: Fixtures.start)
            ledger.archivesEvictedKeys = true
            var tier: [ArchivedKey] = []
            final class Older: OlderKeys {
                let keys: [ArchivedKey]
                init(_ keys: [ArchivedKey]) { self.keys = keys }
                func find(low: UInt64, high: UInt64) -> ArchivedKey? { keys.first { $0.low == low && $0.high == high } }
            }
            var recorded: [LedgerDriver.Entry] = []
            if let journal {
                for entry in journal {
                    _ = ledger.replay(entry.command, key: entry.key, at: entry.at)
                    tier += ledger.takeEvictedKeys()
                }
            } else {
                var driver = LedgerDriver(limits: limits)
                driver.ledger.archivesEvictedKeys = true
                Fixtures.seedsExample(&driver)
                ledger = driver.ledger
                tier += ledger.takeEvictedKeys()
                recorded = driver.journal
                var now = driver.now
                for step in 0..<30 {
                    let key = ["a", "b", "c", "d", "e", "f", "g"][step % 7] + "\(step / 14)"
                    let command = Command.spend(Spend(DecisionRequest(account: "acme", member: "ana", product: Fixtures.summary, quantity: 1)))
                    let applied = ledger.applyRecording(command, key: key, at: now, older: Older(tier))
                    if applied.changedState { recorded.append(LedgerDriver.Entry(command: command, key: key, at: applied.instant)) }
                    tier += ledger.takeEvictedKeys()
                    now = now.adding(microseconds: Microseconds.perSecond)
                }
            }
            return (ledger, tier, recorded)
        }
        var (live, liveTier, journal) = run(liveKeysMax, nil)
        var (replayed, replayedTier, _) = run(replayKeysMax, journal)
        #expect(Set(live.rememberedKeys + liveTier) == Set(replayed.rememberedKeys + replayedTier))
        #expect(try replayed.balance(account: "acme", member: nil, at: live.clock).get() == live.balance(account: "acme", member: nil, at: live.clock).get())
        #expect(live.idempotencyKeysForgottenEarly == 0 && replayed.idempotencyKeysForgottenEarly == 0)
    }

    @Test func seedsExampleReplays() {
        var driver = LedgerDriver()
        Fixtures.seedsExample(&driver)
        for step in 0..<40 {
            driver.run(.spend(Spend(DecisionRequest(account: "acme", member: "ana", product: Fixtures.summary, quantity: Int64(step % 3 + 1)))))
            driver.advance(microseconds: Microseconds.perMinute)
        }
        #expect(LedgerDriver.replay(driver.journal) == driver.ledger)
    }
}
