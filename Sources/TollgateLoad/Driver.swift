import Histogram
import NIOCore
import NIOPosix
import NIOSSL
import TollgateLedger
import TollgateWire

/// What one connection measured.
struct Measured: Sendable {
    /// From each request's due time (coordinated omission corrected), in nanoseconds.
    var corrected = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    /// From when it was actually sent.
    var uncorrected = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var sent = 0
    var answered = 0
    var decisions = 0
    var errors: [UInt16: Int] = [:]
    /// Due but not sent because too many were outstanding (`--max-outstanding`).
    var skipped = 0

    mutating func add(_ other: Measured) {
        corrected.add(other.corrected)
        uncorrected.add(other.uncorrected)
        sent += other.sent
        answered += other.answered
        decisions += other.decisions
        skipped += other.skipped
        for (status, count) in other.errors { errors[status, default: 0] += count }
    }
}

/// One connection's driver, on its event loop: open loop (each request sent at its due time,
/// a scheduled task per request) or closed loop (`depth` requests always in flight).
final class LoadHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    enum Mode {
        case open(ratePerSecond: Double, poisson: Bool)
        case closed(depth: Int)
    }

    struct Pending {
        var due: NIODeadline
        var sent: NIODeadline
        var kind: RequestSource.Kind
        var decisions: Int
        var record: Bool
        /// For a reserve: the account, to commit or release the hold in.
        var account: String?
    }

    let mode: Mode
    var source: RequestSource
    let warmUpEnd: NIODeadline
    let end: NIODeadline
    let maxOutstanding: Int
    var measured = Measured()
    private var pending: [UInt32: Pending] = [:]
    private var nextID: UInt32 = 2
    private var context: ChannelHandlerContext?
    private var nextDue = NIODeadline.now()
    let finished: EventLoopPromise<Measured>
    /// The HELLO answer's status (HELLO is request 1).
    let hello: EventLoopPromise<UInt16>
    private var stopped = false

    init(
        mode: Mode, source: RequestSource, warmUpEnd: NIODeadline, end: NIODeadline, maxOutstanding: Int, finished: EventLoopPromise<Measured>,
        hello: EventLoopPromise<UInt16>
    ) {
        self.hello = hello
        self.mode = mode
        self.source = source
        self.warmUpEnd = warmUpEnd
        self.end = end
        self.maxOutstanding = maxOutstanding
        self.finished = finished
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// Starts after HELLO was answered.
    func start(at start: NIODeadline) {
        nextDue = start
        switch mode {
        case .open: scheduleNext()
        case .closed(let depth): for _ in 0..<depth { send(due: .now()) }
        }
    }

    private func interval() -> TimeAmount {
        guard case .open(let rate, let poisson) = mode else { return .zero }
        let mean = 1e9 / rate
        let nanoseconds = poisson ? -log(source.random.unit()) * mean : mean
        return .nanoseconds(Int64(nanoseconds))
    }

    private func scheduleNext() {
        guard let context, nextDue < end else { return finishIfIdle() }
        let due = nextDue
        nextDue = due + interval()
        context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: due) {
            if self.pending.count >= self.maxOutstanding {
                self.measured.skipped += 1
            } else {
                self.send(due: due)
            }
            self.scheduleNext()
        }
    }

    private func send(due: NIODeadline, request: WireRequest? = nil, kind: RequestSource.Kind? = nil) {
        guard let context else { return }
        let frame: (WireRequest, RequestSource.Kind, decisions: Int) = request.map { ($0, kind!, 1) } ?? source.nextFrame()
        let id = nextID
        nextID = nextID == UInt32.max ? 2 : nextID + 1
        let now = NIODeadline.now()
        var account: String?
        if case .command(.reserve(let reserve), _) = frame.0 { account = reserve.request.account }
        pending[id] = Pending(due: due, sent: now, kind: frame.1, decisions: frame.decisions, record: due >= warmUpEnd, account: account)
        measured.sent += 1
        context.writeAndFlush(wrapOutboundOut(frame.0.frame(requestID: id)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let now = NIODeadline.now()
        if frame.header.requestID == 1 {
            hello.succeed(frame.header.status)
            return
        }
        guard let request = pending.removeValue(forKey: frame.header.requestID) else { return }
        measured.answered += 1
        if request.record {
            measured.corrected.record(UInt64(max(0, (now - request.due).nanoseconds)))
            measured.uncorrected.record(UInt64(max(0, (now - request.sent).nanoseconds)))
            measured.decisions += request.decisions
            if frame.header.status != 0 { measured.errors[frame.header.status, default: 0] += 1 }
        }
        if case .reserve(let commit) = request.kind, frame.header.status == 0,
            case .answer(.decision(let decision))? = try? WireResponse.decode(opcode: frame.header.opcode, status: 0, body: frame.body),
            let hold = decision.hold, let account = request.account, !stopped
        {
            // The follow-up is its own decision, due now.
            let reference = HoldReference(account: account, hold: hold)
            let followUp: Command = commit ? .commit(Commit(reference)) : .release(reference)
            send(due: now, request: .command(followUp, key: source.nextKey()), kind: .followUp)
        }
        if case .closed = mode, !stopped {
            if now < end { send(due: now) } else { stopped = true }
        }
        finishIfIdle()
    }

    private func finishIfIdle() {
        if NIODeadline.now() >= end { stopped = true }
        guard stopped || nextDue >= end, pending.isEmpty else { return }
        stopped = true
        complete()
    }

    private var completed = false

    /// Hands over what was measured, once.
    func complete() {
        guard !completed else { return }
        completed = true
        finished.succeed(measured)
    }

    func channelInactive(context: ChannelHandlerContext) {
        hello.fail(ChannelError.ioOnClosedChannel)
        complete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
