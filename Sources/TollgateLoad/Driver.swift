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

/// One connection's driver for tollgated (or the echo floor), on its event loop; the `Pacer`
/// decides when requests go and measures the answers.
final class LoadHandler: ChannelInboundHandler, PacedDriver, @unchecked Sendable {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    struct Pending {
        var due: NIODeadline
        var sent: NIODeadline
        var kind: RequestSource.Kind
        var decisions: Int
        var record: Bool
        /// For a reserve: the account, to commit or release the hold in.
        var account: String?
    }

    let pacer: Pacer
    var source: RequestSource
    private var pending: [UInt32: Pending] = [:]
    private var nextID: UInt32 = 2
    private var context: ChannelHandlerContext?
    /// Requests sent while answers are being read go out in one flush when the read is done
    /// (a closed loop refills in batches, as a pipelining client would).
    private var flushes = CoalescedFlush()
    /// The HELLO answer's status (HELLO is request 1).
    let hello: EventLoopPromise<UInt16>

    init(pacer: Pacer, source: RequestSource, hello: EventLoopPromise<UInt16>) {
        self.pacer = pacer
        self.source = source
        self.hello = hello
    }

    var outstanding: Int { pending.count }
    func unitRandom() -> Double { source.random.unit() }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// Starts after HELLO was answered.
    func start(at start: NIODeadline) {
        guard let context else { return }
        pacer.start(at: start, on: context.eventLoop, driver: self)
    }

    func send(due: NIODeadline) {
        let (request, kind, decisions) = source.nextFrame()
        send(request, kind: kind, decisions: decisions, due: due)
    }

    private func send(_ request: WireRequest, kind: RequestSource.Kind, decisions: Int, due: NIODeadline) {
        guard let context else { return }
        let id = nextID
        nextID = nextID == UInt32.max ? 2 : nextID + 1
        var account: String?
        if case .command(.reserve(let reserve), _) = request { account = reserve.request.account }
        pending[id] = Pending(due: due, sent: .now(), kind: kind, decisions: decisions, record: pacer.records(due: due), account: account)
        pacer.measured.sent += 1
        flushes.write(wrapOutboundOut(request.frame(requestID: id)), on: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        flushes.holding = true
        let frame = unwrapInboundIn(data)
        let now = NIODeadline.now()
        if frame.header.requestID == 1 {
            hello.succeed(frame.header.status)
            return
        }
        guard let request = pending.removeValue(forKey: frame.header.requestID) else { return }
        pacer.answered(due: request.due, sent: request.sent, at: now, decisions: request.decisions, record: request.record, error: frame.header.status)
        if request.record, request.decisions > 1, frame.header.status == 0,
            case .batch(let items)? = try? WireResponse.decode(opcode: frame.header.opcode, status: 0, body: frame.body)
        {
            // A BATCH frame succeeds as a whole; its items' refusals are counted one by one.
            for item in items where item.response.status != 0 { pacer.measured.errors[item.response.status, default: 0] += 1 }
        }
        if case .reserve(let commit) = request.kind, frame.header.status == 0,
            case .answer(.decision(let decision))? = try? WireResponse.decode(opcode: frame.header.opcode, status: 0, body: frame.body),
            let hold = decision.hold, let account = request.account, !pacer.stopped
        {
            // The follow-up is its own decision, due now.
            let reference = HoldReference(account: account, hold: hold)
            let followUp: Command = commit ? .commit(Commit(reference)) : .release(reference)
            send(.command(followUp, key: source.nextKey()), kind: .followUp, decisions: 1, due: now)
        }
        pacer.afterAnswer(self, at: now)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushes.readComplete(on: context)
    }

    func holdFlushes() { flushes.holding = true }

    func releaseFlushes() {
        if let context { flushes.readComplete(on: context) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        hello.fail(ChannelError.ioOnClosedChannel)
        pacer.complete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Writes made while flushes are held (a read being handled, a burst of due requests) leave
/// in one flush when the hold ends; other writes leave at once.
struct CoalescedFlush {
    var holding = false
    private var unflushed = false

    mutating func write(_ data: NIOAny, on context: ChannelHandlerContext) {
        if holding {
            context.write(data, promise: nil)
            unflushed = true
        } else {
            context.writeAndFlush(data, promise: nil)
        }
    }

    mutating func readComplete(on context: ChannelHandlerContext) {
        holding = false
        if unflushed {
            unflushed = false
            context.flush()
        }
    }
}
