import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// The operator's reads: an account at a glance, pages of accounts, the burn rate's buckets.
@Suite struct ReadTests {
    @Test func aSummaryAddsUpWhatTheBalanceShows() throws {
        var driver = makeDriver()
        driver.grant(100)
        driver.setUp(.addGrant(AddGrant(account: "acct", scope: .member("m2"), amount: 30, effectiveAt: driver.now)))
        _ = try #require(driver.spend(10, member: "m1").decision)
        _ = try #require(driver.reserve(5, member: "m1").decision)
        let now = driver.now
        let found = driver.ledger.accountSummary("acct", at: now)
        let summary = try #require(found)
        let balance = driver.balance(account: "acct")
        #expect(summary.pool == balance.funds.pool && summary.pool == 85)
        #expect(summary.membersOwn == 30 && summary.balance == 115)
        #expect(summary.held == 5 && summary.consumed == 10 && summary.openHolds == 1 && summary.members == 3)
        #expect(summary.burn == balance.burn && summary.liveGrants == 2)
        let nobody = driver.ledger.accountSummary("nobody", at: now)
        #expect(nobody == nil)
    }

    @Test func pagesOfAccountsInCreationOrderWithinAScope() throws {
        var driver = makeDriver()
        for name in ["b1", "a2", "b3", "a4", "b5"] { driver.setUp(.createAccount(CreateAccount(account: name))) }
        var ledger = driver.ledger
        let allFound = ledger.accountSummaries(after: nil, limit: 10, at: driver.now) { _ in true }
        let all = try #require(allFound)
        #expect(all.page.map(\.account) == ["acct", "b1", "a2", "b3", "a4", "b5"] && all.next == nil)
        var seen: [String] = []
        var after: String?
        repeat {
            let found = ledger.accountSummaries(after: after, limit: 2, at: driver.now) { $0.hasPrefix("b") }
            let page = try #require(found)
            seen += page.page.map(\.account)
            after = page.next
        } while after != nil
        #expect(seen == ["b1", "b3", "b5"])
        // A bounded scan: it stops early and says where to go on.
        let scannedFound = ledger.accountSummaries(after: nil, limit: 10, scanLimit: 2, at: driver.now) { $0.hasPrefix("b") }
        let scanned = try #require(scannedFound)
        #expect(scanned.page.map(\.account) == ["b1"] && scanned.next == "b1")
        let unknown = ledger.accountSummaries(after: "nobody", limit: 1, at: driver.now) { _ in true }
        #expect(unknown == nil)
    }

    @Test func burnBucketsSumToTheBurnRate() throws {
        var driver = makeDriver()
        driver.grant(1_000)
        let start = Instant(microsecondsSinceEpoch: (driver.now.microsecondsSinceEpoch / (5 * minute) + 1) * 5 * minute)
        for (offset, credits) in [(0, 3), (7, 4), (31, 5), (4 * 60 + 10, 6)] {
            driver.now = start.adding(microseconds: Int64(offset) * second)
            _ = try #require(driver.spend(Int64(credits), member: "m1").decision)
        }
        let now = driver.now
        let found = driver.ledger.burnBuckets(account: "acct", at: now)
        let buckets = try found.get()
        let rate = driver.balance(account: "acct").burn
        #expect(buckets.lastMinute.count == 12 && buckets.lastHour.count == 12)
        #expect(buckets.lastMinute.map(\.credits).reduce(0, +) == rate.lastMinute && rate.lastMinute == 6)
        #expect(buckets.lastHour.map(\.credits).reduce(0, +) == rate.lastHour && rate.lastHour == 18)
        #expect(buckets.lastMinute.last?.credits == 6 && buckets.lastHour.last?.credits == 18)
        // Oldest first, 5 seconds apart, the last one holding now.
        let starts = buckets.lastMinute.map(\.start.microsecondsSinceEpoch)
        #expect(zip(starts, starts.dropFirst()).allSatisfy { $1 - $0 == 5 * second })
        #expect(starts.last! <= driver.now.microsecondsSinceEpoch && driver.now.microsecondsSinceEpoch < starts.last! + 5 * second)
        let memberFound = driver.ledger.burnBuckets(account: "acct", member: "m2", at: now)
        let member = try memberFound.get()
        #expect(member.lastHour.allSatisfy { $0.credits == 0 })
        var ledger = driver.ledger
        #expect(throws: LedgerError.self) { try ledger.burnBuckets(account: "acct", member: "ghost", at: now).get() }
    }
}
