import Testing
import TollgateLedger
import TollgateLedgerTestSupport

@Suite struct CapTests {
    @Test func memberCapCountsConsumedAndHeld() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(.setMemberCap(account: "acct", member: "m1", limit: 10))
        _ = try #require(driver.reserve(6).decision)
        _ = try #require(driver.spend(4).decision)
        let refused = try #require(driver.reserve(1).refusal)
        #expect(refused.error == LedgerError(.memberCap, level: .member, subject: "m1"))
        #expect(refused.headroom?.member == 0)
        // Another member is not limited by m1's cap.
        #expect(driver.spend(50, member: "m2").decision != nil)
        #expect(driver.violations.isEmpty)
    }

    @Test func groupCapNamesTheGroupAndCountsEveryMember() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(.createGroup(account: "acct", group: "research"))
        driver.setUp(.createGroup(account: "acct", group: "sales"))
        driver.setUp(.addToGroup(account: "acct", group: "research", member: "m1"))
        driver.setUp(.addToGroup(account: "acct", group: "research", member: "m2"))
        driver.setUp(.addToGroup(account: "acct", group: "sales", member: "m2"))
        driver.setUp(.setGroupCap(account: "acct", group: "research", limit: 20))
        driver.setUp(.setGroupCap(account: "acct", group: "sales", limit: 100))
        _ = try #require(driver.spend(12, member: "m1").decision)
        let decision = try #require(driver.reserve(5, member: "m2").decision)
        #expect(decision.headroom.group == 3 && decision.headroom.groupID == "research")
        let refusal = try #require(driver.spend(4, member: "m2").refusal)
        #expect(refusal.error == LedgerError(.groupCap, level: .group, subject: "research"))
        // m3 is in no group.
        #expect(driver.spend(40, member: "m3").decision != nil)
        #expect(driver.violations.isEmpty)
    }

    @Test func joiningAGroupImportsNothingAndLeavingGivesNothingBack() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(.createGroup(account: "acct", group: "g"))
        driver.setUp(.setGroupCap(account: "acct", group: "g", limit: 10))
        _ = try #require(driver.spend(8, member: "m1").decision)
        _ = try #require(driver.reserve(1, member: "m1").decision)
        driver.setUp(.addToGroup(account: "acct", group: "g", member: "m1"))
        // What m1 consumed and holds from before it joined is not the group's.
        #expect(driver.ledger.groupUsage(account: "acct", group: "g", at: driver.now)?.consumed == 0)
        _ = try #require(driver.spend(7, member: "m1").decision)
        driver.setUp(.removeFromGroup(account: "acct", group: "g", member: "m1"))
        // The 7 spent in the group stay spent in it: m2 gets the 3 that are left, not 10.
        driver.setUp(.addToGroup(account: "acct", group: "g", member: "m2"))
        #expect(driver.spend(4, member: "m2").errorCode == .groupCap)
        #expect(driver.spend(3, member: "m2").decision != nil)
        #expect(driver.violations.isEmpty)
        #expect(driver.run(.addToGroup(account: "acct", group: "g", member: "m2")).errorCode == .alreadyExists)
        #expect(driver.run(.removeFromGroup(account: "acct", group: "g", member: "m1")).errorCode == .notInGroup)
        #expect(driver.run(.deleteGroup(account: "acct", group: "g")) == .done)
        #expect(driver.spend(5, member: "m2").decision != nil)
        #expect(driver.violations.isEmpty)
    }

    @Test func accountCapAppliesToAllMembersAndAccountLevelRequests() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(.setAccountCap(account: "acct", limit: 30))
        _ = try #require(driver.spend(10, member: "m1").decision)
        _ = try #require(driver.spend(10, member: "m2").decision)
        _ = try #require(driver.spend(5, member: nil).decision)
        let refusal = try #require(driver.spend(6, member: "m3").refusal)
        #expect(refusal.error == LedgerError(.accountCap, level: .account, subject: "acct"))
        #expect(refusal.headroom?.account == 5)
    }

    @Test func capsResetAtThePeriodBoundary() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(.setMemberCap(account: "acct", member: "m1", limit: 10))
        _ = try #require(driver.spend(10).decision)
        #expect(driver.spend(1).errorCode == .memberCap)
        // The account's period is monthly from 2026-01-01: the next one starts on 1 February.
        driver.now = CivilTime(year: 2026, month: 2, day: 1).instant.adding(microseconds: -1)
        #expect(driver.spend(1).errorCode == .memberCap)
        driver.now = CivilTime(year: 2026, month: 2, day: 1).instant
        #expect(driver.spend(10).decision != nil)
        #expect(driver.spend(1).errorCode == .memberCap)
    }

    @Test func heldCreditsKeepCountingAcrossTheBoundaryUntilResolved() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(.setMemberCap(account: "acct", member: "m1", limit: 10))
        driver.now = CivilTime(year: 2026, month: 1, day: 31, hour: 23).instant
        let hold = try #require(driver.reserve(6, ttl: 2 * Fixtures.hour).decision?.hold)
        driver.now = CivilTime(year: 2026, month: 2, day: 1).instant
        #expect(driver.spend(5).errorCode == .memberCap)
        _ = try #require(driver.commit(hold, .credits(6)).committed)
        // Committed in February, so it counts in February.
        #expect(driver.spend(5).errorCode == .memberCap)
        #expect(driver.spend(4).decision != nil)
    }

    @Test func childDrawsItsOwnGrantsThenTheParentsPoolWithinItsCap() throws {
        var driver = makeDriver()
        driver.setUp(.createAccount(CreateAccount(account: "parent")))
        driver.setUp(.createAccount(CreateAccount(account: "child", parent: "parent")))
        driver.setUp(.addMember(account: "child", member: "c1"))
        let parentPool = driver.grant(100, account: "parent")
        let own = driver.grant(10, account: "child")
        driver.setUp(.setAccountCap(account: "child", limit: 50))
        _ = try #require(driver.spend(30, member: "c1", account: "child").decision)
        #expect(driver.grantView(own, account: "child") == nil, "own grant first")
        #expect(driver.grantView(parentPool, account: "parent")?.consumed == 20)
        let refusal = try #require(driver.spend(21, member: "c1", account: "child").refusal)
        #expect(refusal.error == LedgerError(.accountCap, level: .account, subject: "child"))
        #expect(refusal.headroom?.account == 20)
        #expect(driver.spend(20, member: "c1", account: "child").decision != nil)
        #expect(driver.violations.isEmpty)
    }

    @Test func parentCapBoundsTheWholeFamily() throws {
        var driver = makeDriver()
        driver.setUp(.createAccount(CreateAccount(account: "parent")))
        driver.setUp(.createAccount(CreateAccount(account: "child", parent: "parent")))
        driver.setUp(.addMember(account: "parent", member: "p1"))
        driver.setUp(.addMember(account: "child", member: "c1"))
        driver.grant(1_000, account: "parent")
        driver.grant(1_000, account: "child")
        driver.setUp(.setAccountCap(account: "parent", limit: 40))
        _ = try #require(driver.spend(25, member: "p1", account: "parent").decision)
        // The child's own grants are plentiful, but the parent's cap counts the child too.
        let refusal = try #require(driver.spend(16, member: "c1", account: "child").refusal)
        #expect(refusal.error == LedgerError(.parentCap, level: .parent, subject: "parent"))
        #expect(driver.spend(15, member: "c1", account: "child").decision != nil)
        #expect(driver.spend(1, member: "p1", account: "parent").errorCode == .accountCap)
        #expect(driver.violations.isEmpty)
    }

    @Test func hierarchyIsOneLevelDeep() {
        var driver = makeDriver()
        driver.setUp(.createAccount(CreateAccount(account: "parent")))
        driver.setUp(.createAccount(CreateAccount(account: "child", parent: "parent")))
        #expect(driver.run(.createAccount(CreateAccount(account: "grandchild", parent: "child"))).refusal?.error.level == .parent)
        #expect(driver.run(.setParent(account: "parent", parent: "acct")).errorCode == .invalidArgument)
        #expect(driver.run(.createAccount(CreateAccount(account: "orphan", parent: "nobody"))).errorCode == .unknownAccount)
    }

    @Test func refusalsWalkTheChainInOrder() throws {
        var driver = makeDriver()
        driver.grant(5)
        driver.setUp(.setMemberCap(account: "acct", member: "m1", limit: 3))
        driver.setUp(.setAccountCap(account: "acct", limit: 4))
        // Every level would refuse 10; the member's cap is named first.
        #expect(driver.spend(10).refusal?.error.level == .member)
        driver.setUp(.setMemberCap(account: "acct", member: "m1", limit: nil))
        #expect(driver.spend(10).refusal?.error.level == .account)
        driver.setUp(.setAccountCap(account: "acct", limit: nil))
        #expect(driver.spend(10).errorCode == .insufficientFunds)
    }
}
