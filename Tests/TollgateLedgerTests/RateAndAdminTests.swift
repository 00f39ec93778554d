import Testing
import TollgateLedger
import TollgateLedgerTestSupport

@Suite struct RateAndAdminTests {
    @Test func aRateChangeTakesEffectAtItsInstantWithoutTouchingOpenHolds() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        let change = driver.now.adding(microseconds: Fixtures.hour)
        driver.setUp(.setRate(product: "p", creditsPerUnit: 2, effectiveAt: change))
        let before = try #require(driver.reserve(10, ttl: 2 * Fixtures.hour).decision)
        #expect(before.cost == 10)
        driver.now = change.adding(microseconds: -1)
        #expect(driver.spend(1).decision?.cost == 1)
        driver.now = change
        #expect(driver.spend(1).decision?.cost == 2)
        // The hold made at the old rate commits at the old rate.
        let holdID = try #require(before.hold)
        let committed = try #require(driver.commit(holdID, .quantity(10)).committed)
        #expect(committed.committed == 10 && committed.returned == 0)
        #expect(driver.violations.isEmpty)
    }

    @Test func accountOverridesWinAndCanBeWithdrawn() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(.setAccountRate(account: "acct", product: "q", creditsPerUnit: 1, effectiveAt: driver.now))
        #expect(driver.spend(1, product: "q").decision?.cost == 1)
        driver.setUp(.createAccount(CreateAccount(account: "other")))
        driver.setUp(.addMember(account: "other", member: "o1"))
        driver.grant(100, account: "other")
        #expect(driver.spend(1, member: "o1", account: "other", product: "q").decision?.cost == 3)
        driver.advance(microseconds: second)
        driver.setUp(.setAccountRate(account: "acct", product: "q", creditsPerUnit: nil, effectiveAt: driver.now))
        #expect(driver.spend(1, product: "q").decision?.cost == 3)
        #expect(driver.run(.setAccountRate(account: "acct", product: "nope", creditsPerUnit: 1, effectiveAt: driver.now)).errorCode == .unknownProduct)
    }

    /// Versions a later one has superseded are dropped, so a rate can change any number of
    /// times; only changes still to take effect count toward the limit.
    @Test func aRateCanChangeMoreTimesThanTheVersionLimit() throws {
        var limits = LedgerLimits()
        limits.rateVersionsPerProductMax = 5
        var driver = makeDriver(limits: limits)
        driver.grant(1_000_000)
        for step in 1...20 {
            driver.advance(microseconds: second)
            driver.setUp(.setRate(product: "p", creditsPerUnit: Int64(step), effectiveAt: driver.now))
            driver.setUp(.setAccountRate(account: "acct", product: "q", creditsPerUnit: Int64(step), effectiveAt: driver.now))
        }
        #expect(driver.spend(1).decision?.cost == 20)
        #expect(driver.spend(1, product: "q").decision?.cost == 20)
        // Five changes waiting for later instants fill the limit; the sixth is refused.
        for step in 1...5 {
            driver.setUp(.setRate(product: "p", creditsPerUnit: 100, effectiveAt: driver.now.adding(microseconds: Int64(step) * second)))
        }
        #expect(driver.run(.setRate(product: "p", creditsPerUnit: 100, effectiveAt: driver.now.adding(microseconds: 9 * second))).errorCode == .limitReached)
        #expect(driver.spend(1).decision?.cost == 20)
        #expect(driver.violations.isEmpty)
        #expect(Bool(LedgerDriver.replay(driver.journal, limits: limits) == driver.ledger))
    }

    @Test func unknownThingsAreNamed() throws {
        var driver = makeDriver()
        driver.grant(100)
        let product = try #require(driver.spend(1, product: "ai.nothing").refusal)
        #expect(product.error == LedgerError(.unknownProduct, level: .request, subject: "ai.nothing"))
        #expect(product.headroom?.funds == 100, "a refusal still reports headroom when the chain is known")
        #expect(driver.spend(1, member: "ghost").refusal?.error == LedgerError(.unknownMember, level: .member, subject: "ghost"))
        #expect(driver.spend(1, account: "ghost").refusal?.error == LedgerError(.unknownAccount, level: .account, subject: "ghost"))
        #expect(driver.run(.setGroupCap(account: "acct", group: "ghost", limit: 1)).errorCode == .unknownGroup)
        // A rate not yet in effect is no rate at all.
        driver.setUp(.setRate(product: "later", creditsPerUnit: 1, effectiveAt: driver.now.adding(microseconds: second)))
        #expect(driver.spend(1, product: "later").errorCode == .unknownProduct)
    }

    @Test func removingAMemberVoidsItsGrantsAndIsRefusedWhileItHolds() throws {
        var driver = makeDriver()
        let own = driver.grant(50, scope: .member("m1"))
        let pending = driver.grant(20, scope: .member("m1"), effectiveIn: Fixtures.hour)
        let hold = try #require(driver.reserve(5).decision?.hold)
        #expect(driver.run(.removeMember(account: "acct", member: "m1")).errorCode == .inUse)
        _ = driver.commit(hold)
        #expect(driver.run(.removeMember(account: "acct", member: "m1")) == .done)
        #expect(driver.grantView(own) == nil && driver.grantView(pending) == nil)
        #expect(driver.spend(1).errorCode == .unknownMember)
        // The slot is reused by a new member, who does not inherit anything.
        driver.setUp(.addMember(account: "acct", member: "m4"))
        driver.advance(microseconds: Fixtures.hour)
        #expect(driver.spend(1, member: "m4").errorCode == .insufficientFunds)
        #expect(driver.violations.isEmpty)
    }

    @Test func changingTheParentIsRefusedWhileHoldsAreOpen() throws {
        var driver = makeDriver()
        driver.setUp(.createAccount(CreateAccount(account: "parent")))
        driver.grant(100, account: "parent")
        #expect(driver.reserve(5).errorCode == .insufficientFunds)
        driver.setUp(.setParent(account: "acct", parent: "parent"))
        let hold = try #require(driver.reserve(5).decision?.hold)
        #expect(driver.run(.setParent(account: "acct", parent: nil)).errorCode == .inUse)
        _ = driver.release(hold)
        driver.setUp(.setParent(account: "acct", parent: nil))
        #expect(driver.reserve(5).errorCode == .insufficientFunds)
        #expect(driver.violations.isEmpty)
    }

    @Test func createIsNotRepeatable() {
        var driver = makeDriver()
        #expect(driver.run(.createAccount(CreateAccount(account: "acct"))).errorCode == .alreadyExists)
        #expect(driver.run(.addMember(account: "acct", member: "m1")).errorCode == .alreadyExists)
        driver.setUp(.createGroup(account: "acct", group: "g"))
        #expect(driver.run(.createGroup(account: "acct", group: "g")).errorCode == .alreadyExists)
    }

    @Test func grantArgumentsAreValidated() {
        var driver = makeDriver()
        let now = driver.now
        #expect(driver.run(.addGrant(AddGrant(account: "acct", amount: 0, effectiveAt: now))).errorCode == .amountOutOfRange)
        #expect(driver.run(.addGrant(AddGrant(account: "acct", amount: 10, effectiveAt: now, expiresAt: now))).errorCode == .invalidArgument)
        #expect(driver.run(.addGrant(AddGrant(account: "acct", scope: .member("ghost"), amount: 10, effectiveAt: now))).errorCode == .unknownMember)
        #expect(driver.run(.addGrant(AddGrant(account: "ghost", amount: 10, effectiveAt: now))).errorCode == .unknownAccount)
    }
}
