/// Consumption over the last minute and the last hour, for an account or a member: the burn
/// rate that balances report.
///
/// Kept in two rings of twelve buckets: 5-second buckets for the minute, 5-minute buckets for
/// the hour. "The last minute" is the current 5-second bucket and the eleven before it, so it
/// covers between 55 and 60 seconds; "the last hour" likewise between 55 and 60 minutes. A
/// window exists only for accounts and members that have consumed something.
struct BurnWindow: Hashable, Sendable {
    static let buckets = 12
    static let minuteBucket = 5 * Microseconds.perSecond
    static let hourBucket = 5 * Microseconds.perMinute

    /// For each bucket, the index of the time slice it holds (time / bucket length) and the
    /// credits consumed in it: minute ring first, then hour ring.
    private var slices = [Int64](repeating: -1, count: 2 * buckets)
    private var amounts = [Credits](repeating: 0, count: 2 * buckets)

    mutating func add(_ credits: Credits, at instant: Instant) {
        record(credits, slice: instant.microsecondsSinceEpoch.flooredDivision(by: Self.minuteBucket), offset: 0)
        record(credits, slice: instant.microsecondsSinceEpoch.flooredDivision(by: Self.hourBucket), offset: Self.buckets)
    }

    private mutating func record(_ credits: Credits, slice: Int64, offset: Int) {
        let index = offset + Int(slice.flooredModulo(Int64(Self.buckets)))
        if slices[index] != slice {
            slices[index] = slice
            amounts[index] = 0
        }
        amounts[index] = amounts[index].addingClamped(credits)
    }

    /// Credits consumed in the last minute and the last hour, as of `instant`.
    func totals(at instant: Instant) -> (minute: Credits, hour: Credits) {
        (sum(slice: instant.microsecondsSinceEpoch.flooredDivision(by: Self.minuteBucket), offset: 0),
         sum(slice: instant.microsecondsSinceEpoch.flooredDivision(by: Self.hourBucket), offset: Self.buckets))
    }

    private func sum(slice current: Int64, offset: Int) -> Credits {
        var total: Credits = 0
        for index in offset..<offset + Self.buckets where slices[index] <= current && slices[index] > current - Int64(Self.buckets) {
            total = total.addingClamped(amounts[index])
        }
        return total
    }

    /// The window's exact contents, for checkpoints.
    var storage: (slices: [Int64], amounts: [Credits]) {
        get { (slices, amounts) }
        set { (slices, amounts) = newValue }
    }
}

extension Int64 {
    func flooredModulo(_ divisor: Int64) -> Int64 {
        let remainder = self % divisor
        return remainder < 0 ? remainder + divisor : remainder
    }
}

/// What a balance reports of the burn rate.
public struct BurnRate: Hashable, Sendable {
    public var lastMinute: Credits
    public var lastHour: Credits

    public init(lastMinute: Credits, lastHour: Credits) {
        self.lastMinute = lastMinute
        self.lastHour = lastHour
    }
}
