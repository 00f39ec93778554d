import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// Plans: templates that provision an account in one command, all or nothing.
@Suite struct PlanTests {
    static let year = 365 * Microseconds.perDay

    static let team = Plan(
        name: "team", subscription: Subscription(creditsPerSeat: 100),
        grants: [PlanGrant(amount: 1_000, priority: 100, source: .topUp, lifetimeMicroseconds: year)],
        alerts: [AlertRule(id: "low", threshold: .credits(10))])
    static let seatScoped = Plan(name: "seat-scoped", subscription: Subscription(scope: .perMember, creditsPerSeat: 500))
    static let enterprise = Plan(
        name: "enterprise", overage: .overdraft(limit: 5_000), grants: [PlanGrant(amount: 1_000_000, source: .manual)],
        autoRecharge: AutoRecharge(below: 10_000, amount: 100_000, maxPerPeriod: 4))

    func driver() -> LedgerDriver {
        var driver = LedgerDriver()
        driver.setUp(.setRate(product: "ai.assistant", creditsPerUnit: 12, effectiveAt: driver.now))
        for plan in [Self.team, Self.seatScoped, Self.enterprise] { driver.setUp(.definePlan(plan)) }
        return driver
    }

    @Test func theTeamPlanProvisionsSeatsCreditsATopUpAndAnAlert() throws {
        var driver = driver()
        driver.setUp(.provision(Provision(account: "acme", plan: "team", seats: 4, members: ["ana", "ben", "cy", "dee"])))
        let balance = driver.balance(account: "acme")
        #expect(balance.funds.pool == 1_400)
        #expect(balance.subscription?.seats == 4 && balance.subscription?.terms.creditsPerSeat == 100)
        let grants = driver.ledger.grants(of: "acme")
        #expect(grants.map(\.amount).sorted() == [400, 1_000])
        #expect(grants.first { $0.amount == 1_000 }?.expiresAt == driver.now.adding(microseconds: Self.year))
        #expect(driver.ledger.alertRules(of: "acme").map(\.rule.id) == ["low"])
        for member in ["ana", "ben", "cy", "dee"] { #expect(driver.balance(account: "acme", member: member).member == member) }
        #expect(driver.violations.isEmpty)
    }

    @Test func theSeatScopedAndEnterprisePlans() throws {
        var driver = driver()
        driver.setUp(.provision(Provision(account: "initech", plan: "seat-scoped", members: ["ann", "bob"])))
        #expect(driver.balance(account: "initech", member: "ann").funds.member == 500)
        #expect(driver.balance(account: "initech").funds.pool == 0)
        driver.setUp(.provision(Provision(account: "megacorp", plan: "enterprise")))
        var megacorp = driver.balance(account: "megacorp")
        #expect(megacorp.funds.pool == 1_000_000 && megacorp.funds.overage == .overdraft(limit: 5_000) && megacorp.subscription == nil)
        // Unlimited seats: members come and go without credits of their own.
        for index in 0..<50 { driver.setUp(.addMember(account: "megacorp", member: "u\(index)")) }
        _ = try #require(driver.run(.spend(Spend(DecisionRequest(account: "megacorp", member: "u7", product: "ai.assistant", quantity: 80_000)))).decision)
        // 1,000,000 − 960,000 = 40,000: above the recharge level. One more pushes it below.
        _ = try #require(driver.run(.spend(Spend(DecisionRequest(account: "megacorp", member: "u8", product: "ai.assistant", quantity: 2_600)))).decision)
        megacorp = driver.balance(account: "megacorp")
        #expect(megacorp.funds.pool == 40_000 - 31_200 + 100_000)
        #expect(driver.violations.isEmpty)
    }

    @Test func provisioningIsAllOrNothing() throws {
        var driver = driver()
        let bad = driver.run(.provision(Provision(account: "acme", plan: "team", seats: 2, members: ["ana", "has space"])))
        #expect(bad.errorCode == .invalidArgument)
        #expect(driver.run(.provision(Provision(account: "acme", plan: "team", seats: 2, members: ["ana", "ana"]))).errorCode == .invalidArgument)
        #expect(driver.run(.provision(Provision(account: "acme", plan: "nope"))).errorCode == .invalidArgument)
        #expect(driver.run(.provision(Provision(account: "acme", plan: "team", parent: "nobody"))).errorCode == .unknownAccount)
        #expect(driver.run(.provision(Provision(account: "acme", plan: "team", seats: -1))).errorCode == .amountOutOfRange)
        // Nothing of acme exists after any of those.
        #expect(driver.ledger.grants(of: "acme").isEmpty)
        driver.setUp(.provision(Provision(account: "acme", plan: "team", seats: 1)))
        #expect(driver.run(.provision(Provision(account: "acme", plan: "team", seats: 1))).errorCode == .alreadyExists)
        #expect(driver.run(.definePlan(Plan(name: "bad", grants: [PlanGrant(amount: 0)]))).errorCode == .amountOutOfRange)
        #expect(driver.run(.definePlan(Plan(name: "bad", alerts: [AlertRule(id: "m", member: "x", threshold: .depleted)]))).errorCode == .invalidArgument)
        // A plan's alerts and auto-recharge are held to the rules SET_ALERT and SET_AUTO_RECHARGE
        // apply, so provisioning never meets one it cannot set.
        for alert in [AlertRule(id: "a", threshold: .percentOfAllotment(101)), AlertRule(id: "a", threshold: .percentOfAllotment(-1)), AlertRule(id: "a", threshold: .credits(-5))] {
            #expect(driver.run(.definePlan(Plan(name: "bad", alerts: [alert]))).errorCode == .amountOutOfRange, "\(alert)")
        }
        for recharge in [
            AutoRecharge(below: 5, amount: 10, maxPerPeriod: 0), AutoRecharge(below: 5, amount: 10, maxPerPeriod: 10_001), AutoRecharge(below: 5, amount: -1, maxPerPeriod: 1),
        ] {
            #expect(driver.run(.definePlan(Plan(name: "bad", autoRecharge: recharge))).errorCode == .amountOutOfRange, "\(recharge)")
        }
        #expect(driver.run(.provision(Provision(account: "bad-1", plan: "bad"))).errorCode == .invalidArgument)
        // Replay and checkpoints keep plans.
        var replayed = LedgerDriver.replay(driver.journal)
        replayed.advance(to: driver.ledger.clock)
        #expect(replayed == driver.ledger)
        #expect(try Ledger(snapshot: driver.ledger.snapshot()) == driver.ledger)
        #expect(driver.ledger.definedPlans.map(\.name) == ["enterprise", "seat-scoped", "team"])
        #expect(driver.violations.isEmpty)
    }
}
