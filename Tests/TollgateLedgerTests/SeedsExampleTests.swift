import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// The seeds' hybrid plan: 4 seats × 100 pooled credits, AI Assistant 12 / AI Preview 5 /
/// AI Summary 7 credits, and a 1,000-credit top-up at priority 100 expiring in a year.
@Suite struct SeedsExampleTests {
    func request(_ member: String, _ product: String, _ quantity: Int64 = 1) -> DecisionRequest {
        DecisionRequest(account: "acme", member: member, product: product, quantity: quantity)
    }

    @Test func theTopUpIsDrawnOnlyAfterTheIncludedCreditsAreGone() throws {
        var driver = LedgerDriver()
        let (included, topUpID) = Fixtures.seedsExample(&driver)
        let topUp = try #require(topUpID)
        #expect(driver.balance(account: "acme").funds.pool == 1_400)
        // 33 assistant calls = 396 credits, all from the included grant.
        for seat in 0..<33 {
            let member = ["ana", "ben", "cy", "dee"][seat % 4]
            _ = try #require(driver.run(.spend(Spend(request(member, Fixtures.assistant)))).decision)
        }
        #expect(driver.grantView(included, account: "acme")?.available == 4)
        #expect(driver.grantView(topUp, account: "acme")?.consumed == 0)
        // A preview (5) takes the last 4 included credits and 1 from the top-up.
        let preview = try #require(driver.run(.spend(Spend(request("ana", Fixtures.preview)))).decision)
        #expect(preview.cost == 5)
        #expect(driver.grantView(included, account: "acme") == nil)
        #expect(driver.grantView(topUp, account: "acme")?.consumed == 1)
        let summary = try #require(driver.run(.spend(Spend(request("ben", Fixtures.summary, 3)))).decision)
        #expect(summary.cost == 21)
        #expect(driver.grantView(topUp, account: "acme")?.available == 978)
        #expect(driver.violations.isEmpty)
    }

    @Test func theGateRefusesAtZero() throws {
        var driver = LedgerDriver()
        Fixtures.seedsExample(&driver)
        // 1,400 credits: 116 assistant calls (1,392), then 8 left.
        for _ in 0..<116 {
            _ = try #require(driver.run(.spend(Spend(request("cy", Fixtures.assistant)))).decision)
        }
        let refusal = try #require(driver.run(.spend(Spend(request("cy", Fixtures.assistant)))).refusal)
        #expect(refusal.error == LedgerError(.insufficientFunds, level: .account, subject: "acme"))
        #expect(refusal.headroom?.funds == 8)
        _ = try #require(driver.run(.spend(Spend(request("dee", Fixtures.preview)))).decision)
        #expect(driver.run(.spend(Spend(request("dee", Fixtures.preview)))).errorCode == .insufficientFunds)
        #expect(driver.balance(account: "acme").funds.balance == 3)
        #expect(driver.violations.isEmpty)
    }

    @Test func concurrentHoldsOnThePoolNeverOverspend() throws {
        var driver = LedgerDriver()
        Fixtures.seedsExample(&driver, topUp: false)
        // 50 agents race to reserve 12 credits each from 400: exactly 33 win.
        var holds: [HoldID] = []
        for agent in 0..<50 {
            let member = ["ana", "ben", "cy", "dee"][agent % 4]
            let answer = driver.run(.reserve(Reserve(request(member, Fixtures.assistant), ttlMicroseconds: 60 * Microseconds.perSecond)))
            if let hold = answer.decision?.hold { holds.append(hold) } else { #expect(answer.errorCode == .insufficientFunds) }
        }
        #expect(holds.count == 33)
        for hold in holds { _ = driver.run(.commit(Commit(HoldReference(account: "acme", hold: hold)))) }
        #expect(driver.balance(account: "acme").funds.pool == 4)
        #expect(driver.violations.isEmpty)
    }

    @Test func includedCreditsExpireAtThePeriodBoundaryAndTheTopUpRemains() throws {
        var driver = LedgerDriver()
        let (included, topUpID) = Fixtures.seedsExample(&driver)
        let topUp = try #require(topUpID)
        _ = try #require(driver.run(.spend(Spend(request("ana", Fixtures.assistant, 10)))).decision)
        driver.now = CivilTime(year: 2026, month: 2, day: 1).instant
        let balance = driver.balance(account: "acme")
        #expect(balance.funds.pool == 1_000)
        #expect(driver.grantView(included, account: "acme") == nil, "expired with nothing held: retired")
        #expect(balance.grants.map(\.id) == [topUp])
        #expect(balance.levels.last?.consumed == 0, "a new period starts counting from zero")
    }
}
