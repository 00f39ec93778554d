import Histogram
import NIOCore
import NIOPosix

/// The driver for the Redis baselines: the same scheduling and measuring as `LoadHandler`,
/// over RESP, whose replies come in order.
final class RedisLoadHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = RESPValue
    typealias OutboundOut = ByteBuffer

    enum Flavour: String { case lua = "redis-lua", naive = "redis-naive" }

    enum Kind {
        case plain
        case reserve(hold: String)
        case naiveCheck(pool: String)
        case followUp
        case setup
    }

    struct Pending {
        var due: NIODeadline
        var sent: NIODeadline
        var kind: Kind
        var record: Bool
    }

    let flavour: Flavour
    let mode: LoadHandler.Mode
    var source: RequestSource
    let warmUpEnd: NIODeadline
    let end: NIODeadline
    let maxOutstanding: Int
    var measured = Measured()
    private var pending: [Pending] = []
    private var context: ChannelHandlerContext?
    private var nextDue = NIODeadline.now()
    let finished: EventLoopPromise<Measured>
    let ready: EventLoopPromise<UInt16>
    private var stopped = false
    private var completed = false
    private var shas: [String] = []
    private var holdCounter = 0
    static let memberCap = "1000000000000000"

    init(
        flavour: Flavour, mode: LoadHandler.Mode, source: RequestSource, warmUpEnd: NIODeadline, end: NIODeadline, maxOutstanding: Int,
        finished: EventLoopPromise<Measured>, ready: EventLoopPromise<UInt16>
    ) {
        self.flavour = flavour
        self.mode = mode
        self.source = source
        self.warmUpEnd = warmUpEnd
        self.end = end
        self.maxOutstanding = maxOutstanding
        self.finished = finished
        self.ready = ready
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// Loads the scripts (their SHA1s come back), then `ready` completes.
    func loadScripts() {
        guard let context else { return }
        for script in [RedisScripts.spend, RedisScripts.reserve, RedisScripts.commit] {
            write(["SCRIPT", "LOAD", script], due: .now(), kind: .setup, context: context)
        }
    }

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
        return .nanoseconds(Int64(poisson ? -log(source.random.unit()) * mean : mean))
    }

    private func scheduleNext() {
        guard let context, nextDue < end else { return finishIfIdle() }
        let due = nextDue
        nextDue = due + interval()
        context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: due) {
            if self.pending.count >= self.maxOutstanding { self.measured.skipped += 1 } else { self.send(due: due) }
            self.scheduleNext()
        }
    }

    private func write(_ arguments: [String], due: NIODeadline, kind: Kind, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 128)
        buffer.writeRESP(arguments)
        var record = due >= warmUpEnd
        if case .setup = kind { record = false }
        pending.append(Pending(due: due, sent: .now(), kind: kind, record: record))
        if case .setup = kind {} else { measured.sent += 1 }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    private func send(due: NIODeadline) {
        guard let context else { return }
        let account = source.account()
        let member = source.member()
        let pool = "pool:\(account)"
        let used = "used:\(account):\(member)"
        var operation = source.workload.operation
        if operation == .mixed {
            let roll = source.random.next() % 10
            operation = roll < 4 ? .check : roll < 7 ? .spend : .reserveCommit
        }
        switch (operation, flavour) {
        case (.ping, _):
            write(["PING"], due: due, kind: .plain, context: context)
        case (.check, _):
            write(["GET", pool], due: due, kind: .plain, context: context)
        case (.spend, .lua):
            write(["EVALSHA", shas[0], "2", pool, used, "1", Self.memberCap], due: due, kind: .plain, context: context)
        case (.reserveCommit, .lua), (.mixed, .lua):
            holdCounter += 1
            let hold = "hold:\(source.connection):\(holdCounter)"
            write(["EVALSHA", shas[1], "3", pool, used, hold, "1", Self.memberCap, "60000"], due: due, kind: .reserve(hold: hold), context: context)
        case (_, .naive):
            // Check, then act: GET the balance; DECRBY when it covers the cost.
            write(["GET", pool], due: due, kind: .naiveCheck(pool: pool), context: context)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let value = unwrapInboundIn(data)
        let now = NIODeadline.now()
        guard !pending.isEmpty else { return }
        let request = pending.removeFirst()
        if case .setup = request.kind {
            if case .bulk(let sha?) = value { shas.append(sha) }
            if shas.count == 3 { ready.succeed(0) }
            if case .error = value { ready.succeed(1) }
            return
        }
        measured.answered += 1
        if request.record {
            measured.corrected.record(UInt64(max(0, (now - request.due).nanoseconds)))
            measured.uncorrected.record(UInt64(max(0, (now - request.sent).nanoseconds)))
            measured.decisions += 1
            switch value {
            case .error: measured.errors[500, default: 0] += 1
            case .integer(let result) where result < 0: measured.errors[UInt16(-result), default: 0] += 1
            default: break
            }
        }
        if !stopped {
            switch (request.kind, value) {
            case (.reserve(let hold), .integer(1)):
                write(["EVALSHA", shas[2], "1", hold], due: now, kind: .followUp, context: context)
            case (.naiveCheck(let pool), .bulk(let balance?)) where (Int64(balance) ?? 0) >= 1:
                write(["DECRBY", pool, "1"], due: now, kind: .followUp, context: context)
            default:
                break
            }
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

    func complete() {
        guard !completed else { return }
        completed = true
        finished.succeed(measured)
    }

    func channelInactive(context: ChannelHandlerContext) {
        ready.fail(ChannelError.ioOnClosedChannel)
        complete()
    }
}
