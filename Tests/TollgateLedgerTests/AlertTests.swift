import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// Balance alerts (once per crossing, re-armed on the way up) and auto-recharge (at most so
/// many per period), and the events they produce.
@Suite struct BurnRateTests {
    @Test func consumptionOverTheLastMinuteAndHourByAccountAndMember() throws {
        var driver = makeDriver()
        driver.grant(1_000_000)
        // Align to a 5-minute boundary so the buckets are predictable.
        let start = Instant(microsecondsSinceEpoch: (driver.now.microsecondsSinceEpoch / (5 * minute) + 1) * 5 * minute)
        driver.now = start
        _ = try #require(driver.spend(10, member: "m1").decision)
        _ = try #require(driver.spend(5, member: "m2").decision)
        var balance = driver.balance(account: "acct")
        #expect(balance.burn == BurnRate(lastMinute: 15, lastHour: 15))
        #expect(driver.balance(account: "acct", member: "m1").burn == BurnRate(lastMinute: 10, lastHour: 10))
        // A hold counts when committed, not when reserved.
        let hold = try #require(driver.reserve(7, member: "m1").decision?.hold)
        #expect(driver.balance(account: "acct").burn.lastMinute == 15)
        _ = try #require(driver.commit(hold, .credits(4)).committed)
        #expect(driver.balance(account: "acct", member: "m1").burn == BurnRate(lastMinute: 14, lastHour: 14))
        // Two minutes on: out of the minute, still in the hour.
        driver.now = start.adding(microseconds: 2 * minute)
        _ = try #require(driver.spend(1, member: "m3").decision)
        balance = driver.balance(account: "acct")
        #expect(balance.burn == BurnRate(lastMinute: 1, lastHour: 20))
        // An hour and a bit on: all gone.
        driver.now = start.adding(microseconds: 62 * minute)
        #expect(driver.balance(account: "acct").burn == BurnRate(lastMinute: 0, lastHour: 0))
        #expect(driver.ledger.totalBurn(at: start.adding(microseconds: 3 * minute)) == BurnRate(lastMinute: 0, lastHour: 20))
        #expect(try Ledger(snapshot: driver.ledger.snapshot()) == driver.ledger)
    }
}

@Suite struct AlertTests {
    func date(_ year: Int64, _ month: Int64, _ day: Int64, _ hour: Int64 = 0) -> Instant {
        CivilTime(year: year, month: month, day: day, hour: hour).instant
    }

    func kinds(_ events: [LedgerEvent]) -> [LedgerEvent.Kind] { events.map(\.kind) }

    @Test func anAlertFiresOncePerCrossingAndReArmsWhenTheBalanceRises() throws {
        var driver = makeDriver()
        driver.grant(100)
        driver.setUp(.setAlert(account: "acct", rule: AlertRule(id: "low", threshold: .credits(10))))
        #expect(driver.ledger.takeEvents().isEmpty)
        _ = try #require(driver.spend(85).decision)
        #expect(driver.ledger.takeEvents().isEmpty)
        _ = try #require(driver.spend(6).decision)
        let fired = driver.ledger.takeEvents()
        #expect(kinds(fired) == [.alert(id: "low", threshold: 10, balance: 9)])
        #expect(fired.first?.account == "acct" && fired.first?.member == nil && fired.first?.at == driver.now)
        _ = try #require(driver.spend(1).decision)
        #expect(driver.ledger.takeEvents().isEmpty, "fires once per crossing")
        driver.grant(50)
        #expect(driver.ledger.takeEvents().isEmpty)
        #expect(driver.ledger.alertRules(of: "acct").first?.armed == true)
        _ = try #require(driver.spend(50).decision)
        #expect(kinds(driver.ledger.takeEvents()) == [.alert(id: "low", threshold: 10, balance: 8)])
        #expect(driver.violations.isEmpty)
    }

