/// Counts work done and reports it at most once per interval, with the rate so far: journal
/// replay in the server's log, long `tollgate` commands on a terminal. The first report comes
/// after one interval, so work shorter than that reports nothing.
public struct ProgressMeter {
    public struct Report: Sendable {
        public var done: Int
        /// Of how much, when known.
        public var total: Int?
        public var elapsed: Duration
        /// Per second, over everything so far (integer: no floating point needed to say it).
        public var perSecond: Int

        /// "12,345 of 50,000 (24%), 6,100/s, 2 s"
        public func line(unit: String) -> String {
            var text = "\(Self.grouped(done))"
            if let total, total > 0 { text += " of \(Self.grouped(total)) (\(done * 100 / total)%)" }
            return text + " \(unit), \(Self.grouped(perSecond))/s, \(elapsed.components.seconds) s"
        }

        static func grouped(_ value: Int) -> String {
            let digits = String(value.magnitude)
            var out = ""
            for (index, character) in digits.enumerated() {
                if index > 0 && (digits.count - index) % 3 == 0 { out.append(",") }
                out.append(character)
            }
            return (value < 0 ? "-" : "") + out
        }
    }

    private let clock = ContinuousClock()
    private let started: ContinuousClock.Instant
    private var nextReport: ContinuousClock.Instant
    private let interval: Duration
    private let report: (Report) -> Void
    public private(set) var done = 0
    public var total: Int?
    /// Whether anything was reported (the work took longer than one interval).
    public private(set) var reported = false

    public init(every interval: Duration = .seconds(1), total: Int? = nil, report: @escaping (Report) -> Void) {
        self.interval = interval
        self.total = total
        self.report = report
        started = clock.now
        nextReport = started.advanced(by: interval)
    }

    /// Counts `count` more; reports if an interval has passed since the last report. Checks
    /// the clock once every 1,024 calls, so it costs next to nothing per record.
    public mutating func advance(by count: Int = 1) {
        done += count
        if done & 1_023 == 0 || count > 1 {
            let now = clock.now
            if now >= nextReport {
                nextReport = now.advanced(by: interval)
                reported = true
                report(current(at: now))
            }
        }
    }

    /// Where things stand now.
    public func current() -> Report { current(at: clock.now) }

    private func current(at now: ContinuousClock.Instant) -> Report {
        let elapsed = started.duration(to: now)
        return Report(done: done, total: total, elapsed: elapsed, perSecond: Int(elapsed.rate(of: Int64(done))))
    }
}

extension Duration {
    /// Seconds with three decimals, as logs write them under a key that already says
    /// `seconds` ("0.004", not "0.0039 seconds").
    public var secondsText: String {
        let milliseconds = components.seconds * 1_000 + components.attoseconds / 1_000_000_000_000_000
        let sign = milliseconds < 0 ? "-" : ""
        let magnitude = milliseconds.magnitude
        let fraction = String(magnitude % 1_000)
        return "\(sign)\(magnitude / 1_000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
    }

    /// How many per second `count` in this long comes to, in whole units (at least one
    /// microsecond is assumed, so a zero duration does not divide by zero).
    public func rate(of count: Int64) -> Int64 {
        let microseconds = max(1, components.seconds * 1_000_000 + components.attoseconds / 1_000_000_000_000)
        let (product, overflow) = count.multipliedReportingOverflow(by: 1_000_000)
        return overflow ? count / microseconds * 1_000_000 : product / microseconds
    }
}
