import Histogram
import NIOCore
import NIOPosix

/// The driver for the Redis baselines: the same scheduling and measuring as `LoadHandler`,
/// over RESP, whose replies come in order.
final class RedisLoadHandler: ChannelInboundHandler, PacedDriver, @unchecked Sendable {
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
    let pacer: Pacer
    var source: RequestSource
    private var pending = CircularBuffer<Pending>()
    private var flushes = CoalescedFlush()
    private var context: ChannelHandlerContext?
    let ready: EventLoopPromise<UInt16>
    private var shas: [String] = []
    private var holdCounter = 0
    static let memberCap = "1000000000000000"

    init(flavour: Flavour, pacer: Pacer, source: RequestSource, ready: EventLoopPromise<UInt16>) {
        self.flavour = flavour
        self.pacer = pacer
        self.source = source
        self.ready = ready
    }

    var outstanding: Int { pending.count }
    func unitRandom() -> Double { source.random.unit() }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// Loads the scripts (their SHA1s come back), then `ready` completes.
    func loadScripts() {
        guard let context else { return }
        for script in [RedisScripts.spend, RedisScripts.reserve, RedisScripts.commit] {
            write(["SCRIPT", "LOAD", script], due: .now(), kind: .setup, context: context)
        }
    }

    func start(at start: NIODeadline) {
        guard let context else { return }
        pacer.start(at: start, on: context.eventLoop, driver: self)
    }

    private func write(_ arguments: [String], due: NIODeadline, kind: Kind, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 128)
        buffer.writeRESP(arguments)
        var setup = false
        if case .setup = kind { setup = true }
        pending.append(Pending(due: due, sent: .now(), kind: kind, record: !setup && pacer.records(due: due)))
        if !setup { pacer.measured.sent += 1 }
        flushes.write(wrapOutboundOut(buffer), on: context)
    }

    func send(due: NIODeadline) {
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
        flushes.holding = true
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
        var error: UInt16 = 0
        switch value {
        case .error: error = 500
        case .integer(let result) where result < 0: error = UInt16(-result)
        default: break
        }
        pacer.answered(due: request.due, sent: request.sent, at: now, decisions: 1, record: request.record, error: error)
        if !pacer.stopped {
            switch (request.kind, value) {
            case (.reserve(let hold), .integer(1)):
                write(["EVALSHA", shas[2], "1", hold], due: now, kind: .followUp, context: context)
            case (.naiveCheck(let pool), .bulk(let balance?)) where (Int64(balance) ?? 0) >= 1:
                write(["DECRBY", pool, "1"], due: now, kind: .followUp, context: context)
            default:
                break
            }
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
        ready.fail(ChannelError.ioOnClosedChannel)
        pacer.complete()
    }
}
