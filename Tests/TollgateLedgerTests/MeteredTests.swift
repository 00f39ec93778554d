import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// Metered products priced by dimension (Ledger+Metered.swift): an LLM call reserved at its
/// worst case and committed by its actual tokens, at the rates of the reserve.
@Suite struct MeteredTests {
    /// gpt-x: 3 credits per 1,000 input tokens, 15 per 1,000 output, 300,000 per 1,000,000 cached.
    func makeMeteredDriver() -> LedgerDriver {
        var driver = makeDriver()
        driver.setUp(.setMeteredRate(product: "gpt-x", dimension: "input", rate: MeteredRate(credits: 3, per: 1_000), effectiveAt: driver.now))
        driver.setUp(.setMeteredRate(product: "gpt-x", dimension: "output", rate: MeteredRate(credits: 15, per: 1_000), effectiveAt: driver.now))
        driver.setUp(.setMeteredRate(product: "gpt-x", dimension: "cached", rate: MeteredRate(credits: 300_000, per: 1_000_000), effectiveAt: driver.now))
        return driver
    }

    func request(_ dimensions: [DimensionQuantity], member: String? = "m1") -> MeteredRequest {
        MeteredRequest(account: "acct", member: member, product: "gpt-x", dimensions: dimensions)
    }

    @Test func aCallIsReservedAtItsWorstCaseAndCommittedByItsActualTokens() throws {
        var driver = makeMeteredDriver()
        driver.grant(1_000)
        // Worst case: 8,000 input and 4,000 output tokens = 24 + 60 = 84 credits.
        let reserved = try #require(
            driver.run(.reserveMetered(request([DimensionQuantity("input", 8_000), DimensionQuantity("output", 4_000)]), ttlMicroseconds: 60 * second)).decision)
        #expect(reserved.cost == 84)
        let hold = try #require(reserved.hold)
        // The rates double before the commit: the hold keeps the rates it was made at.
        driver.setUp(.setMeteredRate(product: "gpt-x", dimension: "output", rate: MeteredRate(credits: 30, per: 1_000), effectiveAt: driver.now))
        // Actual: 5,123 input (15.369) and 1,001 output at the old rate (15.015) = 30.384 → 31.
        let committed = try #require(
            driver.run(
                .commitMetered(
                    hold: HoldReference(account: "acct", hold: hold),
                    dimensions: [DimensionQuantity("input", 5_123), DimensionQuantity("output", 1_001)], isFinal: true)).committed)
        #expect(committed.committed == 31)
        #expect(committed.returned == 84 - 31)
        #expect(driver.balance(account: "acct").funds.pool == 1_000 - 31)
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func theCostIsRoundedUpOnceOverTheSum() throws {
        var driver = makeMeteredDriver()
        driver.grant(1_000)
        // 1 input token is 0.003 credits; 1 cached token 0.3: together 0.303 → 1.
        let one = try #require(driver.run(.spendMetered(request([DimensionQuantity("input", 1), DimensionQuantity("cached", 1)]))).decision)
        #expect(one.cost == 1)
        // Exactly 3 credits: no rounding up past it.
        let exact = try #require(driver.run(.spendMetered(request([DimensionQuantity("input", 1_000)]))).decision)
        #expect(exact.cost == 3)
        // Nothing used costs nothing.
        #expect(try #require(driver.run(.spendMetered(request([DimensionQuantity("output", 0)]))).decision).cost == 0)
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func aCommitAboveTheEstimateDrawsTheExcessUnderTheCaps() throws {
        var driver = makeMeteredDriver()
        driver.grant(1_000)
        driver.setUp(.setMemberCap(account: "acct", member: "m1", limit: 100))
        let hold = try #require(driver.run(.reserveMetered(request([DimensionQuantity("output", 2_000)]), ttlMicroseconds: 60 * second)).decision?.hold)
        // 30 held; 10,000 output tokens = 150 credits: past the member's cap of 100.
        let reference = HoldReference(account: "acct", hold: hold)
        let refused = try #require(driver.run(.commitMetered(hold: reference, dimensions: [DimensionQuantity("output", 10_000)], isFinal: true)).refusal)
        #expect(refused.error.code == .memberCap)
        #expect(try #require(driver.run(.commitMetered(hold: reference, dimensions: [DimensionQuantity("output", 6_000)], isFinal: true)).committed).committed == 90)
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func badMeteredRequestsAreRefusedClearly() throws {
        var driver = makeMeteredDriver()
        driver.grant(1_000)
        #expect(driver.run(.spendMetered(request([]))).errorCode == .invalidArgument)
        #expect(driver.run(.spendMetered(request([DimensionQuantity("input", 1), DimensionQuantity("input", 2)]))).errorCode == .invalidArgument)
        #expect(driver.run(.spendMetered(request([DimensionQuantity("input", -1)]))).errorCode == .amountOutOfRange)
        let unknown = try #require(driver.run(.spendMetered(request([DimensionQuantity("images", 1)]))).refusal)
        #expect(unknown.error == LedgerError(.unknownProduct, level: .request, subject: "gpt-x images"))
        #expect(driver.run(.setMeteredRate(product: "gpt-x", dimension: "input", rate: MeteredRate(credits: 1, per: 10), effectiveAt: driver.now)).errorCode == .invalidArgument)
        #expect(driver.run(.setMeteredRate(product: "gpt-x", dimension: "input", rate: MeteredRate(credits: -1, per: 1), effectiveAt: driver.now)).errorCode == .amountOutOfRange)
        // Near the limits the cost is refused, never wrapped.
        driver.setUp(.setMeteredRate(product: "gpt-x", dimension: "huge", rate: MeteredRate(credits: 1_000_000_000_000, per: 1), effectiveAt: driver.now))
        #expect(driver.run(.spendMetered(request([DimensionQuantity("huge", 1_000_000_000_000)]))).errorCode == .amountOutOfRange)
        // A plain hold is not committed by dimensions, and a metered hold not by quantity.
        let plain = try #require(driver.reserve(2).decision?.hold)
        #expect(driver.run(.commitMetered(hold: HoldReference(account: "acct", hold: plain), dimensions: [], isFinal: true)).errorCode == .invalidArgument)
        let metered = try #require(driver.run(.reserveMetered(request([DimensionQuantity("input", 1_000)]), ttlMicroseconds: 60 * second)).decision?.hold)
        #expect(driver.commit(metered, .quantity(3)).errorCode == .invalidArgument)
        let other = DimensionQuantity("output", 1)
        #expect(driver.run(.commitMetered(hold: HoldReference(account: "acct", hold: metered), dimensions: [other], isFinal: true)).errorCode == .invalidArgument)
        // A product priced only by dimension has no per-unit rate.
        #expect(driver.spend(1, product: "gpt-x").errorCode == .unknownProduct)
        #expect(driver.ledger.invariantViolations().isEmpty)
    }

    @Test func meteredHoldsSurviveSnapshotReplayExpiryAndAFamilyMove() throws {
        var driver = makeMeteredDriver()
        driver.grant(1_000)
        let keep = try #require(driver.run(.reserveMetered(request([DimensionQuantity("input", 2_000)]), ttlMicroseconds: 600 * second)).decision?.hold)
        _ = try #require(driver.run(.reserveMetered(request([DimensionQuantity("output", 1_000)]), ttlMicroseconds: 5 * second)).decision)
        driver.setUp(.setMeteredRate(product: "gpt-x", dimension: "input", rate: MeteredRate(credits: 9, per: 1_000), effectiveAt: driver.now.adding(microseconds: 60 * second)))
        #expect(try Ledger(snapshot: driver.ledger.snapshot()) == driver.ledger)
        #expect(LedgerDriver.replay(driver.journal) == driver.ledger)
        driver.advance(microseconds: 10 * second)
        _ = driver.balance(account: "acct")
        #expect(driver.ledger.invariantViolations().isEmpty, "the expired hold's rates are forgotten")
        #expect(driver.ledger.meteredRates(ofHold: keep)?.map(\.rate) == [MeteredRate(credits: 3, per: 1_000)])

        driver.setUp(.moveFamilyOut(account: "acct", destination: "elsewhere"))
        let transfer = try driver.ledger.familyTransfer(root: "acct").get()
        var other = Ledger(startingAt: driver.now)
        other.useIDSpace(tag: 11)
        #expect(other.apply(.moveFamilyIn(account: "acct", transfer: transfer), key: "in", at: driver.now) == .done)
        let committed = other.apply(
            .commitMetered(hold: HoldReference(account: "acct", hold: keep), dimensions: [DimensionQuantity("input", 2_000)], isFinal: true), key: "c",
            at: driver.now)
        #expect(committed.committed?.committed == 6)
        #expect(other.invariantViolations().isEmpty)
    }
}
