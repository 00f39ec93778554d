import Testing
import TollgateLedger
import TollgateLedgerTestSupport

@Suite struct OverageTests {
    @Test func denyIsAHardGateAtZero() throws {
        var driver = makeDriver()
        driver.grant(10)
        _ = try #require(driver.spend(10).decision)
        let refusal = try #require(driver.spend(1).refusal)
        #expect(refusal.error == LedgerError(.insufficientFunds, level: .account, subject: "acct"))
        #expect(refusal.headroom?.funds == 0)
    }

    @Test func denyStillAllowsACommitAboveTheHoldWhenGrantsCoverIt() throws {
        var driver = makeDriver()
        driver.grant(10)
        let hold = try #require(driver.reserve(4).decision?.hold)
        let result = try #require(driver.commit(hold, .credits(9)).committed)
        #expect(result.committed == 9)
        #expect(driver.balance(account: "acct").funds.pool == 1)
        let second = try #require(driver.reserve(1).decision?.hold)
        #expect(driver.commit(second, .credits(3)).errorCode == .insufficientFunds)
        #expect(driver.violations.isEmpty)
    }

    @Test func overdraftLetsTheBalanceGoDownToMinusTheLimit() throws {
        var driver = makeDriver(overage: .overdraft(limit: 50))
        driver.grant(10)
        _ = try #require(driver.spend(40).decision)
        let hold = try #require(driver.reserve(15).decision?.hold)
        #expect(driver.spend(6).errorCode == .insufficientFunds)
        var funds = driver.balance(account: "acct").funds
        #expect(funds.overdrawn == 30 && funds.overdraftHeld == 15 && funds.balance == -45)
        _ = try #require(driver.commit(hold, .credits(20)).committed)
        funds = driver.balance(account: "acct").funds
        #expect(funds.overdrawn == 50 && funds.overdraftHeld == 0 && funds.balance == -50)
        #expect(driver.spend(1).errorCode == .insufficientFunds)
        #expect(driver.violations.isEmpty)
    }

    @Test func releasingAnOverdraftHoldGivesTheOverdraftBack() throws {
        var driver = makeDriver(overage: .overdraft(limit: 20))
        let hold = try #require(driver.reserve(20).decision?.hold)
        #expect(driver.spend(1).errorCode == .insufficientFunds)
        _ = try #require(driver.release(hold).released)
        #expect(driver.spend(20).decision != nil)
    }

    @Test func finishLetsACommitExceedItsHoldByThePercentage() throws {
        var driver = makeDriver(overage: .finish(percent: 50))
        driver.grant(10)
        let hold = try #require(driver.reserve(10).decision?.hold)
        // Reserves stay a hard gate at zero.
        #expect(driver.reserve(1).errorCode == .insufficientFunds)
        #expect(driver.commit(hold, .credits(16), key: "too-much").errorCode == .insufficientFunds)
        let result = try #require(driver.commit(hold, .credits(15)).committed)
        #expect(result.committed == 15)
        let funds = driver.balance(account: "acct").funds
        #expect(funds.overdrawn == 5 && funds.balance == -5)
        #expect(driver.violations.isEmpty)
    }

    @Test func finishCountsEveryPartialCommitOfTheHold() throws {
        var driver = makeDriver(overage: .finish(percent: 20))
        driver.grant(10)
        let hold = try #require(driver.reserve(10).decision?.hold)
        _ = try #require(driver.commit(hold, .credits(7), final: false).committed)
        _ = try #require(driver.commit(hold, .credits(4), final: false).committed)
        // 11 committed of a 10-credit hold; 1 more keeps it within 20%, 2 more would not.
        #expect(driver.commit(hold, .credits(2), key: "over").errorCode == .insufficientFunds)
        #expect(driver.commit(hold, .credits(1)).committed?.committed == 1)
        #expect(driver.balance(account: "acct").funds.overdrawn == 2)
    }

    /// PROTOCOL.md §5.3's example: a 50-credit hold with 5 credits left under finish(20).
    /// Funds cover part of the excess: they are drawn and the rest is overdrawn, provided the
    /// whole excess (not only the uncovered part) is within 20 % of the hold.
    @Test func finishDrawsWhatFundsCoverAndOverdrawsTheRestOfAnExcessWithinThePercentage() throws {
        var driver = makeDriver(overage: .finish(percent: 20))
        driver.grant(55)
        let hold = try #require(driver.reserve(50).decision?.hold)
        #expect(driver.balance(account: "acct").funds.pool == 5)
        #expect(driver.commit(hold, .credits(62), key: "beyond").errorCode == .insufficientFunds)
        #expect(driver.commit(hold, .credits(61), key: "beyond-by-one").errorCode == .insufficientFunds)
        let result = try #require(driver.commit(hold, .credits(58)).committed)
        #expect(result.committed == 58)
        let funds = driver.balance(account: "acct").funds
        #expect(funds.pool == 0 && funds.overdrawn == 3)
        #expect(driver.violations.isEmpty)
    }

    @Test func capsStayHardUnderEveryPolicy() throws {
        var driver = makeDriver(overage: .finish(percent: 100))
        driver.grant(100)
        driver.setUp(.setMemberCap(account: "acct", member: "m1", limit: 10))
        let hold = try #require(driver.reserve(10).decision?.hold)
        #expect(driver.commit(hold, .credits(11)).errorCode == .memberCap)
        #expect(driver.violations.isEmpty)
    }

    @Test func policyArgumentsAreValidated() {
        var driver = makeDriver()
        #expect(driver.run(.setOverage(account: "acct", policy: .overdraft(limit: -1))).errorCode == .amountOutOfRange)
        #expect(driver.run(.setOverage(account: "acct", policy: .finish(percent: 5_000))).errorCode == .invalidArgument)
        #expect(driver.run(.setOverage(account: "nobody", policy: .deny)).errorCode == .unknownAccount)
    }
}
