import Testing
import TollgateLedger

@Suite struct CalendarTests {
    @Test func civilRoundTripsAcrossCenturiesAndLeapDays() {
        for (year, month, day) in [(1970, 1, 1), (2000, 2, 29), (2024, 2, 29), (2100, 3, 1), (1969, 12, 31), (2026, 11, 21)] {
            let civil = CivilTime(year: Int64(year), month: Int64(month), day: Int64(day), hour: 13, minute: 5, second: 9, microsecond: 42)
            #expect(CivilTime(civil.instant) == civil)
        }
        #expect(CivilTime(year: 1970, month: 1, day: 2).instant == Instant.seconds(86_400))
        #expect(Instant.seconds(951_782_400).description == "2000-02-29T00:00:00.000000Z")
    }

    @Test func leapYearRules() {
        #expect(CivilTime.isLeapYear(2024))
        #expect(!CivilTime.isLeapYear(2026))
        #expect(!CivilTime.isLeapYear(2100))
        #expect(CivilTime.isLeapYear(2000))
    }

    @Test func monthlyPeriodAnchoredOnThe31stClampsToShortMonths() {
        let anchor = CivilTime(year: 2026, month: 1, day: 31, hour: 9).instant
        let period = BillingPeriod.monthly(anchor: anchor)
        let inFebruary = CivilTime(year: 2026, month: 2, day: 15).instant
        let window = period.window(containing: inFebruary)
        #expect(window.start == anchor)
        #expect(window.end == CivilTime(year: 2026, month: 2, day: 28, hour: 9).instant)
        let march = period.window(containing: CivilTime(year: 2026, month: 3, day: 1).instant)
        #expect(march.start == CivilTime(year: 2026, month: 2, day: 28, hour: 9).instant)
        #expect(march.end == CivilTime(year: 2026, month: 3, day: 31, hour: 9).instant)
        // Leap year: 29 February.
        let leap = BillingPeriod.monthly(anchor: CivilTime(year: 2028, month: 1, day: 30).instant)
        #expect(leap.window(containing: CivilTime(year: 2028, month: 3, day: 1).instant).start == CivilTime(year: 2028, month: 2, day: 29).instant)
    }

    @Test func windowBoundariesAreHalfOpen() {
        let anchor = CivilTime(year: 2026, month: 1, day: 15).instant
        let period = BillingPeriod.monthly(anchor: anchor)
        let boundary = CivilTime(year: 2026, month: 2, day: 15).instant
        #expect(period.window(containing: boundary).start == boundary)
        #expect(period.window(containing: boundary.adding(microseconds: -1)).end == boundary)
        // Before the anchor too.
        #expect(period.window(containing: CivilTime(year: 2025, month: 12, day: 20).instant).start == CivilTime(year: 2025, month: 12, day: 15).instant)
        let daily = BillingPeriod.fixed(anchor: anchor, lengthMicroseconds: Microseconds.perDay)
        #expect(daily.window(containing: anchor.adding(microseconds: -1)).start == anchor.adding(microseconds: -Microseconds.perDay))
    }
}
