/// Credits are whole numbers. There is no floating point anywhere on a money path.
public typealias Credits = Int64

/// A point in time: microseconds since 1970-01-01T00:00:00Z. The ledger never reads a clock;
/// every operation is given the instant it is decided at, so replaying the same commands at the
/// same instants rebuilds the same state.
public struct Instant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var microsecondsSinceEpoch: Int64

    public init(microsecondsSinceEpoch: Int64) {
        self.microsecondsSinceEpoch = microsecondsSinceEpoch
    }

    public static func seconds(_ seconds: Int64) -> Instant {
        Instant(microsecondsSinceEpoch: seconds.multipliedClamped(by: Microseconds.perSecond))
    }

    /// Used for "never expires".
    public static let distantFuture = Instant(microsecondsSinceEpoch: Int64.max)
    public static let epoch = Instant(microsecondsSinceEpoch: 0)

    public static func < (lhs: Instant, rhs: Instant) -> Bool {
        lhs.microsecondsSinceEpoch < rhs.microsecondsSinceEpoch
    }

    /// Saturates at the ends of the range instead of trapping.
    public func adding(microseconds: Int64) -> Instant {
        let (sum, overflow) = microsecondsSinceEpoch.addingReportingOverflow(microseconds)
        if overflow { return microseconds > 0 ? .distantFuture : Instant(microsecondsSinceEpoch: Int64.min) }
        return Instant(microsecondsSinceEpoch: sum)
    }

    public func microseconds(since earlier: Instant) -> Int64 {
        microsecondsSinceEpoch &- earlier.microsecondsSinceEpoch
    }

    /// ISO 8601 in UTC, for example `2026-11-21T12:00:00.000000Z`.
    public var description: String {
        if self == .distantFuture { return "never" }
        let civil = CivilTime(self)
        func pad(_ value: Int64, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(civil.year, 4))-\(pad(civil.month, 2))-\(pad(civil.day, 2))T"
            + "\(pad(civil.hour, 2)):\(pad(civil.minute, 2)):\(pad(civil.second, 2))."
            + "\(pad(civil.microsecond, 6))Z"
    }
}

/// Durations are plain `Int64` microseconds; names carry the unit last.
public enum Microseconds {
    public static let perMillisecond: Int64 = 1_000
    public static let perSecond: Int64 = 1_000_000
    public static let perMinute: Int64 = 60 * perSecond
    public static let perHour: Int64 = 60 * perMinute
    public static let perDay: Int64 = 24 * perHour
}

extension Int64 {
    /// Addition that stops at the ends of the range instead of trapping.
    func addingClamped(_ other: Int64) -> Int64 {
        let (sum, overflow) = addingReportingOverflow(other)
        if overflow { return other > 0 ? Int64.max : Int64.min }
        return sum
    }

    func multipliedClamped(by other: Int64) -> Int64 {
        let (product, overflow) = multipliedReportingOverflow(by: other)
        if overflow { return (self < 0) != (other < 0) ? Int64.min : Int64.max }
        return product
    }
}

/// A calendar date and time of day in UTC, proleptic Gregorian. Written out here so the
/// ledger needs no Foundation and period arithmetic is exact and deterministic.
public struct CivilTime: Hashable, Sendable {
    public var year: Int64
    public var month: Int64  // 1...12
    public var day: Int64  // 1...31
    public var hour: Int64
    public var minute: Int64
    public var second: Int64
    public var microsecond: Int64

    public init(year: Int64, month: Int64, day: Int64, hour: Int64 = 0, minute: Int64 = 0, second: Int64 = 0, microsecond: Int64 = 0) {
        self.year = year
        self.month = month
        self.day = day
        self.hour = hour
        self.minute = minute
        self.second = second
        self.microsecond = microsecond
    }

