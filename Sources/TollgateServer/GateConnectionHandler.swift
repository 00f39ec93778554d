import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
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
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Splits the bytes read into frames, handed to `handle` as they complete: in this handler
    /// rather than a handler of its own before it, so a frame is never boxed to travel the
    /// pipeline (one allocation per request, `bench/allocations`).
    private let frames: NIOSingleStepByteToMessageProcessor<FrameDecoder>

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
    /// Answers decided but not yet written: waiting for the journal to keep what they show,
    /// or for the history thread. They count toward the in-flight limit with the others.
    private var awaitingAnswers = 0
    /// A flush of deferred answers is queued on the loop.
    private var flushScheduled = false
    /// `async` mode's window in nanoseconds: past it, answers wait for the journal.
    private let asyncWindowNanoseconds: UInt64
    private var draining = false
    private var idleCheck: RepeatedTask?

    private let history: NIOThreadPool
    private let keyReads: NIOThreadPool
    /// In router mode: where requests go instead of the ledger.
    private let forwarder: (any RequestForwarder)?

    // Access: who this connection is, decided at HELLO and again whenever the credentials in
    // force change (so a revoked token stops working on open connections).
    private let access: AccessControl
    private let tls: NIOSSLServerHandler?
    private var tlsHandshakeDone = false
    private var principal: Principal?
    private var principalGeneration: UInt64 = 0
    private var presentedCertificate: CertificateNames?
    private var presentedTokenDigest: String?
    private var clientName = ""
    /// Refusals are logged for the first few per connection, then only counted, so a client
    /// in a loop cannot flood the log.
    private var refusalsLogged = 0
    private var refusalsUnlogged = 0
    /// A SUBSCRIBE stream is open: the idle timeout does not apply to a listener.
    private var subscribed = false
    /// A router's relayed event stream, if this connection subscribed through one.
    private var routedSubscription: RoutedSubscription?

    init(
        service: LedgerService, metrics: ServerMetrics, limiter: ConnectionLimiter, logger: Logger, history: NIOThreadPool, keyReads: NIOThreadPool,
        access: AccessControl, tls: NIOSSLServerHandler?, forwarder: (any RequestForwarder)? = nil
    ) {
        self.forwarder = forwarder
        self.access = access
        self.keyReads = keyReads
        self.tls = tls
        self.history = history
        self.service = service
        self.metrics = metrics
        self.limiter = limiter
        self.logger = logger
        self.configuration = service.configuration
        self.wireLimits = WireLimits(maxBatchItems: service.configuration.maxBatchItems)
        self.frames = NIOSingleStepByteToMessageProcessor(FrameDecoder(maxBodyLength: service.configuration.maxFrameBody, expectsResponses: false))
        self.asyncWindowNanoseconds = UInt64(max(1, service.configuration.journalAsyncWindowMilliseconds)) * 1_000_000
    }

    /// Answers this connection owes: not yet written, written but not flushed, and flushed
    /// but not yet taken by the socket. The in-flight limit counts them all.
    private var owed: Int { awaitingAnswers + unflushed + inFlight }

    func channelActive(context: ChannelHandlerContext) {
        outbound = context.channel.allocator.buffer(capacity: Self.outboundInitialCapacity)
        guard limiter.acquire() else {
            logger.warning("refused a connection: at the limit of \(limiter.maximum)")
            fail(context: context, WireError(.tooManyConnections, "the server is at its limit of \(limiter.maximum) connections"), requestID: 0)
            return
        }
        admitted = true
        metrics.connectionOpened()
        lastRequest = .now()
        let idle = TimeAmount.milliseconds(configuration.idleTimeoutMilliseconds)
        let handshakeLimit = TimeAmount.milliseconds(configuration.handshakeTimeoutMilliseconds)
        let period = TimeAmount.milliseconds(max(10, min(configuration.idleTimeoutMilliseconds, configuration.handshakeTimeoutMilliseconds) / 4))
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        idleCheck = context.eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { _ in
            let (handler, context) = loopBound.value
            if !handler.handshaken {
                // A stranger must not hold a connection open: TLS and HELLO within the limit.
                if NIODeadline.now() - handler.lastRequest >= handshakeLimit, handler.tls != nil, !handler.tlsHandshakeDone {
                    // Silent, or stuck inside the TLS handshake: no frame can go out (the TLS
                    // layer holds writes until the handshake ends), so the socket is closed.
                    handler.tlsHandshakeDone = true
                    handler.closing = true
                    handler.metrics.recordTLSHandshake(succeeded: false)
                    handler.logger.info(
                        "closed a connection that did not finish TLS in time",
                        metadata: ["remote": "\(handler.remoteDescription(context))", "limit": "\(handler.configuration.handshakeTimeoutMilliseconds) ms"])
                    context.close(promise: nil)
                } else if NIODeadline.now() - handler.lastRequest >= handshakeLimit {
                    handler.fail(
                        context: context, WireError(.idleTimeout, "no HELLO within \(handler.configuration.handshakeTimeoutMilliseconds) ms of connecting"),
                        requestID: 0)
                }
            } else if !handler.subscribed && NIODeadline.now() - handler.lastRequest >= idle {
                handler.fail(context: context, WireError(.idleTimeout, "no complete request for \(handler.configuration.idleTimeoutMilliseconds) ms"), requestID: 0)
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if subscribed { service.hub?.unsubscribe(context.channel) }
        routedSubscription?.cancel()
        routedSubscription = nil
        idleCheck?.cancel()
        idleCheck = nil
        if admitted {
            admitted = false
            limiter.release()
            metrics.connectionClosed()
        }
        if refusalsUnlogged > 0 {
            logger.notice(
                "more refusals on a closed connection",
                metadata: ["identity": "\(principal?.name ?? "none")", "unlogged": "\(refusalsUnlogged)", "remote": "\(remoteDescription(context))"])
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        do {
            try frames.process(buffer: unwrapInboundIn(data)) { frame in handle(context: context, frame) }
        } catch {
            // Framing is lost (bad magic or version, a body past the limit): as the pipeline's
            // decoder reported it, so the connection is told why and closed.
            errorCaught(context: context, error: error)
        }
    }

    /// One whole request frame.
    private func handle(context: ChannelHandlerContext, _ frame: Frame) {
        guard !closing else { return }
        lastRequest = .now()
        let started = NIODeadline.now().uptimeNanoseconds
        let requestID = frame.header.requestID

        guard handshaken || frame.header.opcode == Opcode.hello.rawValue else {
            fail(context: context, WireError(.handshakeRequired, "the first frame on a connection must be HELLO"), requestID: requestID)
            return
        }
        // Request id 0 is what connection-level ERROR frames carry, and a request's status
        // field is 0: anything else could not be told apart from the server's own frames.
        guard requestID != 0 else {
            answerError(context: context, frame: frame, WireError(.malformedFrame, "request id 0 is reserved for connection-level errors; number requests from 1"))
            return
        }
        guard frame.header.status == 0 else {
            answerError(context: context, frame: frame, WireError(.malformedFrame, "a request's status field must be 0, not \(frame.header.status)"))
            return
        }
        guard owed < 2 * configuration.maxInFlight else {
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
            guard !handshaken else {
                // The identity and role are decided once, at the first HELLO: a second one could
                // otherwise present other credentials and change them.
                answerError(context: context, frame: frame, WireError(.forbidden, "this connection has said HELLO already; its identity is decided once — open a new connection for another"))
                return
            }
            guard hello.minVersion <= FrameHeader.version, FrameHeader.version <= hello.maxVersion else {
                // Answered as the HELLO's response (§4), then the connection is closed.
                answerError(context: context, frame: frame, WireError(.unsupportedVersion, "this server speaks version 1; the client asked for \(hello.minVersion) to \(hello.maxVersion)"))
                return
            }
            clientName = hello.clientName
            presentedCertificate = peerCertificateNames()
            presentedTokenDigest = hello.token.isEmpty ? nil : SHA256.hex(Array(hello.token.utf8))
            guard let principal = identify(context: context) else { return }
            handshaken = true
            response = .hello(
                HelloAnswer(
                    version: FrameHeader.version, serverName: configuration.serverName, maxFrameBody: UInt32(configuration.maxFrameBody),
                    maxInFlight: UInt16(clamping: configuration.maxInFlight), maxBatchItems: UInt16(clamping: configuration.maxBatchItems),
                    identity: principal.name, role: principal.role.rawValue))
        case .ping:
            response = .pong
        case .subscribe(let after, let account):
            guard authorized(context: context, frame: frame, request) != nil else { return }
            if let forwarder {
                guard let account else {
                    answerError(
                        context: context, frame: frame,
                        WireError(.unavailable, "through a router, SUBSCRIBE names one account: each shard numbers its own events (subscribe at each shard's leader for all of them)"))
                    return
                }
                guard routedSubscription == nil else {
                    answerError(context: context, frame: frame, WireError(.unavailable, "this connection has a subscription already"))
                    return
                }
                subscribed = true
                let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                routedSubscription = forwarder.subscribe(account: account, after: after, on: context.eventLoop) { response in
                    let (handler, context) = loopBound.value
                    guard context.channel.isActive else { return }
                    let opcode: Opcode
                    if case .event = response { opcode = .event } else { opcode = .subscribe }
                    handler.write(context: context, response, opcode: opcode, requestID: requestID)
                    handler.flush(context: context)
                }
                return
            }
            subscribe(context: context, requestID: requestID, after: after, account: account, started: started)
            return
        default:
            guard let principal = authorized(context: context, frame: frame, request) else { return }
            var refusedItems: [WireError?]?
            if case .batch(let items) = request, !principal.scope.everything {
                let refusals = items.map { principal.refusal($0) }
                for (item, refusal) in zip(items, refusals) {
                    if let refusal { noteRefusal(context: context, refusal, opcode: item.opcode) }
                }
                if refusals.contains(where: { $0 != nil }) { refusedItems = refusals }
            }
            if let forwarder {
                awaitingAnswers += 1
                let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                forwarder.forward(request, refusedItems: refusedItems, on: context.eventLoop) { response in
                    let (handler, context) = loopBound.value
                    handler.sendDeferred(context: context, response, to: request, requestID: requestID, started: started, flushesSoon: true)
                }
                return
            }
            switch request {
            case .balanceAt, .familyTransfer, .nodeFiles, .readNodeFile:
                // Both read the whole ledger (history, or every table for a family's records):
                // on the history threads, not this event loop.
                answerFromHistory(context: context, request, requestID: requestID, started: started)
                return
            default:
                break
            }
            if request.isMutation, let archive = service.archive {
                let (keys, runsChecked) = service.keysToRead(request, archive: archive)
                if !keys.isEmpty {
                    // The body's own copy: a slice would hold the connection's whole read
                    // buffer while the key is read, and make its next read copy it.
                    var body = context.channel.allocator.buffer(capacity: frame.body.readableBytes)
                    body.writeImmutableBuffer(frame.body)
                    answerAfterReading(
                        keys, archive: archive, context: context, request, body: body, refusedItems: refusedItems, requestID: requestID, started: started)
                    return
                }
                let handled = service.handle(request, body: frame.body, refusedItems: refusedItems, runsChecked: runsChecked)
                deliver(context: context, handled.response, to: request, requestID: requestID, started: started, showsState: handled.showsState)
                return
            }
            let handled = service.handle(request, body: frame.body, refusedItems: refusedItems)
            deliver(context: context, handled.response, to: request, requestID: requestID, started: started, showsState: handled.showsState)
            return
        }
        write(context: context, response, opcode: request.opcode, requestID: requestID)
        metrics.recordRequest(request.opcode, outcome: response.outcome, nanoseconds: Int64(NIODeadline.now().uptimeNanoseconds - started))
    }

    /// The one place durability applies to an answer about the ledger — a decision, a
    /// refusal, a retry answered from the idempotency table, a read, a batch — whatever its
    /// kind. It may show any change appended so far, so it covers the journal's last
    /// appended record, read after the answer was decided. `sync`: it leaves once that record
    /// is on disk, so no answer shows what a crash could take back. `async`: at once, unless
    /// it answers a mutation while the journal is more than the window behind (a stalled
    /// disk); then it waits too, so the acknowledged changes a crash can lose never span more
    /// than the window. Reads are not held in `async` mode.
    private func deliver(
        context: ChannelHandlerContext, _ response: WireResponse, to request: WireRequest, requestID: UInt32, started: UInt64, showsState: Bool = true
    ) {
        if showsState, let journal = service.journal {
            let covers = journal.appendedSequence
            if covers > journal.durableSequence {
                let waits: Bool
                switch configuration.journalMode {
                case .sync, .replicated: waits = true
                case .async: waits = request.isMutation && journal.lagNanoseconds(now: NIODeadline.now().uptimeNanoseconds) > asyncWindowNanoseconds
                case .none: waits = false
                }
                if waits {
                    awaitingAnswers += 1
                    answerWhenDurable(context: context, response, to: request, requestID: requestID, started: started, sequence: covers, journal: journal)
                    return
                }
            }
        }
        write(context: context, response, opcode: request.opcode, requestID: requestID)
        metrics.recordRequest(request.opcode, outcome: response.outcome, nanoseconds: Int64(NIODeadline.now().uptimeNanoseconds - started))
    }

    /// Sends an answer that was not ready when its request was read (waiting for the
    /// journal, or read from history), and closes once the last such answer is out if the
    /// server is draining. Nil: the outcome cannot be told (the journal stopped without
    /// knowing whether the record is kept), so the connection closes without an answer and
    /// the client retries with the same key.
    /// `flushesSoon`: answers that arrive together (an fsync's worth) share one flush.
    private func sendDeferred(
        context: ChannelHandlerContext, _ answer: WireResponse?, to request: WireRequest, requestID: UInt32, started: UInt64, flushesSoon: Bool = false
    ) {
        awaitingAnswers -= 1
        guard context.channel.isActive, !closing || draining else { return }
        guard let answer else {
            closing = true
            flushThenClose(context: context)
            return
        }
        write(context: context, answer, opcode: request.opcode, requestID: requestID)
        metrics.recordRequest(request.opcode, outcome: answer.outcome, nanoseconds: Int64(NIODeadline.now().uptimeNanoseconds - started))
        deferredAnswerSent(context: context, soon: flushesSoon)
    }

    /// After an answer written outside a read burst: flush it, or, when draining and nothing
    /// more is owed, flush and close. `soon`: in a task after the current one, so that the
    /// answers told together leave in one write.
    private func deferredAnswerSent(context: ChannelHandlerContext, soon: Bool = false) {
        if draining {
            if awaitingAnswers == 0 { flushThenClose(context: context) }
        } else if soon {
            guard !flushScheduled else { return }
            flushScheduled = true
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.flushScheduled = false
                handler.flush(context: context)
            }
        } else {
            flush(context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush(context: context)
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if tls != nil && !tlsHandshakeDone && (error is NIOSSLError || error is BoringSSLError) {
            // A failed TLS handshake: wrong CA, expired or missing client certificate, a
            // plaintext client on a TLS port. Nothing can be said to the client in frames.
            tlsHandshakeDone = true
            metrics.recordTLSHandshake(succeeded: false)
            logger.info("TLS handshake failed", metadata: ["remote": "\(remoteDescription(context))", "error": "\(error)"])
            context.close(promise: nil)
            return
        }
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
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            tlsHandshakeDone = true
            metrics.recordTLSHandshake(succeeded: true)
        }
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
    /// One history thread serves every connection, so its queue is bounded server-wide.
    private func answerFromHistory(context: ChannelHandlerContext, _ request: WireRequest, requestID: UInt32, started: UInt64) {
        let service = service
        let queued = service.historyQueued.wrappingAdd(1, ordering: .relaxed).newValue
        guard queued <= LedgerService.historyQueueMax else {
            service.historyQueued.wrappingSubtract(1, ordering: .relaxed)
            let busy = WireError(.unavailable, "\(LedgerService.historyQueueMax) balances in the past are already being read; try again shortly")
            answerError(context: context, frame: Frame(opcode: request.opcode.rawValue, isResponse: false, requestID: requestID, body: ByteBuffer()), busy)
            return
        }
        awaitingAnswers += 1
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        history.runIfActive(eventLoop: context.eventLoop) { service.handle(request).response }.whenComplete { result in
            service.historyQueued.wrappingSubtract(1, ordering: .relaxed)
            let (handler, context) = loopBound.value
            handler.awaitingAnswers -= 1
            guard context.channel.isActive, !handler.closing || handler.draining else { return }
            let response = (try? result.get()) ?? .error(WireError(.unavailable, "the server is shutting down"))
            handler.deliver(context: context, response, to: request, requestID: requestID, started: started)
            handler.deferredAnswerSent(context: context)
        }
    }

    /// A mutation whose key a run of the disk tier may hold (a retry of an old request, or a
    /// filter's false positive): the key is read on a key thread, and the request decided
    /// once it is back here. Bounded server-wide like BALANCE_AT; a key that cannot be read
    /// answers `unavailable` and decides nothing, so a retry is never charged twice because
    /// the disk failed.
    private func answerAfterReading(
        _ keys: [(low: UInt64, high: UInt64)], archive: KeyArchive, context: ChannelHandlerContext, _ request: WireRequest, body: ByteBuffer,
        refusedItems: [WireError?]?, requestID: UInt32, started: UInt64
    ) {
        let service = service
        let frame = Frame(opcode: request.opcode.rawValue, isResponse: false, requestID: requestID, body: ByteBuffer())
        let queued = service.keyReadsQueued.wrappingAdd(1, ordering: .relaxed).newValue
        guard queued <= LedgerService.keyReadsQueueMax else {
            service.keyReadsQueued.wrappingSubtract(1, ordering: .relaxed)
            metrics.recordKeyRead(outcome: "busy")
            answerError(context: context, frame: frame, WireError(.unavailable, "\(LedgerService.keyReadsQueueMax) idempotency keys are already being read from disk; retry shortly"))
            return
        }
        awaitingAnswers += 1
        let metrics = metrics
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        keyReads.runIfActive(eventLoop: context.eventLoop) { () throws -> [ReadKey] in
            try keys.map { ReadKey(low: $0.low, high: $0.high, key: try archive.read(low: $0.low, high: $0.high)) }
        }.whenComplete { result in
            service.keyReadsQueued.wrappingSubtract(1, ordering: .relaxed)
            let (handler, context) = loopBound.value
            handler.awaitingAnswers -= 1
            guard context.channel.isActive, !handler.closing || handler.draining else { return }
            switch result {
            case .success(let read):
                metrics.recordKeyRead(outcome: read.contains { $0.key != nil } ? "found" : "absent")
                let handled = service.handle(request, body: body, refusedItems: refusedItems, read: read)
                handler.deliver(context: context, handled.response, to: request, requestID: requestID, started: started, showsState: handled.showsState)
            case .failure(let error):
                metrics.recordKeyRead(outcome: "failed")
                handler.answerError(
                    context: context, frame: frame, WireError(.unavailable, "cannot read the idempotency key from disk (\(error)); nothing was decided; retry"))
            }
            handler.deferredAnswerSent(context: context)
        }
    }

    /// The answer waits for the fsync that keeps every record it may show. While the disk
    /// fails it keeps waiting (the writer retries); `unavailable` only when the journal
    /// stopped with the record certainly not kept.
    private func answerWhenDurable(
        context: ChannelHandlerContext, _ response: WireResponse, to request: WireRequest, requestID: UInt32, started: UInt64,
        sequence: UInt64, journal: JournalWriter
    ) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        // Told on this loop, with every other answer the same fsync covers here in one task.
        journal.whenDurable(sequence, on: context.eventLoop) { result in
            let (handler, context) = loopBound.value
            let answer: WireResponse?
            switch result {
            case .success: answer = response
            case .failure(let error): answer = error.notKept ? .error(WireError(.unavailable, "not kept: \(error.description)")) : nil
            }
            handler.sendDeferred(context: context, answer, to: request, requestID: requestID, started: started, flushesSoon: true)
        }
    }

    // MARK: - Events

    /// Answers SUBSCRIBE with the next event's sequence, then, once that answer is on its
    /// way, registers the stream so no event overtakes it.
    private func subscribe(context: ChannelHandlerContext, requestID: UInt32, after: UInt64?, account: String?, started: UInt64) {
        guard let hub = service.hub else {
            answerError(context: context, frame: Frame(opcode: Opcode.subscribe.rawValue, isResponse: false, requestID: requestID, body: ByteBuffer()),
                WireError(.unavailable, "this server has no event hub"))
            return
        }
        subscribed = true
        let next = service.nextEventSequence
        // Without `after`, the stream starts at the sequence this answer names: events decided
        // between reading it and registering the stream come from the hub's recent ones.
        let after = after ?? (next > 0 ? next - 1 : 0)
        write(context: context, WireResponse.subscribed(nextSequence: next), opcode: .subscribe, requestID: requestID)
        metrics.recordRequest(.subscribe, outcome: "ok", nanoseconds: Int64(NIODeadline.now().uptimeNanoseconds - started))
        let channel = context.channel
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        flush(context: context) {
            if let refusal = hub.subscribe(channel: channel, requestID: requestID, after: after, account: account) {
                loopBound.value.1.eventLoop.execute {
                    let (handler, context) = loopBound.value
                    handler.write(context: context, WireResponse.error(refusal), opcode: .subscribe, requestID: requestID)
                    handler.flush(context: context)
                }
            }
        }
    }

    // MARK: - Access

    /// The names of the client certificate, if the TLS handshake verified one.
    private func peerCertificateNames() -> CertificateNames? {
        guard let certificate = tls?.peerCertificate, let der = try? certificate.toDERBytes() else { return nil }
        return CertificateNames.parse(der: der) ?? CertificateNames(commonName: nil, uris: [])
    }

    /// Resolves (or re-resolves, after a reload) this connection's identity. On refusal the
    /// connection is told `unauthorized` and closed, and nil is returned.
    private func identify(context: ChannelHandlerContext) -> Principal? {
        let (resolution, generation) = access.resolve(certificate: presentedCertificate, tokenDigest: presentedTokenDigest)
        switch resolution {
        case .accepted(let accepted):
            if let previous = principal, previous != accepted {
                logger.notice(
                    "a connection's identity changed with the credentials",
                    metadata: ["from": "\(previous.name) (\(previous.role))", "to": "\(accepted.name) (\(accepted.role))", "remote": "\(remoteDescription(context))"])
            }
            principal = accepted
            principalGeneration = generation
            return accepted
        case .refused(let reason):
            let previous = principal
            principal = nil
            metrics.recordAccessRefusal(.unauthorized, role: previous.map { $0.role.description } ?? "none", reason: previous == nil ? "credential" : "revoked")
            // Logged without the token: only whether one was sent and what the certificate says.
            logger.notice(
                previous == nil ? "refused a connection: \(reason)" : "closed a connection whose credential was withdrawn: \(reason)",
                metadata: [
                    "remote": "\(remoteDescription(context))", "client": "\(clientName)", "certificate": "\(presentedCertificate?.description ?? "none")",
                    "token": "\(presentedTokenDigest == nil ? "none" : "sent")", "previously": "\(previous?.name ?? "none")",
                ])
            fail(context: context, WireError(.unauthorized, reason), requestID: 0)
            return nil
        }
    }

    /// The connection's identity if it may send `request` (checked again first if the
    /// credentials changed); nil when it may not, after answering so.
    private func authorized(context: ChannelHandlerContext, frame: Frame, _ request: WireRequest) -> Principal? {
        if access.generation != principalGeneration {
            guard identify(context: context) != nil else { return nil }
        }
        guard let principal else { return nil }
        let service = service
        if let refusal = principal.refusal(request, parentOf: { service.parent(of: $0) }) {
            refuse(context: context, frame: frame, refusal, request: request)
            return nil
        }
        return principal
    }

    /// A request its identity may not send: answered `forbidden`; the connection stays open.
    private func refuse(context: ChannelHandlerContext, frame: Frame, _ refusal: WireError, request: WireRequest) {
        noteRefusal(context: context, refusal, opcode: request.opcode)
        answerError(context: context, frame: frame, refusal)
    }

    private func noteRefusal(context: ChannelHandlerContext, _ refusal: WireError, opcode: Opcode) {
        let role = principal?.role ?? .read
        metrics.recordAccessRefusal(.forbidden, role: role.description, reason: role.allows(opcode) ? "scope" : "role")
        guard refusalsLogged < 5 else {
            refusalsUnlogged += 1
            return
        }
        refusalsLogged += 1
        logger.notice(
            "forbidden",
            metadata: [
                "identity": "\(principal?.name ?? "none")", "role": "\(role)", "operation": "\(opcode.name)", "reason": "\(refusal.message)",
                "remote": "\(remoteDescription(context))",
            ])
    }

    private func remoteDescription(_ context: ChannelHandlerContext) -> String {
        context.channel.remoteAddress.map { "\($0)" } ?? "?"
    }

    // MARK: - Writing

    /// Answers written since the last flush, encoded back to back as whole frames: one
    /// buffer per connection, kept and reused once the socket has taken its bytes.
    private var outbound = ByteBuffer()
    /// What `outbound` starts with, and the most it keeps between flushes (a larger one, from
    /// a big answer, is let go rather than held for the life of the connection).
    private static let outboundInitialCapacity = 4 << 10
    private static let outboundKeptCapacity = 256 << 10

    private func write(context: ChannelHandlerContext, _ response: WireResponse, opcode: Opcode, requestID: UInt32) {
        response.writeFrame(opcode: opcode, requestID: requestID, to: &outbound)
        unflushed += 1
    }

    private func flush(context: ChannelHandlerContext, then: (@Sendable () -> Void)? = nil) {
        guard unflushed > 0 else {
            then?()
            return
        }
        let count = unflushed
        unflushed = 0
        inFlight += count
        let promise = context.eventLoop.makePromise(of: Void.self)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        promise.futureResult.whenComplete { _ in
            loopBound.value.inFlight -= count
            then?()
        }
        context.writeAndFlush(wrapOutboundOut(outbound), promise: promise)
        // The socket usually took the bytes during the call and let go of the buffer, so this
        // reuses its storage; if it still holds them, `clear` gives this buffer new storage.
        if outbound.capacity > Self.outboundKeptCapacity {
            outbound = context.channel.allocator.buffer(capacity: Self.outboundInitialCapacity)
        } else {
            outbound.clear()
        }
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
        write(context: context, WireResponse.error(error), opcode: opcode, requestID: frame.header.requestID)
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
        write(context: context, WireResponse.error(error), opcode: .error, requestID: requestID)
        flushThenClose(context: context)
    }
}
