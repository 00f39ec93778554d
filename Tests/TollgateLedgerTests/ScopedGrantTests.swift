import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// Grants usable only for listed products (Ledger+Scopes.swift).
@Suite struct ScopedGrantTests {
    func scopedGrant(_ driver: inout LedgerDriver, _ amount: Credits, products: [String], member: String? = nil, priority: Int32 = 0) -> GrantID {
        let answer = driver.run(
            .addGrant(
                AddGrant(
                    account: "acct", scope: member.map { .member($0) } ?? .pool, amount: amount, priority: priority, effectiveAt: driver.now,
                    source: .promotional, products: products)))
        guard let id = answer.grantID else { preconditionFailure("grant refused: \(answer)") }
        return id
    }

    @Test func theDrawOrderSkipsGrantsThatDoNotCoverTheProduct() throws {
        var driver = makeDriver()
        // Promotional credits for q, drawn first (priority -1) when they apply.
        let promo = scopedGrant(&driver, 30, products: ["q"], priority: -1)
        let general = driver.grant(20)
        // p may not use the promotion: 20 in funds.
        let refused = try #require(driver.spend(21).refusal)
        #expect(refused.error.code == .insufficientFunds)
        #expect(refused.headroom?.funds == 20)
        let checked = try #require(driver.check(DecisionRequest(account: "acct", member: "m1", product: "q", quantity: 1)).decision)
        #expect(checked.headroom.funds == 50 - 3)
        _ = try #require(driver.spend(5).decision)
        // q (3 a unit) draws the promotion first: 30 of it, then 9 of the general grant.
        _ = try #require(driver.spend(13, product: "q").decision)
        let grants = Dictionary(uniqueKeysWithValues: driver.balance(account: "acct").grants.map { ($0.id, $0) })
        #expect(grants[promo] == nil, "spent to nothing, the promotion is retired")
        let left = grants[general]?.available
        #expect(left == 6, "20 - 5 - 9")
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func aHoldDrawsOnlyCoveringGrantsAndGivesBackToThem() throws {
        var driver = makeDriver()
        let promo = scopedGrant(&driver, 10, products: ["p"], member: "m1")
        let other = scopedGrant(&driver, 10, products: ["q"])
        let hold = try #require(driver.reserve(8).decision?.hold)
        var views = Dictionary(uniqueKeysWithValues: driver.balance(account: "acct", member: "m1").grants.map { ($0.id, $0) })
        #expect(views[promo]?.held == 8 && views[promo]?.products == ["p"])
        #expect(views[other]?.held == 0 && views[other]?.products == ["q"])
        // A commit above the hold draws the excess under the same rule: 2 more covering credits, not 3.
        #expect(driver.commit(hold, .credits(13), final: false).errorCode == .insufficientFunds)
        _ = try #require(driver.commit(hold, .credits(5)).committed)
        views = Dictionary(uniqueKeysWithValues: driver.balance(account: "acct", member: "m1").grants.map { ($0.id, $0) })
        #expect(views[promo]?.available == 5 && views[promo]?.consumed == 5)
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func aParentsScopedPoolCountsOnlyForItsProducts() throws {
        var driver = makeDriver()
        driver.setUp(.createAccount(CreateAccount(account: "kid", parent: "acct")))
        _ = scopedGrant(&driver, 40, products: ["p"])
        #expect(driver.spend(40, member: nil, account: "kid").decision != nil)
        _ = scopedGrant(&driver, 40, products: ["p"])
        #expect(driver.spend(1, member: nil, account: "kid", product: "q").errorCode == .insufficientFunds)
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func badProductListsAreRefused() {
        var driver = makeDriver()
        func add(_ products: [String]) -> Answer {
            driver.run(.addGrant(AddGrant(account: "acct", amount: 5, effectiveAt: driver.now, products: products)))
        }
        #expect(add(["p", "p"]).errorCode == .invalidArgument)
        #expect(add(["has space"]).errorCode == .invalidArgument)
        #expect(add((0..<17).map { "p\($0)" }).errorCode == .invalidArgument)
        #expect(add(["p", "never-priced"]).grantID != nil, "a product without a rate yet may be listed")
    }

    @Test func scopesSurviveSnapshotReplayExpiryAndAFamilyMove() throws {
        var driver = makeDriver()
        let short = driver.run(
            .addGrant(AddGrant(account: "acct", amount: 10, effectiveAt: driver.now, expiresAt: driver.now.adding(microseconds: 60 * second), products: ["q", "p"])))
        _ = try #require(short.grantID)
        _ = scopedGrant(&driver, 25, products: ["q"], member: "m2")
        _ = driver.grant(5)
        _ = try #require(driver.reserve(4).decision)
        #expect(try Ledger(snapshot: driver.ledger.snapshot()) == driver.ledger)
        #expect(LedgerDriver.replay(driver.journal) == driver.ledger)
        // Expiry retires the short grant once nothing is held on it; its products go with it.
        driver.advance(microseconds: 61 * second)
        _ = driver.check(DecisionRequest(account: "acct", member: "m1", product: "p", quantity: 1))
        #expect(driver.ledger.invariantViolations().isEmpty)
        #expect(try Ledger(snapshot: driver.ledger.snapshot()) == driver.ledger)

        let before = driver.balance(account: "acct", member: "m2").grants
        driver.setUp(.moveFamilyOut(account: "acct", destination: "elsewhere"))
        let transfer = try driver.ledger.familyTransfer(root: "acct").get()
        var other = Ledger(startingAt: driver.now)
        other.useIDSpace(tag: 9)
        #expect(other.apply(.moveFamilyIn(account: "acct", transfer: transfer), key: "in", at: driver.now) == .done)
        let moved = try other.balance(account: "acct", member: "m2", at: driver.now).get()
        #expect(moved.grants.map(\.products) == before.map(\.products))
        #expect(other.invariantViolations().isEmpty)
        _ = other.apply(.setRate(product: "q", creditsPerUnit: 1, effectiveAt: driver.now), key: "r", at: driver.now)
        #expect(other.apply(.spend(Spend(DecisionRequest(account: "acct", member: "m2", product: "q", quantity: 25))), key: "s", at: driver.now).decision != nil)
    }
}
