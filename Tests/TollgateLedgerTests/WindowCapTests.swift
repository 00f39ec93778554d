import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// Caps over several windows at once, soft caps, and bounds on open holds (Ledger+Windows.swift).
@Suite struct WindowCapTests {
    let hour = Microseconds.perHour

    func cap(_ target: CapTarget, _ window: CapWindow, _ limit: Credits?, mode: CapMode = .hard) -> Command {
        .setCap(SetCap(account: "acct", target: target, window: window, mode: mode, limit: limit))
    }

    @Test func hourlyDailyAndPeriodCapsHoldTogetherAndTheRefusalNamesTheWindow() throws {
        var driver = makeDriver()
        driver.grant(100_000)
        driver.setUp(cap(.member("m1"), .hour, 10))
        driver.setUp(cap(.member("m1"), .day, 25))
        driver.setUp(.setMemberCap(account: "acct", member: "m1", limit: 40))
        _ = try #require(driver.spend(8).decision)
        let held = try #require(driver.reserve(2, ttl: 3 * hour).decision)
        #expect(held.headroom.member == 0)
        let hourly = try #require(driver.spend(1).refusal)
        #expect(hourly.error == LedgerError(.memberCap, level: .member, subject: "m1 per hour"))
        #expect(hourly.headroom?.member == 0)
        // A new hour: the hourly cap has room again, less the hold, which still counts.
        driver.advance(microseconds: hour)
        #expect(driver.spend(8).decision != nil)
        #expect(driver.spend(1).refusal?.error.subject == "m1 per hour")
        let heldID = try #require(held.hold)
        _ = try #require(driver.commit(heldID).committed)
        driver.advance(microseconds: hour)
        // 8 + 8 + 2 = 18 today: the daily cap (25) leaves 7.
        let daily = try #require(driver.spend(8).refusal)
        #expect(daily.error == LedgerError(.memberCap, level: .member, subject: "m1 per day"))
        #expect(driver.spend(7).decision != nil)
        // The next day the period cap (40) is what is left: 40 - 25 = 15.
        driver.advance(microseconds: 24 * hour)
        _ = try #require(driver.spend(10).decision)
        driver.advance(microseconds: hour)
        let period = try #require(driver.spend(6).refusal)
        #expect(period.error == LedgerError(.memberCap, level: .member, subject: "m1"))
        // Other members are not limited by m1's windows.
        #expect(driver.spend(50, member: "m2").decision != nil)
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func groupAccountAndParentWindowsEachRefuse() throws {
        var driver = makeDriver()
        driver.grant(100_000)
        driver.setUp(.createGroup(account: "acct", group: "g"))
        driver.setUp(.addToGroup(account: "acct", group: "g", member: "m1"))
        driver.setUp(cap(.group("g"), .minute, 5))
        driver.setUp(cap(.account, .hour, 12))
        _ = try #require(driver.spend(5).decision)
        #expect(driver.spend(1).refusal?.error == LedgerError(.groupCap, level: .group, subject: "g per minute"))
        _ = try #require(driver.spend(7, member: "m2").decision)
        #expect(driver.spend(1, member: "m2").refusal?.error == LedgerError(.accountCap, level: .account, subject: "acct per hour"))

        driver.setUp(.createAccount(CreateAccount(account: "parent")))
        driver.setUp(.createAccount(CreateAccount(account: "child", parent: "parent")))
        driver.grant(1_000, account: "child")
        driver.setUp(.setCap(SetCap(account: "parent", target: .account, window: .day, limit: 3)))
        #expect(driver.spend(3, member: nil, account: "child").decision != nil)
        #expect(driver.spend(1, member: nil, account: "child").refusal?.error == LedgerError(.parentCap, level: .parent, subject: "parent per day"))
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func aWindowCapCountsWhatIsHeldWhenItIsSetAndNotWhatWasConsumedBefore() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        _ = try #require(driver.spend(50).decision)
        let hold = try #require(driver.reserve(4).decision?.hold)
        driver.setUp(cap(.member("m1"), .hour, 10))
        let balance = driver.balance(account: "acct", member: "m1")
        let hourly = try #require(balance.levels.first { $0.level == .member }?.caps.first { $0.window == .hour })
        #expect(hourly.used == 4 && hourly.limit == 10 && hourly.mode == .hard)
        #expect(hourly.windowEnd == Fixtures.start.adding(microseconds: hour))
        #expect(balance.headroom.member == 6)
        // Changing the limit keeps the count; removing it lets everything through again.
        driver.setUp(cap(.member("m1"), .hour, 5))
        #expect(driver.spend(2).errorCode == .memberCap)
        _ = try #require(driver.release(hold).released)
        #expect(driver.spend(5).decision != nil)
        driver.setUp(cap(.member("m1"), .hour, nil))
        #expect(driver.spend(100).decision != nil)
        #expect(driver.balance(account: "acct", member: "m1").levels.first { $0.level == .member }?.caps.isEmpty == true)
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func aSoftCapNeverRefusesAndFiresOncePerCrossing() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(cap(.member("m1"), .hour, 10, mode: .soft))
        driver.setUp(cap(.account, .day, 30, mode: .soft))
        _ = driver.ledger.takeEvents()
        _ = try #require(driver.spend(8).decision)
        #expect(driver.ledger.takeEvents().isEmpty)
        _ = try #require(driver.spend(5).decision)
        var events = driver.ledger.takeEvents()
        #expect(events.count == 1)
        let event = try #require(events.first)
        #expect(event.account == "acct" && event.member == "m1")
        #expect(event.kind == .softLimit(level: .member, subject: "m1", window: .hour, limit: 10, used: 13))
        // Past it already: no second event, and nothing is refused.
        _ = try #require(driver.spend(20).decision)
        events = driver.ledger.takeEvents()
        #expect(events.map(\.kind) == [.softLimit(level: .account, subject: "acct", window: .day, limit: 30, used: 33)])
        // A new hour re-arms the member's soft cap.
        driver.advance(microseconds: hour)
        _ = try #require(driver.spend(9).decision)
        #expect(driver.ledger.takeEvents().isEmpty)
        _ = try #require(driver.spend(2).decision)
        #expect(driver.ledger.takeEvents().map(\.kind) == [.softLimit(level: .member, subject: "m1", window: .hour, limit: 10, used: 11)])
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func aSoftCapReArmsWhenAReleaseTakesItBackUnder() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(cap(.member("m1"), .period, 10, mode: .soft))
        let hold = try #require(driver.reserve(12).decision?.hold)
        #expect(driver.ledger.takeEvents().count == 1)
        _ = try #require(driver.release(hold).released)
        _ = try #require(driver.reserve(11).decision)
        #expect(driver.ledger.takeEvents().count == 1)
    }

    @Test func openHoldsAreBoundedPerMemberForEachMemberAndPerAccount() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(.setConcurrency(account: "acct", target: .eachMember, limit: 2))
        driver.setUp(.setConcurrency(account: "acct", target: .member("m2"), limit: 3))
        driver.setUp(.setConcurrency(account: "acct", target: .account, limit: 6))
        let first = try #require(driver.reserve(1).decision?.hold)
        _ = try #require(driver.reserve(1).decision)
        let refused = try #require(driver.reserve(1).refusal)
        #expect(refused.error == LedgerError(.concurrencyLimit, level: .member, subject: "m1"))
        #expect(refused.error.code.identifier == "concurrencyLimit")
        // A spend opens no hold.
        #expect(driver.spend(1).decision != nil)
        // Its own bound lets m2 have three.
        for _ in 0..<3 { _ = try #require(driver.reserve(1, member: "m2").decision) }
        #expect(driver.reserve(1, member: "m2").errorCode == .concurrencyLimit)
        // The account's total: 2 + 3 + 1 for the account itself = 6.
        _ = try #require(driver.reserve(1, member: nil).decision)
        #expect(driver.reserve(1, member: "m3").refusal?.error == LedgerError(.concurrencyLimit, level: .account, subject: "acct"))
        // Resolving a hold makes room.
        _ = try #require(driver.commit(first).committed)
        #expect(driver.reserve(1, member: "m3").decision != nil)
        let balance = driver.balance(account: "acct", member: "m2")
        #expect(balance.openHolds == 3 && balance.openHoldsLimit == 3)
        #expect(driver.balance(account: "acct").openHoldsLimit == 6)
        driver.setUp(.setConcurrency(account: "acct", target: .account, limit: nil))
        driver.setUp(.setConcurrency(account: "acct", target: .eachMember, limit: nil))
        #expect(driver.reserve(1).decision != nil)
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func badCapsAndBoundsAreRefusedClearly() {
        var driver = makeDriver()
        #expect(driver.run(cap(.member("m1"), .hour, -1)).errorCode == .amountOutOfRange)
        #expect(driver.run(cap(.member("nobody"), .hour, 5)).errorCode == .unknownMember)
        #expect(driver.run(cap(.group("nogroup"), .day, 5)).errorCode == .unknownGroup)
        #expect(driver.run(.setCap(SetCap(account: "nobody", target: .account, window: .day, limit: 5))).errorCode == .unknownAccount)
        #expect(driver.run(.setConcurrency(account: "acct", target: .account, limit: -1)).errorCode == .amountOutOfRange)
        #expect(driver.run(.setConcurrency(account: "acct", target: .account, limit: 1_000_000)).errorCode == .amountOutOfRange)
        #expect(driver.run(.setConcurrency(account: "acct", target: .member("nobody"), limit: 1)).errorCode == .unknownMember)
        // The period's hard cap through SET_CAP is the cap SET_MEMBER_CAP sets.
        driver.setUp(cap(.member("m1"), .period, 7))
        #expect(driver.balance(account: "acct", member: "m1").levels.first { $0.level == .member }?.limit == 7)
    }

    @Test func windowsAndBoundsSurviveSnapshotReplayAndAFamilyMove() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        driver.setUp(.createGroup(account: "acct", group: "g"))
        driver.setUp(.addToGroup(account: "acct", group: "g", member: "m1"))
        driver.setUp(cap(.member("m1"), .hour, 50))
        driver.setUp(cap(.member("m1"), .hour, 20, mode: .soft))
        driver.setUp(cap(.group("g"), .day, 70))
        driver.setUp(cap(.account, .minute, 90, mode: .soft))
        driver.setUp(.setConcurrency(account: "acct", target: .eachMember, limit: 4))
        driver.setUp(.setConcurrency(account: "acct", target: .member("m1"), limit: 2))
        driver.setUp(.setConcurrency(account: "acct", target: .account, limit: 9))
        _ = try #require(driver.spend(25).decision)
        _ = try #require(driver.reserve(5).decision)
        let restored = try Ledger(snapshot: driver.ledger.snapshot())
        #expect(restored == driver.ledger)
        #expect(LedgerDriver.replay(driver.journal) == driver.ledger)

        let original = driver.balance(account: "acct", member: "m1")
        driver.setUp(.moveFamilyOut(account: "acct", destination: "other"))
        let transfer = try driver.ledger.familyTransfer(root: "acct").get()
        var other = Ledger(startingAt: driver.now)
        other.useIDSpace(tag: 7)
        _ = other.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: driver.now), key: "r", at: driver.now)
        #expect(other.apply(.moveFamilyIn(account: "acct", transfer: transfer), key: "in", at: driver.now) == .done)
        let moved = try other.balance(account: "acct", member: "m1", at: driver.now).get()
        #expect(moved.levels.map(\.caps) == original.levels.map(\.caps))
        #expect(moved.openHoldsLimit == 2)
        #expect(other.invariantViolations().isEmpty)
    }
}
