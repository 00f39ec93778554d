import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// Seat subscriptions: included credits every period, seats with effective times, proration,
/// rollover, removal policies, term changes, and periods turned while nobody was looking.
@Suite struct SubscriptionTests {
    static let day = Microseconds.perDay

    func date(_ year: Int64, _ month: Int64, _ day: Int64, _ hour: Int64 = 0) -> Instant {
        CivilTime(year: year, month: month, day: day, hour: hour).instant
    }

    /// `acct` (monthly from 2026-01-01), members m1–m3, product `p` at 1 credit.
    func driver(_ terms: Subscription? = nil, seats: Int64 = 4) -> LedgerDriver {
        var driver = makeDriver()
        if let terms {
            if terms.scope == .pooled { driver.setUp(.setSeats(account: "acct", seats: seats, effectiveAt: driver.now)) }
            driver.setUp(.setSubscription(account: "acct", terms: terms))
        }
        return driver
    }

    func included(_ driver: LedgerDriver, source: GrantSource = .recurring, member: String? = nil) -> [GrantView] {
        driver.ledger.grants(of: "acct").filter { view in
            guard view.source == source else { return false }
            switch view.scope {
            case .pool: return member == nil
            case .member(let id): return id == member
            }
        }
    }

    func moveTo(_ driver: inout LedgerDriver, _ instant: Instant) {
        driver.now = instant
        driver.ledger.advance(to: instant)
    }

    @Test func pooledSeatsBringCreditsEveryPeriodAndUnusedOnesExpire() throws {
        var driver = driver(Subscription(creditsPerSeat: 100))
        let january = try #require(included(driver).first)
        #expect(january.amount == 400 && january.expiresAt == date(2026, 2, 1) && january.priority == 0)
        #expect(driver.balance(account: "acct").funds.pool == 400)
        _ = try #require(driver.spend(150).decision)
        moveTo(&driver, date(2026, 1, 31, 23))
        #expect(driver.balance(account: "acct").funds.pool == 250)
        moveTo(&driver, date(2026, 2, 1))
        let february = try #require(included(driver).first)
        #expect(february.amount == 400 && february.available == 400 && february.expiresAt == date(2026, 3, 1))
        #expect(driver.balance(account: "acct").funds.pool == 400)
        #expect(driver.ledger.creditTotals().expired == 250)
        #expect(driver.violations.isEmpty)
    }

    @Test func unusedIncludedCreditsRollOverUpToTheCap() throws {
        var driver = driver(Subscription(creditsPerSeat: 100, rolloverCap: 100))
        _ = try #require(driver.spend(150).decision)
        moveTo(&driver, date(2026, 2, 1))
        let rollover = try #require(included(driver, source: .rollover).first)
        #expect(rollover.amount == 100 && rollover.expiresAt == date(2026, 3, 1))
        #expect(driver.balance(account: "acct").funds.pool == 500)
        // The rolled-over credits are drawn first (same priority and expiry, issued first).
        _ = try #require(driver.spend(30).decision)
        #expect(included(driver, source: .rollover).first?.available == 70)
        #expect(included(driver).first?.available == 400)
        // Unused rollover does not roll again: only February's own included credits count.
        moveTo(&driver, date(2026, 3, 1))
        #expect(included(driver, source: .rollover).first?.amount == 100)
        #expect(driver.balance(account: "acct").funds.pool == 500)
        // Less unused than the cap: all of it rolls.
        _ = try #require(driver.spend(100 + 370).decision)
        moveTo(&driver, date(2026, 4, 1))
        #expect(included(driver, source: .rollover).first?.amount == 30)
        #expect(driver.violations.isEmpty)
    }

