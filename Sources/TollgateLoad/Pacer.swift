import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What a driver gives the pacer: how many requests it has unanswered, a way to send the next
/// one (due at a given time), and its seeded randomness.
protocol PacedDriver: AnyObject {
    var outstanding: Int { get }
    func send(due: NIODeadline)
    func unitRandom() -> Double
    /// Sends made between these two leave in one flush.
    func holdFlushes()
    func releaseFlushes()
}

/// Pacing, measuring and finishing, the same for every protocol the generator speaks: open
/// loop sends each request at its due time (a timer on the connection's event loop; requests
/// that fell due together leave together), closed loop refills as answers come; every answer's latency is recorded from
/// its due time and from its send time; the run is over at `end` once nothing is outstanding.
/// Used only on its connection's event loop.
final class Pacer: @unchecked Sendable {
    enum Mode {
        case open(ratePerSecond: Double, poisson: Bool)
        case closed(depth: Int)
    }

    let mode: Mode
    let warmUpEnd: NIODeadline
    let end: NIODeadline
    let maxOutstanding: Int
    let finished: EventLoopPromise<Measured>
    var measured = Measured()
    private var nextDue = NIODeadline.now()
    private(set) var stopped = false
    private var completed = false

    init(mode: Mode, warmUpEnd: NIODeadline, end: NIODeadline, maxOutstanding: Int, finished: EventLoopPromise<Measured>) {
        self.mode = mode
        self.warmUpEnd = warmUpEnd
        self.end = end
        self.maxOutstanding = maxOutstanding
        self.finished = finished
    }

    /// Whether a request due then is measured (the warm-up is not).
    func records(due: NIODeadline) -> Bool { due >= warmUpEnd }

    func start(at start: NIODeadline, on loop: any EventLoop, driver: any PacedDriver) {
        begin(at: start)
        switch mode {
        case .open: scheduleNext(on: loop, driver: driver)
        case .closed(let depth): for _ in 0..<depth { driver.send(due: .now()) }
        }
    }

    private func interval(_ driver: any PacedDriver) -> TimeAmount {
        guard case .open(let rate, let poisson) = mode else { return .zero }
        let mean = 1e9 / rate
        return .nanoseconds(Int64(poisson ? -log(driver.unitRandom()) * mean : mean))
    }

    /// One timer at a time: when it fires, every request due by then is sent (each with its
    /// own due time) and they leave in one flush, so a generator that woke late catches up
    /// with one write rather than one per request.
    private func scheduleNext(on loop: any EventLoop, driver: any PacedDriver) {
        guard nextDue < end else { return finishIfIdle(driver) }
        loop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: nextDue) {
            self.sendDue(upTo: NIODeadline.now(), driver: driver)
            self.scheduleNext(on: loop, driver: driver)
        }
    }

    /// The timer fired at `now` (late, if the generator was stalled): every request due by then
    /// is sent, each with its own due time, in one flush.
    func sendDue(upTo now: NIODeadline, driver: any PacedDriver) {
        driver.holdFlushes()
        repeat {
            let due = nextDue
            nextDue = due + interval(driver)
            if driver.outstanding >= maxOutstanding { measured.skipped += 1 } else { driver.send(due: due) }
        } while nextDue <= now && nextDue < end
        driver.releaseFlushes()
    }

    /// Where the open loop begins, for driving `sendDue` directly.
    func begin(at start: NIODeadline) {
        nextDue = start
    }

    /// An answer arrived: its latencies (if measured) and its error status (0 for none).
    func answered(due: NIODeadline, sent: NIODeadline, at now: NIODeadline, decisions: Int, record: Bool, error: UInt16) {
        measured.answered += 1
        guard record else { return }
        measured.corrected.record(UInt64(max(0, (now - due).nanoseconds)))
        measured.uncorrected.record(UInt64(max(0, (now - sent).nanoseconds)))
        measured.decisions += decisions
        if error != 0 { measured.errors[error, default: 0] += 1 }
    }

    /// After an answer has been handled: closed loop sends the next; the run may be over.
    func afterAnswer(_ driver: any PacedDriver, at now: NIODeadline) {
        if case .closed = mode, !stopped {
            if now < end { driver.send(due: now) } else { stopped = true }
        }
        finishIfIdle(driver)
    }

    private func finishIfIdle(_ driver: any PacedDriver) {
        if NIODeadline.now() >= end { stopped = true }
        guard stopped || nextDue >= end, driver.outstanding == 0 else { return }
        stopped = true
        complete()
    }

    /// Hands over what was measured, once.
    func complete() {
        guard !completed else { return }
        completed = true
        finished.succeed(measured)
    }
}
