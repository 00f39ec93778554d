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