    @Test func aSeatAddedOnDayThreeBringsProratedCredits() throws {
        var driver = driver(Subscription(creditsPerSeat: 100))
        // Effective on 2026-01-03: 29 of January's 31 days are left, 100 × 29 / 31 = 93.
        driver.setUp(.setSeats(account: "acct", seats: 5, effectiveAt: date(2026, 1, 3)))
        #expect(included(driver).count == 1)
        moveTo(&driver, date(2026, 1, 3))
        let added = try #require(included(driver).first { $0.amount != 400 })
        #expect(added.amount == 93 && added.expiresAt == date(2026, 2, 1))
        #expect(driver.balance(account: "acct").funds.pool == 493)
        // From the next period on, five full seats.
        moveTo(&driver, date(2026, 2, 1))
        #expect(included(driver).map(\.amount) == [500])
        #expect(driver.violations.isEmpty)

        // Later on the same day counts the day whole; the first day of a period is no proration.
        var sameDay = self.driver(Subscription(creditsPerSeat: 100))
        sameDay.now = date(2026, 1, 3, 17)
        sameDay.setUp(.setSeats(account: "acct", seats: 5, effectiveAt: sameDay.now))
        #expect(included(sameDay).map(\.amount).sorted() == [93, 400])
        var firstDay = self.driver()
        firstDay.now = date(2026, 1, 1, 9)
        firstDay.setUp(.setSeats(account: "acct", seats: 4, effectiveAt: firstDay.now))
        firstDay.setUp(.setSubscription(account: "acct", terms: Subscription(creditsPerSeat: 100)))
        #expect(included(firstDay).map(\.amount) == [400])

        var flat = self.driver(Subscription(creditsPerSeat: 100, prorate: false))
        flat.now = date(2026, 1, 3)
        flat.setUp(.setSeats(account: "acct", seats: 5, effectiveAt: flat.now))
        #expect(included(flat).map(\.amount).sorted() == [100, 400])
    }

    @Test func aRemovedSeatKeepsItsCreditsUnlessClawedBack() throws {
        var keep = driver(Subscription(creditsPerSeat: 100))
        keep.now = date(2026, 1, 3)
        keep.setUp(.setSeats(account: "acct", seats: 2, effectiveAt: keep.now))
        #expect(keep.balance(account: "acct").funds.pool == 400)
        moveTo(&keep, date(2026, 2, 1))
        #expect(keep.balance(account: "acct").funds.pool == 200)

        var clawBack = driver(Subscription(creditsPerSeat: 100, removal: .clawBack))
        clawBack.now = date(2026, 1, 3)
        clawBack.setUp(.setSeats(account: "acct", seats: 2, effectiveAt: clawBack.now))
        // Two seats' share of the 29 days left: 200 × 29 / 31 = 187 voided.
        let january = try #require(included(clawBack).first)
        #expect(january.voided == 187 && january.available == 213)
        #expect(clawBack.violations.isEmpty && keep.violations.isEmpty)
    }

    @Test func aPendingSeatChangeIsReplacedByALaterOne() throws {
        var driver = driver(Subscription(creditsPerSeat: 10))
        driver.setUp(.setSeats(account: "acct", seats: 8, effectiveAt: date(2026, 1, 10)))
        driver.setUp(.setSeats(account: "acct", seats: 6, effectiveAt: date(2026, 1, 20)))
        moveTo(&driver, date(2026, 1, 15))
        #expect(included(driver).map(\.amount) == [40])
        moveTo(&driver, date(2026, 1, 20))
        // 2 seats × 10 × 12 / 31 = 7.
        #expect(included(driver).map(\.amount).sorted() == [7, 40])
        // An immediate change cancels a pending one.
        driver.setUp(.setSeats(account: "acct", seats: 1, effectiveAt: date(2026, 3, 1)))
        driver.setUp(.setSeats(account: "acct", seats: 6, effectiveAt: driver.now))
        moveTo(&driver, date(2026, 3, 1))
        #expect(included(driver).map(\.amount) == [60])
        #expect(driver.violations.isEmpty)
    }

    @Test func perMemberSeatsWithPooledAddOns() throws {
        var driver = driver(Subscription(scope: .perMember, creditsPerSeat: 500))
        for member in ["m1", "m2", "m3"] {
            #expect(included(driver, member: member).map(\.amount) == [500])
        }
        // A pooled add-on, drawn only once the member's own credits are gone.
        let addOn = driver.grant(1_000, priority: 100)
        _ = try #require(driver.spend(450, member: "m1").decision)
        _ = try #require(driver.spend(100, member: "m1").decision)
        #expect(included(driver, member: "m1").first == nil)
        #expect(driver.grantView(addOn)?.available == 950)
        // A member added on day 3: 500 × 29 / 31 = 467.
        driver.now = date(2026, 1, 3)
        driver.setUp(.addMember(account: "acct", member: "m4"))
        #expect(included(driver, member: "m4").map(\.amount) == [467])
        // Removed with `keep`: its unused 467 move to the pool until the period ends.
        driver.setUp(.removeMember(account: "acct", member: "m4"))
        let moved = try #require(included(driver, source: .rollover).first)
        #expect(moved.amount == 467 && moved.expiresAt == date(2026, 2, 1))
        moveTo(&driver, date(2026, 2, 1))
        for member in ["m1", "m2", "m3"] {
            #expect(included(driver, member: member).map(\.amount) == [500])
        }
        #expect(driver.violations.isEmpty)
    }

