import Logging
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import TollgateJournal
import TollgateLedger
import TollgateWire

/// Sent down a connection's pipeline when the server shuts down gracefully.
struct DrainEvent: Sendable {}

/// Counts open connections against the configured ceiling.
final class ConnectionLimiter: Sendable {
    let maximum: Int
    private let count = Atomic<Int>(0)

    init(maximum: Int) {
        self.maximum = maximum
    }

    /// Takes a place; false (and nothing taken) when the server is full.
    func acquire() -> Bool {
        let value = count.wrappingAdd(1, ordering: .relaxed).newValue
        if value > maximum {
            count.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func release() {
        count.wrappingSubtract(1, ordering: .relaxed)
    }

    var current: Int { count.load(ordering: .relaxed) }
}

/// One gate connection: the handshake, then each request decoded, decided and answered on
/// this event loop. Answers go out in the order requests arrive, tagged with their ids, and
/// are flushed once per read burst.
final class GateConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    private let service: LedgerService
    private let metrics: ServerMetrics
    private let limiter: ConnectionLimiter
    private let logger: Logger
    private let configuration: ServerConfiguration
    private let wireLimits: WireLimits

    private var admitted = false
    private var handshaken = false
    private var closing = false
    /// Answers written since the last flush, and answers flushed but not yet on the socket.
    private var unflushed = 0
    private var inFlight = 0
    private var lastRequest = NIODeadline.now()
    /// Answers not yet written: decisions on the ledger thread (`.dedicatedThread`) or waiting
    /// for their journal fsync (`sync` mode).
    private var awaitingAnswers = 0
    private var draining = false
    private var idleCheck: RepeatedTask?

    private let history: NIOThreadPool

    init(service: LedgerService, metrics: ServerMetrics, limiter: ConnectionLimiter, logger: Logger, history: NIOThreadPool) {
        self.history = history
        self.service = service
        self.metrics = metrics
        self.limiter = limiter
        self.logger = logger
        self.configuration = service.configuration
        self.wireLimits = WireLimits(maxBatchItems: service.configuration.maxBatchItems)
    }

    func channelActive(context: ChannelHandlerContext) {
        guard limiter.acquire() else {
            logger.warning("refused a connection: at the limit of \(limiter.maximum)")
            fail(context: context, WireError(.tooManyConnections, "the server is at its limit of \(limiter.maximum) connections"), requestID: 0)
            return
        }
        admitted = true
        metrics.connectionOpened()
        lastRequest = .now()
        let idle = TimeAmount.milliseconds(configuration.idleTimeoutMilliseconds)
        let period = TimeAmount.milliseconds(max(10, configuration.idleTimeoutMilliseconds / 4))
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        idleCheck = context.eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { _ in
            let (handler, context) = loopBound.value
            if NIODeadline.now() - handler.lastRequest >= idle {
                handler.fail(context: context, WireError(.idleTimeout, "no complete request for \(handler.configuration.idleTimeoutMilliseconds) ms"), requestID: 0)
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleCheck?.cancel()
        idleCheck = nil
        if admitted {
            admitted = false
            limiter.release()
            metrics.connectionClosed()
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard !closing else { return }
        lastRequest = .now()
        let started = NIODeadline.now().uptimeNanoseconds
        let requestID = frame.header.requestID

        guard handshaken || frame.header.opcode == Opcode.hello.rawValue else {
            fail(context: context, WireError(.handshakeRequired, "the first frame on a connection must be HELLO"), requestID: requestID)
            return
        }
        guard inFlight + unflushed < 2 * configuration.maxInFlight else {
            answerError(context: context, frame: frame, WireError(.tooManyInFlight, "more than \(2 * configuration.maxInFlight) answers are waiting to be sent; read them first"))
            return
        }

        let request: WireRequest
        do {
            request = try WireRequest.decode(opcode: frame.header.opcode, body: frame.body, limits: wireLimits)
        } catch {
            answerError(context: context, frame: frame, error)
            return
        }

        let response: WireResponse
        switch request {
        case .hello(let hello):
            guard hello.minVersion <= FrameHeader.version, FrameHeader.version <= hello.maxVersion else {
                fail(context: context, WireError(.unsupportedVersion, "this server speaks version 1; the client asked for \(hello.minVersion) to \(hello.maxVersion)"), requestID: requestID)
                return
            }
            handshaken = true
            response = .hello(
                HelloAnswer(
                    version: FrameHeader.version, serverName: configuration.serverName, maxFrameBody: UInt32(configuration.maxFrameBody),
                    maxInFlight: UInt16(clamping: configuration.maxInFlight), maxBatchItems: UInt16(clamping: configuration.maxBatchItems)))
        case .ping:
            response = .pong
        default:
            if let ledgerThread = service.ledgerThread {
                decideElsewhere(context: context, request, requestID: requestID, started: started, on: ledgerThread.next())
                return
            }
            if case .balanceAt = request {
                answerFromHistory(context: context, request, requestID: requestID, started: started)
                return
            }
            let handled = service.handle(request)
            if let sequence = handled.sequence, configuration.journalMode == .sync, let journal = service.journal {
                answerWhenDurable(context: context, handled.response, to: request, requestID: requestID, started: started, sequence: sequence, journal: journal)
                return
            }
            response = handled.response
        }
        write(context: context, response.frame(opcode: request.opcode, requestID: requestID))
        metrics.recordRequest(request.opcode, outcome: response.outcome, nanoseconds: Int64(NIODeadline.now().uptimeNanoseconds - started))
    }

    /// The `.dedicatedThread` path: the decision runs on the ledger's thread and the answer
    /// hops back to this connection's thread, in order.
    private func decideElsewhere(context: ChannelHandlerContext, _ request: WireRequest, requestID: UInt32, started: UInt64, on loop: any EventLoop) {
        let service = service
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        awaitingAnswers += 1
        loop.submit { service.handle(request).response }.hop(to: context.eventLoop).whenSuccess { response in
            let (handler, context) = loopBound.value
            handler.sendDeferred(context: context, response, to: request, requestID: requestID, started: started)
        }
    }

    /// Sends an answer that was not ready when its request was read (decided on another
    /// thread, waiting for the journal, or read from history), and closes once the last such
    /// answer is out if the server is draining.
    private func sendDeferred(context: ChannelHandlerContext, _ answer: WireResponse, to request: WireRequest, requestID: UInt32, started: UInt64) {
        awaitingAnswers -= 1
        guard context.channel.isActive, !closing || draining else { return }
        write(context: context, answer.frame(opcode: request.opcode, requestID: requestID))
        metrics.recordRequest(request.opcode, outcome: answer.outcome, nanoseconds: Int64(NIODeadline.now().uptimeNanoseconds - started))
        if draining {
            if awaitingAnswers == 0 { flushThenClose(context: context) }
        } else {
            flush(context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush(context: context)
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? WireError {
            // Framing is lost: say why, then close.
            fail(context: context, error, requestID: 0)
        } else if let error = error as? IOError, error.errnoCode == ECONNRESET {
            context.close(promise: nil)
        } else {
            logger.debug("connection error: \(error)")
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is DrainEvent {
            // Stop taking requests; once everything read has been answered, send it and close.
            closing = true
            draining = true
            if awaitingAnswers == 0 { flushThenClose(context: context) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// A balance in the past reads files: it runs on the history thread, and the answer hops
    /// back here.
    private func answerFromHistory(context: ChannelHandlerContext, _ request: WireRequest, requestID: UInt32, started: UInt64) {
        awaitingAnswers += 1
        let service = service
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        history.runIfActive(eventLoop: context.eventLoop) { service.handle(request).response }.whenComplete { result in
            let (handler, context) = loopBound.value
            let answer: WireResponse
            switch result {
            case .success(let response): answer = response
            case .failure: answer = .error(WireError(.unavailable, "the server is shutting down"))
            }
            handler.sendDeferred(context: context, answer, to: request, requestID: requestID, started: started)
        }
    }

    /// `sync` mode: the answer waits for the group-commit fsync that keeps its record; if the
    /// journal cannot keep it, the answer is `unavailable` and nothing was acknowledged.
    private func answerWhenDurable(
        context: ChannelHandlerContext, _ response: WireResponse, to request: WireRequest, requestID: UInt32, started: UInt64,
        sequence: UInt64, journal: JournalWriter
    ) {
        awaitingAnswers += 1
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        journal.whenDurable(sequence) { result in
            eventLoop.execute {
                let (handler, context) = loopBound.value
                let answer: WireResponse
                switch result {
                case .success: answer = response
                case .failure(let error): answer = .error(WireError(.unavailable, "not kept: \(error.description)"))
                }
                handler.sendDeferred(context: context, answer, to: request, requestID: requestID, started: started)
            }
        }
    }

    // MARK: - Writing

    /// The last answer of the current read burst is held back so the flush can carry a
    /// promise: writes complete in order, so its completion means the whole burst is sent.
    private var held: Frame?

    private func write(context: ChannelHandlerContext, _ frame: Frame) {
        if let previous = held { context.write(wrapOutboundOut(previous), promise: nil) }
        held = frame
        unflushed += 1
    }

    private func flush(context: ChannelHandlerContext, then: (@Sendable () -> Void)? = nil) {
        guard let last = held else {
            then?()
            return
        }
        held = nil
        let count = unflushed
        unflushed = 0
        inFlight += count
        let promise = context.eventLoop.makePromise(of: Void.self)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        promise.futureResult.whenComplete { _ in
            loopBound.value.inFlight -= count
            then?()
        }
        context.writeAndFlush(wrapOutboundOut(last), promise: promise)
    }

    private func flushThenClose(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        flush(context: context) { loopBound.value.close(promise: nil) }
    }

    /// An error about one request, with framing intact: the connection stays open unless the
    /// status says otherwise.
    private func answerError(context: ChannelHandlerContext, frame: Frame, _ error: WireError) {
        metrics.recordError(error.status)
        let opcode: Opcode = error.status == .unknownOpcode ? .error : (Opcode(rawValue: frame.header.opcode) ?? .error)
        write(context: context, WireResponse.error(error).frame(opcode: opcode, requestID: frame.header.requestID))
        if error.status.closesConnection {
            closing = true
            flushThenClose(context: context)
        }
    }

    /// An error after which the connection is closed, sent as an ERROR frame.
    func fail(context: ChannelHandlerContext, _ error: WireError, requestID: UInt32) {
        guard !closing else { return }
        closing = true
        metrics.recordError(error.status)
        logger.debug("closing connection: \(error)")
        write(context: context, WireResponse.error(error).frame(opcode: .error, requestID: requestID))
        flushThenClose(context: context)
    }
}
