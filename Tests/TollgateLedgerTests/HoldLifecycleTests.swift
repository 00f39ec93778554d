import Testing
import TollgateLedger
import TollgateLedgerTestSupport

@Suite struct HoldLifecycleTests {
    @Test func partialCommitsKeepTheRestHeld() throws {
        var driver = makeDriver()
        let grant = driver.grant(100)
        let hold = try #require(driver.reserve(30).decision?.hold)
        let first = try #require(driver.commit(hold, .credits(10), final: false).committed)
        #expect(first.stillHeld == 20 && first.returned == 0)
        let second = try #require(driver.commit(hold, .credits(5), final: false).committed)
        #expect(second.stillHeld == 15)
        #expect(driver.grantView(grant)?.held == 15 && driver.grantView(grant)?.consumed == 15)
        #expect(driver.ledger.hold(hold)?.committed == 15)
        let last = try #require(driver.commit(hold, .held).committed)
        #expect(last.committed == 15 && last.returned == 0)
        #expect(driver.grantView(grant)?.consumed == 30 && driver.grantView(grant)?.held == 0)
        #expect(driver.ledger.hold(hold) == nil)
        #expect(driver.violations.isEmpty)
    }

    @Test func aFinalCommitBelowTheHoldReturnsTheRest() throws {
        var driver = makeDriver()
        let grant = driver.grant(100)
        let hold = try #require(driver.reserve(30).decision?.hold)
        let result = try #require(driver.commit(hold, .credits(12)).committed)
        #expect(result.returned == 18)
        #expect(driver.grantView(grant)?.available == 88)
        #expect(driver.commit(hold, .credits(1)).errorCode == .holdCommitted)
        #expect(driver.violations.isEmpty)
    }

    @Test func commitByQuantityUsesTheRateTheHoldWasPricedAt() throws {
        var driver = makeDriver()
        driver.grant(100)
        let hold = try #require(driver.reserve(5, product: "q").decision)
        #expect(hold.cost == 15 && hold.creditsPerUnit == 3)
        driver.setUp(.setRate(product: "q", creditsPerUnit: 7, effectiveAt: driver.now))
        let holdID = try #require(hold.hold)
        let result = try #require(driver.commit(holdID, .quantity(4)).committed)
        #expect(result.committed == 12 && result.returned == 3)
    }

    @Test func releaseReturnsEverythingOnce() throws {
        var driver = makeDriver()
        let grant = driver.grant(100)
        let hold = try #require(driver.reserve(30).decision?.hold)
        let released = try #require(driver.release(hold).released)
        #expect(released.released == 30 && released.headroom.funds == 100)
        #expect(driver.grantView(grant)?.available == 100)
        #expect(driver.release(hold).errorCode == .holdReleased)
        #expect(driver.commit(hold).errorCode == .holdReleased)
        #expect(driver.violations.isEmpty)
    }

    @Test func aHoldExpiresAtExactlyItsDeadline() throws {
        var driver = makeDriver()
        driver.grant(100)
        let reserved = try #require(driver.reserve(30, ttl: 10 * second).decision)
        let hold = try #require(reserved.hold)
        #expect(reserved.deadline == driver.now.adding(microseconds: 10 * second))
        // One microsecond before the deadline the hold can still be committed.
        var before = driver
        before.advance(microseconds: 10 * second - 1)
        #expect(before.commit(hold).committed?.committed == 30)
        // At the deadline it has expired and its credits are back.
        driver.advance(microseconds: 10 * second)
        #expect(driver.commit(hold).errorCode == .holdExpired)
        #expect(driver.balance(account: "acct").funds.pool == 100)
        #expect(driver.violations.isEmpty)
    }