    @Test func perMemberRemovalWithClawBackVoidsTheSeat() throws {
        var driver = driver(Subscription(scope: .perMember, creditsPerSeat: 500, removal: .clawBack))
        driver.setUp(.removeMember(account: "acct", member: "m3"))
        #expect(included(driver, source: .rollover).isEmpty)
        #expect(driver.balance(account: "acct").funds.pool == 0)
        #expect(driver.ledger.creditTotals().voided == 500)
        moveTo(&driver, date(2026, 2, 1))
        #expect(driver.ledger.grants(of: "acct").filter { $0.source == .recurring }.count == 2)
        #expect(driver.violations.isEmpty)
    }

    @Test func termChangesWaitForTheNextBoundaryAndAnEndStopsIssuing() throws {
        var driver = driver(Subscription(creditsPerSeat: 100))
        driver.setUp(.setSubscription(account: "acct", terms: Subscription(creditsPerSeat: 150, priority: 5)))
        #expect(included(driver).map(\.amount) == [400])
        moveTo(&driver, date(2026, 2, 1))
        let february = try #require(included(driver).first)
        #expect(february.amount == 600 && february.priority == 5)
        driver.setUp(.setSubscription(account: "acct", terms: nil))
        moveTo(&driver, date(2026, 3, 1))
        #expect(included(driver).isEmpty)
        #expect(driver.balance(account: "acct").funds.pool == 0)
        // Ending twice is refused; so is a per-member subscription's seat count.
        #expect(driver.run(.setSubscription(account: "acct", terms: nil)).errorCode == .invalidArgument)
        driver.setUp(.setSubscription(account: "acct", terms: Subscription(scope: .perMember, creditsPerSeat: 1)))
        #expect(driver.run(.setSeats(account: "acct", seats: 3, effectiveAt: driver.now)).errorCode == .invalidArgument)
        #expect(driver.violations.isEmpty)
    }

    @Test func badTermsAreRefused() {
        var driver = driver()
        #expect(driver.run(.setSubscription(account: "nobody", terms: Subscription(creditsPerSeat: 1))).errorCode == .unknownAccount)
        #expect(driver.run(.setSubscription(account: "acct", terms: Subscription(creditsPerSeat: -1))).errorCode == .amountOutOfRange)
        #expect(driver.run(.setSubscription(account: "acct", terms: Subscription(creditsPerSeat: 1, rolloverCap: -5))).errorCode == .amountOutOfRange)
        #expect(driver.run(.setSeats(account: "acct", seats: -1, effectiveAt: driver.now)).errorCode == .amountOutOfRange)
        #expect(driver.run(.setSeats(account: "acct", seats: 2_000_000, effectiveAt: driver.now)).errorCode == .amountOutOfRange)
        driver.setUp(.setSeats(account: "acct", seats: 1_000_000, effectiveAt: driver.now))
        // 1,000,000 seats × 10,000,000 credits is past the largest amount.
        #expect(driver.run(.setSubscription(account: "acct", terms: Subscription(creditsPerSeat: 10_000_000))).errorCode == .amountOutOfRange)
        #expect(driver.balance(account: "acct").funds.pool == 0)
    }

