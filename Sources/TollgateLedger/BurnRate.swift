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

    /// One buffer, touched once per consumption: the minute ring's slices (the index of the
    /// time slice each bucket holds: time / bucket length) and amounts, then the hour ring's.
    /// Empty until the first use, so a table of windows costs one reference per account or
    /// member that never consumed.
    private var cells: [Int64] = []

    var isEmpty: Bool { cells.isEmpty }

    mutating func add(_ credits: Credits, at instant: Instant) {
        if cells.isEmpty {
            cells = [Int64](repeating: 0, count: 4 * Self.buckets)
            for index in 0..<Self.buckets {
                cells[index] = -1
                cells[2 * Self.buckets + index] = -1
            }
        }
        let minute = instant.microsecondsSinceEpoch.flooredDivision(by: Self.minuteBucket)
        let hour = instant.microsecondsSinceEpoch.flooredDivision(by: Self.hourBucket)
        cells.withUnsafeMutableBufferPointer { cells in
            Self.record(credits, slice: minute, in: cells, at: 0)
            Self.record(credits, slice: hour, in: cells, at: 2 * Self.buckets)
        }
    }

    private static func record(_ credits: Credits, slice: Int64, in cells: UnsafeMutableBufferPointer<Int64>, at offset: Int) {
        let index = offset + Int(slice.flooredModulo(Int64(buckets)))
        if cells[index] != slice {
            cells[index] = slice
            cells[index + buckets] = 0
        }
        cells[index + buckets] = cells[index + buckets].addingClamped(credits)
    }

    /// Credits consumed in the last minute and the last hour, as of `instant`.
    func totals(at instant: Instant) -> (minute: Credits, hour: Credits) {
        (sum(slice: instant.microsecondsSinceEpoch.flooredDivision(by: Self.minuteBucket), offset: 0),
         sum(slice: instant.microsecondsSinceEpoch.flooredDivision(by: Self.hourBucket), offset: 2 * Self.buckets))
    }

    private func sum(slice current: Int64, offset: Int) -> Credits {
        guard !cells.isEmpty else { return 0 }
        var total: Credits = 0
        for index in offset..<offset + Self.buckets where cells[index] <= current && cells[index] > current - Int64(Self.buckets) {
            total = total.addingClamped(cells[index + Self.buckets])
        }
        return total
    }

    /// The window's exact contents, for checkpoints: empty, or 48 numbers.
    var storage: [Int64] {
        get { cells }
        set { cells = newValue }
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