    @Test func sweepReleasesExpiredHoldsWithoutAnyOtherRequest() throws {
        var driver = makeDriver()
        driver.grant(100)
        for _ in 0..<5 { _ = try #require(driver.reserve(10, ttl: second).decision) }
        #expect(driver.ledger.openHoldCount == 5)
        #expect(driver.ledger.nextDue == driver.now.adding(microseconds: second))
        driver.ledger.advance(to: driver.now.adding(microseconds: second))
        #expect(driver.ledger.openHoldCount == 0)
        #expect(driver.ledger.nextDue == nil)
        #expect(driver.violations.isEmpty)
    }

    @Test func extendRenewsTheDeadline() throws {
        var driver = makeDriver()
        driver.grant(100)
        let hold = try #require(driver.reserve(30, ttl: 10 * second).decision?.hold)
        driver.advance(microseconds: 8 * second)
        let extended = driver.run(.extend(Extend(HoldReference(account: "acct", hold: hold), ttlMicroseconds: 10 * second)))
        guard case .extended(let result) = extended else { Issue.record("extend refused: \(extended)"); return }
        #expect(result.hold == hold && result.deadline == driver.now.adding(microseconds: 10 * second))
        #expect(result.headroom.funds == 70)
        driver.advance(microseconds: 9 * second)
        #expect(driver.ledger.hold(hold) != nil, "past the first deadline, the extended hold is still open")
        #expect(driver.commit(hold, .credits(5), final: false).committed != nil)
        driver.advance(microseconds: second)
        #expect(driver.commit(hold).errorCode == .holdExpired)
        #expect(driver.violations.isEmpty)
    }

    @Test func holdsBelongToTheirAccount() throws {
        var driver = makeDriver()
        driver.grant(100)
        driver.setUp(.createAccount(CreateAccount(account: "other")))
        let hold = try #require(driver.reserve(30).decision?.hold)
        #expect(driver.commit(hold, account: "other").errorCode == .unknownHold)
        #expect(driver.release(hold, account: "other").errorCode == .unknownHold)
        #expect(driver.commit(12_345).errorCode == .unknownHold)
        #expect(driver.commit(hold, account: "nobody").errorCode == .unknownAccount)
    }

    @Test func commitAmountsAreValidated() throws {
        var driver = makeDriver()
        driver.grant(100)
        let hold = try #require(driver.reserve(30).decision?.hold)
        #expect(driver.commit(hold, .credits(-1)).errorCode == .amountOutOfRange)
        #expect(driver.commit(hold, .quantity(-1)).errorCode == .amountOutOfRange)
        #expect(driver.commit(hold, .quantity(Int64.max)).errorCode == .amountOutOfRange)
        #expect(driver.ledger.hold(hold)?.held == 30)
    }

    @Test func checkHoldsNothingAndAgreesWithReserve() throws {
        var driver = makeDriver()
        driver.grant(10)
        let request = DecisionRequest(account: "acct", member: "m1", product: "p", quantity: 10)
        let checked = try #require(driver.check(request).decision)
        #expect(checked.hold == nil && checked.cost == 10 && checked.headroom.funds == 0)
        #expect(driver.balance(account: "acct").funds.pool == 10)
        let reserved = try #require(driver.reserve(10).decision)
        #expect(reserved.headroom == checked.headroom)
        #expect(driver.check(request).errorCode == .insufficientFunds)
    }
}

@Suite struct EventQueueTests {
    @Test func resolvedHoldsDoNotPileUpInTheEventQueue() async throws {
        // 30,000 holds: on a thread of its own rather than the test pool's.
        let (scheduled, expired, violations) = try await OffPool.cpu { () throws -> (Int, LedgerError.Code?, [String]) in
            var driver = makeDriver()
            driver.grant(1_000_000)
            // Week-long holds committed at once leave their deadlines behind as stale events.
            for _ in 0..<20_000 {
                let hold = try (driver.reserve(1, ttl: 7 * Fixtures.day).decision?.hold).required("a hold")
                _ = try driver.commit(hold).committed.required("a commit")
            }
            let scheduled = driver.ledger.scheduledEventCount
            // Open holds' deadlines survive compaction and still expire them.
            let open = try (driver.reserve(1, ttl: second).decision?.hold).required("a hold")
            for _ in 0..<10_000 {
                let hold = try (driver.reserve(1, ttl: 7 * Fixtures.day).decision?.hold).required("a hold")
                _ = driver.release(hold)
            }
            driver.advance(microseconds: second)
            return (scheduled, driver.commit(open).errorCode, driver.violations)
        }
        #expect(scheduled < 8_192)
        #expect(expired == .holdExpired)
        #expect(violations.isEmpty)
    }
}