    @Test func depletionAndHoldsThatExpireBack() throws {
        var driver = makeDriver()
        driver.grant(30)
        driver.setUp(.setAlert(account: "acct", rule: AlertRule(id: "empty", threshold: .depleted)))
        let hold = try #require(driver.reserve(30, ttl: 10 * second).decision?.hold)
        #expect(kinds(driver.ledger.takeEvents()) == [.depleted(id: "empty", balance: 0)])
        // The hold expires: its credits come back and the alert re-arms, without a command.
        driver.advance(microseconds: 11 * second)
        driver.ledger.advance(to: driver.now)
        #expect(driver.ledger.alertRules(of: "acct").first?.armed == true)
        #expect(driver.ledger.hold(hold) == nil)
        #expect(driver.violations.isEmpty)
    }

    @Test func aPercentageOfTheAllotmentAndAMembersOwnCredits() throws {
        var driver = makeDriver()
        driver.setUp(.setSeats(account: "acct", seats: 4, effectiveAt: driver.now))
        driver.setUp(.setSubscription(account: "acct", terms: Subscription(creditsPerSeat: 100)))
        driver.setUp(.setAlert(account: "acct", rule: AlertRule(id: "ten-percent", threshold: .percentOfAllotment(10))))
        _ = try #require(driver.spend(359).decision)
        #expect(driver.ledger.takeEvents().isEmpty)
        _ = try #require(driver.spend(1).decision)
        #expect(kinds(driver.ledger.takeEvents()) == [.alert(id: "ten-percent", threshold: 40, balance: 40)])

        var perMember = makeDriver()
        perMember.setUp(.setSubscription(account: "acct", terms: Subscription(scope: .perMember, creditsPerSeat: 500)))
        perMember.setUp(.setAlert(account: "acct", rule: AlertRule(id: "m1-low", member: "m1", threshold: .percentOfAllotment(20))))
        _ = try #require(perMember.spend(400, member: "m1").decision)
        let event = try #require(perMember.ledger.takeEvents().first)
        #expect(event.member == "m1" && event.kind == .alert(id: "m1-low", threshold: 100, balance: 100))
        // m2's spending is not m1's.
        _ = try #require(perMember.spend(450, member: "m2").decision)
        #expect(perMember.ledger.takeEvents().isEmpty)
        // The next period's credits re-arm it.
        perMember.now = date(2026, 2, 1)
        perMember.ledger.advance(to: perMember.now)
        #expect(perMember.ledger.alertRules(of: "acct").first?.armed == true)
        #expect(perMember.violations.isEmpty && driver.violations.isEmpty)
    }

    @Test func autoRechargeTopsUpAtMostSoManyTimesAPeriod() throws {
        var driver = makeDriver()
        driver.grant(100)
        driver.setUp(.setAutoRecharge(account: "acct", rule: AutoRecharge(below: 20, amount: 200, maxPerPeriod: 2, priority: 100)))
        _ = try #require(driver.spend(85).decision)
        let first = driver.ledger.takeEvents()
        guard case .recharged(let grant, let amount, let balance) = first.first?.kind else { Issue.record("\(first)"); return }
        #expect(amount == 200 && balance == 215)
        let view = try #require(driver.grantView(grant))
        #expect(view.source == .topUp && view.priority == 100 && view.expiresAt == .distantFuture)
        _ = try #require(driver.spend(200).decision)
        #expect(kinds(driver.ledger.takeEvents()).count == 1)
        _ = try #require(driver.spend(200).decision)
        #expect(driver.ledger.takeEvents().isEmpty, "two per period")
        #expect(driver.balance(account: "acct").funds.pool == 15)
        #expect(driver.ledger.autoRecharge(of: "acct")?.usedThisPeriod == 2)
        // The next period allows two more; the first command after the boundary recharges.
        driver.now = date(2026, 2, 1)
        _ = try #require(driver.spend(1).decision)
        #expect(kinds(driver.ledger.takeEvents()).count == 1)
        #expect(driver.balance(account: "acct").funds.pool == 214)
        #expect(driver.ledger.rechargeCreditsIssued == 600)
        #expect(driver.violations.isEmpty)
    }

