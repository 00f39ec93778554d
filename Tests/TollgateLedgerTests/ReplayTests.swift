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
