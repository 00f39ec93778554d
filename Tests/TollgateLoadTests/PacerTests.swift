import NIOCore
import NIOEmbedded
import Testing

@testable import TollgateLoad

/// The open loop's coordinated-omission correction, driven at chosen instants: what a stalled
/// generator does with the requests that fell due meanwhile, and how each is measured. No real
/// clock is read, so the figures are exact on any machine. (LoadGeneratorTests stalls the real
/// generator with SIGSTOP for the same behaviour end to end.)
@Suite struct PacerTests {
    /// Records what the pacer sends, at the instant the test says it is.
    final class RecordingDriver: PacedDriver {
        var now = NIODeadline.uptimeNanoseconds(0)
        var outstanding = 0
        var sends: [(due: NIODeadline, sent: NIODeadline)] = []
        /// How many sends each flush carried.
        var flushes: [Int] = []
        private var flushStart = 0

        func send(due: NIODeadline) {
            outstanding += 1
            sends.append((due, now))
        }

        func unitRandom() -> Double { 0.5 }
        func holdFlushes() { flushStart = sends.count }
        func releaseFlushes() { flushes.append(sends.count - flushStart) }
    }

    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let millisecond = TimeAmount.milliseconds(1)

    func pacer(on loop: EmbeddedEventLoop, maxOutstanding: Int = 10_000) -> Pacer {
        Pacer(
            mode: .open(ratePerSecond: 1_000, poisson: false), warmUpEnd: start, end: start + .seconds(1), maxOutstanding: maxOutstanding,
            finished: loop.makePromise())
    }

    @Test func requestsDueDuringAStallCarryItFromTheirDueTimeButNotFromTheirSendTime() throws {
        let loop = EmbeddedEventLoop()
        let pacer = pacer(on: loop)
        let driver = RecordingDriver()
        pacer.begin(at: start)
        var answered = 0
        // Every request sent so far is answered 100 µs after it left.
        func answer() {
            for sent in driver.sends[answered...] {
                pacer.answered(due: sent.due, sent: sent.sent, at: sent.sent + .microseconds(100), decisions: 1, record: pacer.records(due: sent.due), error: 0)
            }
            answered = driver.sends.count
            driver.outstanding = 0
        }
        func fire(at instant: NIODeadline) {
            driver.now = instant
            pacer.sendDue(upTo: instant, driver: driver)
            answer()
        }
        // On time for 400 ms: each timer fires at its request's due time.
        for step in 0..<400 { fire(at: start + millisecond * Int64(step)) }
        // Then the generator stalls: the timer due at 400 ms fires at 700 ms.
        fire(at: start + .milliseconds(700))
        // On time again to the end.
        for step in 701..<1_000 { fire(at: start + millisecond * Int64(step)) }
        pacer.complete()

        // Every due request was sent, each once, with its own due time; the 301 that fell due
        // by 700 ms left together, in one flush.
        #expect(driver.sends.count == 1_000)
        #expect(driver.sends.map(\.due) == (0..<1_000).map { start + millisecond * Int64($0) })
        #expect(driver.flushes.max() == 301 && driver.flushes.count == 400 + 1 + 299)
        #expect(pacer.measured.skipped == 0)

        let corrected = pacer.measured.corrected, uncorrected = pacer.measured.uncorrected
        #expect(corrected.totalCount == 1_000 && uncorrected.totalCount == 1_000)
        // From the due time: the request due at 400 ms waited 300.1 ms; the ten slowest (the
        // p99 of 1,000) at least 290 ms; the median is an answer's 100 µs.
        #expect(Self.near(corrected.max, 300_100_000))
        #expect(corrected.valueAtPercentile(99) >= 290_000_000)
        #expect(Self.near(corrected.valueAtPercentile(50), 100_000))
        // From the send time: nobody waited longer than an answer.
        #expect(Self.near(uncorrected.max, 100_000))
        #expect(Self.near(uncorrected.valueAtPercentile(99), 100_000))
    }

    @Test func aFullWindowSkipsWhatFallsDueAndCountsIt() {
        let loop = EmbeddedEventLoop()
        let pacer = pacer(on: loop, maxOutstanding: 50)
        let driver = RecordingDriver()
        pacer.begin(at: start)
        // Nothing is answered: after 50 sends every request that falls due is skipped.
        driver.now = start + .milliseconds(199)
        pacer.sendDue(upTo: driver.now, driver: driver)
        pacer.complete()
        #expect(driver.sends.count == 50)
        #expect(pacer.measured.skipped == 150)
    }

    /// Within the histograms' three significant digits.
    static func near(_ value: UInt64, _ expected: UInt64) -> Bool {
        let difference = value > expected ? value - expected : expected - value
        return difference * 1_000 <= expected
    }
}
