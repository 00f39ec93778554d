import Testing
import TollgateLedger
import TollgateLedgerTestSupport

@Suite struct LimitTests {
    @Test func identifiersAreBoundedPrintableASCII() {
        var driver = makeDriver()
        for bad in ["", "has space", String(repeating: "a", count: 65), "tab\t", "é"] {
            let answer = driver.run(.createAccount(CreateAccount(account: bad)))
            #expect(answer.errorCode == .invalidArgument, "\(bad.debugDescription) accepted")
        }
        #expect(driver.run(.createAccount(CreateAccount(account: String(repeating: "a", count: 64)))) == .done)
        #expect(driver.run(.addMember(account: "acct", member: "a b")).errorCode == .invalidArgument)
        #expect(driver.run(.setRate(product: "", creditsPerUnit: 1, effectiveAt: driver.now)).errorCode == .invalidArgument)
    }

    @Test func quantitiesAndCostsAreBounded() {
        var driver = makeDriver()
        driver.grant(100)
        #expect(driver.spend(0).errorCode == .amountOutOfRange)
        #expect(driver.spend(-5).errorCode == .amountOutOfRange)
        #expect(driver.spend(1_000_000_000_001).errorCode == .amountOutOfRange)
        driver.setUp(.setRate(product: "dear", creditsPerUnit: 1_000_000_000_000, effectiveAt: driver.now))
        // Within Int64 but past the largest single amount.
        #expect(driver.spend(2, product: "dear").errorCode == .amountOutOfRange)
        // rate × quantity overflows Int64: refused, not trapped.
        #expect(driver.spend(1_000_000, product: "dear").errorCode == .amountOutOfRange)
        #expect(driver.run(.setRate(product: "p", creditsPerUnit: -1, effectiveAt: driver.now)).errorCode == .amountOutOfRange)
        #expect(driver.run(.setAccountCap(account: "acct", limit: -1)).errorCode == .amountOutOfRange)
        #expect(driver.run(.addGrant(AddGrant(account: "acct", amount: Credits.max, effectiveAt: driver.now))).errorCode == .amountOutOfRange)
        #expect(driver.reserve(1, ttl: 0).errorCode == .invalidArgument)
        #expect(driver.reserve(1, ttl: 8 * Fixtures.day).errorCode == .invalidArgument)
        #expect(driver.violations.isEmpty)
    }

    @Test func holdsPerAccountAndInTotal() {
        var limits = LedgerLimits()
        limits.holdsPerAccountMax = 3
        limits.holdsMax = 5
        var driver = makeDriver(limits: limits)
        driver.grant(100)
        driver.setUp(.createAccount(CreateAccount(account: "other")))
        driver.setUp(.addMember(account: "other", member: "m1"))
        driver.grant(100, account: "other")
        for _ in 0..<3 { #expect(driver.reserve(1).decision != nil) }
        let refusal = driver.reserve(1).refusal
        #expect(refusal?.error == LedgerError(.limitReached, level: .account, subject: "open holds per account"))
        for _ in 0..<2 { #expect(driver.reserve(1, account: "other").decision != nil) }
        #expect(driver.reserve(1, account: "other").refusal?.error == LedgerError(.limitReached, level: .ledger, subject: "open holds"))
        // Spends need no hold.
        #expect(driver.spend(1).decision != nil)
    }

    @Test func grantsMembersGroupsAndAccounts() {
        var limits = LedgerLimits()
        limits.grantsPerAccountMax = 2
        limits.membersPerAccountMax = 4
        limits.groupsPerAccountMax = 1
        limits.groupsPerMemberMax = 1
        limits.accountsMax = 2
        var driver = makeDriver(limits: limits)
        driver.grant(1)
        driver.grant(1)
        #expect(driver.run(.addGrant(AddGrant(account: "acct", amount: 1, effectiveAt: driver.now))).refusal?.error.subject == "grants per account")
        // A spent grant stops counting.
        _ = driver.spend(1)
        #expect(driver.run(.addGrant(AddGrant(account: "acct", amount: 1, effectiveAt: driver.now))).grantID != nil)
        driver.setUp(.addMember(account: "acct", member: "m4"))
        #expect(driver.run(.addMember(account: "acct", member: "m5")).refusal?.error.subject == "members per account")
        driver.setUp(.createGroup(account: "acct", group: "g1"))
        #expect(driver.run(.createGroup(account: "acct", group: "g2")).refusal?.error.subject == "groups per account")
        driver.setUp(.createAccount(CreateAccount(account: "second")))
        #expect(driver.run(.createAccount(CreateAccount(account: "third"))).refusal?.error == LedgerError(.limitReached, level: .ledger, subject: "accounts"))
        driver.setUp(.createGroup(account: "second", group: "g"))
        driver.setUp(.addMember(account: "second", member: "x"))
        driver.setUp(.addToGroup(account: "second", group: "g", member: "x"))
        #expect(driver.violations.isEmpty)
    }

    @Test func periodsAreBoundedSoCalendarMathCannotOverflow() {
        var driver = makeDriver()
        let extremes: [BillingPeriod] = [
            .monthly(anchor: Instant(microsecondsSinceEpoch: Int64.min)),
            .monthly(anchor: .distantFuture),
            .fixed(anchor: driver.now, lengthMicroseconds: 0),
            .fixed(anchor: driver.now, lengthMicroseconds: Int64.max),
            .fixed(anchor: Instant(microsecondsSinceEpoch: Int64.min), lengthMicroseconds: Microseconds.perDay),
        ]
        for period in extremes {
            #expect(driver.run(.createAccount(CreateAccount(account: "x", period: period))).errorCode == .invalidArgument)
            #expect(driver.run(.setPeriod(account: "acct", period: period)).errorCode == .invalidArgument)
        }
        #expect(driver.run(.setPeriod(account: "acct", period: .fixed(anchor: driver.now, lengthMicroseconds: Microseconds.perDay))) == .done)
    }

    @Test func headroomSpendableIsTheTightestLevel() {
        #expect(Headroom(member: 9, group: 4, groupID: "g", account: nil, parent: 7, funds: 12).spendable == 4)
        #expect(Headroom(funds: 12).spendable == 12)
    }
}