    public init(_ instant: Instant) {
        let micros = instant.microsecondsSinceEpoch
        let days = micros.flooredDivision(by: Microseconds.perDay)
        var rest = micros - days * Microseconds.perDay
        let date = CivilTime.civilDate(daysSinceEpoch: days)
        year = date.year
        month = date.month
        day = date.day
        hour = rest / Microseconds.perHour
        rest -= hour * Microseconds.perHour
        minute = rest / Microseconds.perMinute
        rest -= minute * Microseconds.perMinute
        second = rest / Microseconds.perSecond
        microsecond = rest - second * Microseconds.perSecond
    }

    public var instant: Instant {
        let days = CivilTime.daysSinceEpoch(year: year, month: month, day: day)
        let micros = days * Microseconds.perDay + hour * Microseconds.perHour + minute * Microseconds.perMinute
            + second * Microseconds.perSecond + microsecond
        return Instant(microsecondsSinceEpoch: micros)
    }

    public static func isLeapYear(_ year: Int64) -> Bool {
        (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
    }

    public static func daysInMonth(year: Int64, month: Int64) -> Int64 {
        switch month {
        case 2: return isLeapYear(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to the given date. Counts in 400-year eras of 146,097 days, with
    /// the year starting in March so that the leap day falls at the end of it.
    static func daysSinceEpoch(year: Int64, month: Int64, day: Int64) -> Int64 {
        let marchYear = month <= 2 ? year - 1 : year
        let era = marchYear.flooredDivision(by: 400)
        let yearOfEra = marchYear - era * 400
        let marchMonth = (month + 9) % 12  // March = 0 ... February = 11
        let dayOfYear = (153 * marchMonth + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The inverse of `daysSinceEpoch`.
    static func civilDate(daysSinceEpoch: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let shifted = daysSinceEpoch + 719_468
        let era = shifted.flooredDivision(by: 146_097)
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let marchMonth = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * marchMonth + 2) / 5 + 1
        let month = marchMonth < 10 ? marchMonth + 3 : marchMonth - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return (year, month, day)
    }
}

extension Int64 {
    func flooredDivision(by divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }
}

/// The billing period over which caps count consumption. All caps of one account share it.
public enum BillingPeriod: Hashable, Sendable {
    /// Calendar months anchored at an instant: each period starts on the anchor's day of the
    /// month and time of day, UTC. An anchor on the 29th to 31st starts on the last day of
    /// shorter months (a period anchored on 31 January starts on 28 or 29 February, then on
    /// 31 March).
    case monthly(anchor: Instant)
    /// Fixed-length windows starting at the anchor, for example one day or one week.
    case fixed(anchor: Instant, lengthMicroseconds: Int64)

    /// The half-open window `[start, end)` that contains `instant`.
    public func window(containing instant: Instant) -> (start: Instant, end: Instant) {
        switch self {
        case .fixed(let anchor, let length):
            let offset = instant.microseconds(since: anchor).flooredDivision(by: length)
            let start = anchor.adding(microseconds: offset.multipliedClamped(by: length))
            return (start, start.adding(microseconds: length))
        case .monthly(let anchor):
            let anchorCivil = CivilTime(anchor)
            let target = CivilTime(instant)
            var months = (target.year - anchorCivil.year) * 12 + (target.month - anchorCivil.month)
            // The estimate can be one too high (before this month's anchor day) or, with
            // clamped anchors, one too low; settle it against the real boundaries.
            while BillingPeriod.monthStart(anchor: anchorCivil, offset: months) > instant { months -= 1 }
            while BillingPeriod.monthStart(anchor: anchorCivil, offset: months + 1) <= instant { months += 1 }
            return (
                BillingPeriod.monthStart(anchor: anchorCivil, offset: months),
                BillingPeriod.monthStart(anchor: anchorCivil, offset: months + 1)
            )
        }
    }

    static func monthStart(anchor: CivilTime, offset: Int64) -> Instant {
        let monthIndex = anchor.year * 12 + (anchor.month - 1) + offset
        let year = monthIndex.flooredDivision(by: 12)
        let month = monthIndex - year * 12 + 1
        var start = anchor
        start.year = year
        start.month = month
        start.day = min(anchor.day, CivilTime.daysInMonth(year: year, month: month))
        return start.instant
    }
}
