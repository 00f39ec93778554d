import Testing
import TollgateLedger
import TollgateLedgerTestSupport

@Suite struct DrawOrderTests {
    @Test func lowerPriorityIsDrawnFirst() {
        var driver = makeDriver()
        let late = driver.grant(10, priority: 5)
        let early = driver.grant(10, priority: 1)
        _ = driver.spend(4)
        #expect(driver.grantView(early)?.consumed == 4)
        #expect(driver.grantView(late)?.consumed == 0)
        #expect(driver.violations.isEmpty)
    }

    @Test func atEqualPrioritySoonerExpiryIsDrawnFirst() {
        var driver = makeDriver()
        let never = driver.grant(10, priority: 1)
        let later = driver.grant(10, priority: 1, expiresIn: 10 * Fixtures.day)
        let sooner = driver.grant(10, priority: 1, expiresIn: 2 * Fixtures.day)
        _ = driver.spend(15)
        #expect(driver.grantView(sooner) == nil, "the soonest grant is spent and retired")
        #expect(driver.grantView(later)?.consumed == 5)
        #expect(driver.grantView(never)?.consumed == 0)
        #expect(driver.violations.isEmpty)
    }

    @Test func atEqualPriorityAndExpiryCreationOrderDecides() {
        var driver = makeDriver()
        let first = driver.grant(10, priority: 1, expiresIn: Fixtures.day)
        let second = driver.grant(10, priority: 1, expiresIn: Fixtures.day)
        _ = driver.spend(3)
        #expect(driver.grantView(first)?.consumed == 3)
        #expect(driver.grantView(second)?.consumed == 0)
    }

    @Test func aReserveSpanningGrantsDrawsThemInOrderAndReturnsTheLastFirst() throws {
        var driver = makeDriver()
        let included = driver.grant(8, priority: 0)
        let topUp = driver.grant(100, priority: 100)
        let hold = try #require(driver.reserve(12).decision?.hold)
        #expect(driver.grantView(included)?.held == 8)
        #expect(driver.grantView(topUp)?.held == 4)
        // Commit 10 of 12: the included grant is consumed first, 2 go back to the top-up.
        let result = try #require(driver.commit(hold, .credits(10)).committed)
        #expect(result.returned == 2)
        #expect(driver.grantView(included) == nil, "included grant fully consumed and retired")
        #expect(driver.grantView(topUp)?.consumed == 2)
        #expect(driver.grantView(topUp)?.available == 98)
        #expect(driver.violations.isEmpty)
    }

    @Test func memberScopedGrantsServeOnlyTheirMemberAndInterleaveWithThePool() {
        var driver = makeDriver()
        let pool = driver.grant(10, priority: 5)
        let own = driver.grant(10, scope: .member("m1"), priority: 1)
        // m2 cannot see m1's grant.
        #expect(driver.check(DecisionRequest(account: "acct", member: "m2", product: "p", quantity: 11)).errorCode == .insufficientFunds)
        #expect(driver.check(DecisionRequest(account: "acct", member: "m1", product: "p", quantity: 20)).decision != nil)
        // m1 draws its own (priority 1) before the pool (priority 5).
        _ = driver.spend(12, member: "m1")
        #expect(driver.grantView(own) == nil)
        #expect(driver.grantView(pool)?.consumed == 2)
        // An account-level request sees only the pool.
        #expect(driver.check(DecisionRequest(account: "acct", member: nil, product: "p", quantity: 9)).errorCode == .insufficientFunds)
        #expect(driver.violations.isEmpty)
    }

    @Test func aPoolGrantOfHigherPriorityIsDrawnBeforeAMemberGrant() {
        var driver = makeDriver()
        let pool = driver.grant(10, priority: 0)
        let own = driver.grant(10, scope: .member("m1"), priority: 3)
        _ = driver.spend(4, member: "m1")
        #expect(driver.grantView(pool)?.consumed == 4)
        #expect(driver.grantView(own)?.consumed == 0)
    }

    @Test func grantsAreEligibleOnlyInsideTheirWindow() {
        var driver = makeDriver()
        driver.grant(10, effectiveIn: Fixtures.hour, expiresIn: 2 * Fixtures.hour)
        #expect(driver.check(DecisionRequest(account: "acct", member: "m1", product: "p", quantity: 1)).errorCode == .insufficientFunds)
        driver.advance(microseconds: Fixtures.hour)
        #expect(driver.spend(4).decision != nil, "effective at exactly effective-at")
        driver.advance(microseconds: Fixtures.hour - 1)
        #expect(driver.spend(1).decision != nil)
        driver.advance(microseconds: 1)
        #expect(driver.spend(1).errorCode == .insufficientFunds, "not eligible at exactly expires-at")
        #expect(driver.violations.isEmpty)
    }

    @Test func expiryMovesAvailableToExpiredAndHeldCreditsFollowWhenReturned() throws {
        var driver = makeDriver()
        let grant = driver.grant(10, expiresIn: Fixtures.hour)
        let hold = try #require(driver.reserve(4, ttl: 2 * Fixtures.hour).decision?.hold)
        driver.advance(microseconds: Fixtures.hour)
        _ = driver.check(DecisionRequest(account: "acct", member: "m1", product: "p", quantity: 1))
        let view = try #require(driver.grantView(grant))
        #expect(view.expired == 6 && view.held == 4 && view.available == 0)
        // The hold may still be committed (it was made before expiry); what it does not use expires.
        let result = try #require(driver.commit(hold, .credits(1)).committed)
        #expect(result.returned == 3)
        #expect(driver.grantView(grant) == nil, "nothing left on the grant: retired")
        #expect(driver.violations.isEmpty)
    }

    @Test func voidingMovesAvailableToVoidedAndHeldCreditsFollowWhenReleased() throws {
        var driver = makeDriver()
        let grant = driver.grant(10)
        let hold = try #require(driver.reserve(4).decision?.hold)
        #expect(driver.run(.voidGrant(account: "acct", grant: grant)) == .done)
        let view = try #require(driver.grantView(grant))
        #expect(view.voided == 6 && view.held == 4 && view.state == .voided)
        #expect(driver.spend(1).errorCode == .insufficientFunds)
        #expect(driver.run(.voidGrant(account: "acct", grant: grant)).errorCode == .grantNotLive)
        _ = driver.release(hold)
        #expect(driver.grantView(grant) == nil)
        #expect(driver.violations.isEmpty)
        #expect(driver.run(.voidGrant(account: "acct", grant: 999)).errorCode == .unknownGrant)
    }
}