    @Test func rechargingUpToALevel() throws {
        var driver = makeDriver()
        driver.grant(100)
        let lifetime = 30 * Microseconds.perDay
        driver.setUp(
            .setAutoRecharge(
                account: "acct", rule: AutoRecharge(below: 50, amount: 300, upTo: 500, maxPerPeriod: 5, expiresAfterMicroseconds: lifetime)))
        _ = try #require(driver.spend(60).decision)
        // 40 left: up to 500 would be 460, capped at 300.
        guard case .recharged(let grant, let amount, _) = driver.ledger.takeEvents().first?.kind else { Issue.record("no recharge"); return }
        #expect(amount == 300)
        #expect(driver.grantView(grant)?.expiresAt == driver.now.adding(microseconds: lifetime))
        _ = try #require(driver.spend(300).decision)
        guard case .recharged(_, let second, let balance) = driver.ledger.takeEvents().first?.kind else { Issue.record("no recharge"); return }
        #expect(second == 300 && balance == 340)
        #expect(driver.violations.isEmpty)
    }

    @Test func eventsComeOutTheSameOnReplay() throws {
        var driver = makeDriver()
        driver.grant(100)
        driver.setUp(.setAlert(account: "acct", rule: AlertRule(id: "low", threshold: .credits(30))))
        driver.setUp(.setAutoRecharge(account: "acct", rule: AutoRecharge(below: 10, amount: 50, maxPerPeriod: 3)))
        var events: [LedgerEvent] = []
        for _ in 0..<12 {
            _ = driver.spend(13)
            driver.advance(microseconds: 5 * second)
            events += driver.ledger.takeEvents()
        }
        #expect(events.count >= 4)
        #expect(events.map(\.sequence) == Array(1...UInt64(events.count)))
        var replayed = LedgerDriver.replay(driver.journal)
        replayed.advance(to: driver.ledger.clock)
        #expect(replayed.takeEvents() == events)
        #expect(replayed == driver.ledger)
        #expect(try Ledger(snapshot: driver.ledger.snapshot()) == driver.ledger)
    }

    @Test func badAlertsAreRefused() {
        var driver = makeDriver()
        #expect(driver.run(.setAlert(account: "acct", rule: AlertRule(id: "x", member: "nobody", threshold: .depleted))).errorCode == .unknownMember)
        #expect(driver.run(.setAlert(account: "acct", rule: AlertRule(id: "x", threshold: .percentOfAllotment(101)))).errorCode == .amountOutOfRange)
        #expect(driver.run(.setAlert(account: "acct", rule: AlertRule(id: "has space", threshold: .depleted))).errorCode == .invalidArgument)
        #expect(driver.run(.removeAlert(account: "acct", id: "none")).errorCode == .invalidArgument)
        #expect(driver.run(.setAutoRecharge(account: "acct", rule: AutoRecharge(below: 1, amount: 0, maxPerPeriod: 1))).errorCode == .amountOutOfRange)
        #expect(driver.run(.setAutoRecharge(account: "acct", rule: AutoRecharge(below: 1, amount: 1, maxPerPeriod: 0))).errorCode == .amountOutOfRange)
        for index in 0..<16 { driver.setUp(.setAlert(account: "acct", rule: AlertRule(id: "a\(index)", threshold: .credits(Int64(index))))) }
        #expect(driver.run(.setAlert(account: "acct", rule: AlertRule(id: "one-too-many", threshold: .depleted))).errorCode == .limitReached)
        // Replacing an existing id is not one more.
        driver.setUp(.setAlert(account: "acct", rule: AlertRule(id: "a3", threshold: .credits(99))))
        // A removed member's alerts go with it.
        driver.setUp(.setAlert(account: "acct", rule: AlertRule(id: "a4", member: "m2", threshold: .depleted)))
        driver.setUp(.removeMember(account: "acct", member: "m2"))
        #expect(!driver.ledger.alertRules(of: "acct").contains { $0.rule.id == "a4" })
        #expect(driver.violations.isEmpty)
    }
}