    @Test(arguments: [
        // Anchored on the 31st: February ends on its last day, in leap and common years.
        (CivilTime(year: 2027, month: 12, day: 31), [
            CivilTime(year: 2028, month: 1, day: 31), CivilTime(year: 2028, month: 2, day: 29), CivilTime(year: 2028, month: 3, day: 31),
            CivilTime(year: 2028, month: 4, day: 30),
        ]),
        (CivilTime(year: 2026, month: 1, day: 30), [
            CivilTime(year: 2026, month: 2, day: 28), CivilTime(year: 2026, month: 3, day: 30), CivilTime(year: 2026, month: 4, day: 30),
        ]),
        (CivilTime(year: 2028, month: 2, day: 29), [
            CivilTime(year: 2028, month: 3, day: 29), CivilTime(year: 2028, month: 4, day: 29), CivilTime(year: 2029, month: 2, day: 28),
        ]),
    ])
    func periodsFollowTheMonthAnchor(anchor: CivilTime, ends: [CivilTime]) throws {
        var driver = LedgerDriver(start: anchor.instant)
        driver.setUp(.createAccount(CreateAccount(account: "acct", period: .monthly(anchor: anchor.instant))))
        driver.setUp(.setSeats(account: "acct", seats: 1, effectiveAt: driver.now))
        driver.setUp(.setSubscription(account: "acct", terms: Subscription(creditsPerSeat: 10)))
        for end in ends {
            // Just before each expected end, the current grant expires exactly then.
            moveTo(&driver, end.instant.adding(microseconds: -1))
            let current = try #require(driver.ledger.grants(of: "acct").first { $0.source == .recurring })
            #expect(current.expiresAt == end.instant, "expected a period ending \(end)")
            #expect(current.amount == 10)
        }
        #expect(driver.violations.isEmpty)
    }

    @Test func aLedgerThatWasNotAdvancedCatchesUpPeriodByPeriod() throws {
        var driver = driver(Subscription(creditsPerSeat: 100, rolloverCap: 50))
        _ = try #require(driver.spend(120).decision)
        // Nothing happens for three and a half months, then one read at once.
        moveTo(&driver, date(2026, 4, 15))
        let totals = driver.ledger.creditTotals()
        // January: 400 (280 unused, 50 rolled). February, March: 400 + 50 rolled each.
        // April: 400 + 50 rolled, active.
        #expect(totals.granted == 400 + 3 * 450)
        #expect(totals.consumed == 120)
        #expect(totals.available == 450)
        #expect(driver.balance(account: "acct").funds.pool == 450)
        // Replaying the journal gives the same ledger, and so does a snapshot of it.
        var replayed = LedgerDriver.replay(driver.journal)
        replayed.advance(to: date(2026, 4, 15))
        #expect(replayed == driver.ledger)
        let restored = try Ledger(snapshot: driver.ledger.snapshot())
        #expect(restored == driver.ledger)
        #expect(driver.violations.isEmpty)
    }

    /// Seats and terms can each wait for a later instant; every pairing that can come into
    /// force is held to seats × credits per seat ≤ creditsMax, whichever is set first, so no
    /// boundary or seat change (which recovery replays too) issues more than a command could.
    @Test func seatsAndTermsThatWaitAreCheckedAgainstEachOther() throws {
        let big = Subscription(creditsPerSeat: 1_000_000_000_000)
        // Seats first, dated later, then terms: the terms meet the pending seat count.
        var seatsFirst = makeDriver()
        seatsFirst.setUp(.setSeats(account: "acct", seats: 1_000_000, effectiveAt: date(2026, 1, 10)))
        #expect(seatsFirst.run(.setSubscription(account: "acct", terms: big)).errorCode == .amountOutOfRange)
        // Small terms now and big ones from the next boundary: a later seat count meets both.
        var termsFirst = driver(Subscription(creditsPerSeat: 1), seats: 1)
        termsFirst.setUp(.setSubscription(account: "acct", terms: Subscription(creditsPerSeat: 10_000_000)))
        #expect(termsFirst.run(.setSeats(account: "acct", seats: 1_000_000, effectiveAt: date(2026, 3, 1))).errorCode == .amountOutOfRange)
        #expect(termsFirst.run(.setSeats(account: "acct", seats: 1_000_000, effectiveAt: termsFirst.now)).errorCode == .amountOutOfRange)
        termsFirst.setUp(.setSeats(account: "acct", seats: 1_000, effectiveAt: date(2026, 3, 1)))
        termsFirst.setUp(.setAlert(account: "acct", rule: AlertRule(id: "half", threshold: .percentOfAllotment(50))))
        // A year of boundaries and the seat change run without a trap, within the limit.
        for month in Int64(2)...13 {
            moveTo(&termsFirst, date(2026 + (month - 1) / 12, (month - 1) % 12 + 1, 1))
        }
        #expect(included(termsFirst).allSatisfy { $0.amount <= 10_000_000_000 })
        #expect(included(termsFirst).contains { $0.amount == 10_000_000_000 })
        #expect(termsFirst.violations.isEmpty)
    }
}
