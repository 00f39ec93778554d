import NIOCore
import NIOHTTP1
import Prometheus
import NIOPosix
import Synchronization

/// Whether the server is ready to take decisions: listening, and not shutting down.
public final class Readiness: Sendable {
    private let state = Mutex<String?>("starting")

    public init() {}

    /// `nil` when ready; otherwise why not.
    public var problem: String? { state.withLock { $0 } }

    public func set(notReadyBecause reason: String?) {
        state.withLock { $0 = reason }
    }
}

/// The admin port: `/healthz` (the process is up), `/readyz` (it is taking decisions),
/// `/metrics` (Prometheus text), the read API under `/api/v1/` (JSON, needs a read or admin
/// credential) and the dashboard at `/dashboard` (a page with no data of its own: it reads the
/// API with the credential typed into it). Anything else is a 404.
final class AdminHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private let problem: @Sendable () -> String?
    private let refreshGauges: @Sendable () -> Void
    private let reads: ReadQueue
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry, problem: @escaping @Sendable () -> String?, refreshGauges: @escaping @Sendable () -> Void, reads: ReadQueue) {
        self.registry = registry
        self.problem = problem
        self.refreshGauges = refreshGauges
        self.reads = reads
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            if let head { respond(context: context, head) }
            head = nil
        }
    }

    private func respond(context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        let split = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = split.first.map(String.init) ?? head.uri
        let text = "text/plain; charset=utf-8"
        switch (head.method, path) {
        case (.GET, "/healthz"), (.HEAD, "/healthz"):
            send(context, head, .ok, text, ByteBuffer(string: "ok\n"))
        case (.GET, "/readyz"), (.HEAD, "/readyz"):
            if let problem = problem() {
                send(context, head, .serviceUnavailable, text, ByteBuffer(string: "not ready: \(problem)\n"))
            } else {
                send(context, head, .ok, text, ByteBuffer(string: "ready\n"))
            }
        case (.GET, "/metrics"):
            refreshGauges()
            send(context, head, .ok, "text/plain; version=0.0.4; charset=utf-8", ByteBuffer(string: registry.emitToString()))
        case (.GET, "/"), (.HEAD, "/"):
            send(context, head, .found, text, ByteBuffer(string: "see /dashboard\n"), [("Location", "/dashboard")])
        case (.GET, "/dashboard"), (.HEAD, "/dashboard"):
            // Everything the page needs is in it: no other origin may be asked for anything.
            send(
                context, head, .ok, "text/html; charset=utf-8", ByteBuffer(string: Dashboard.page),
                [("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:")])
        case (_, "/healthz"), (_, "/readyz"), (_, "/metrics"), (_, "/dashboard"):
            send(context, head, .methodNotAllowed, text, ByteBuffer(string: "use GET\n"))
        default:
            guard path == "/api/v1" || path.hasPrefix("/api/v1/") else {
                send(context, head, .notFound, text, ByteBuffer(string: "not found: try /healthz, /readyz, /metrics, /api/v1 or /dashboard\n"))
                return
            }
            // Reads build their JSON on the read thread, not on this event loop, which may have
            // gate connections to answer.
            let query = split.count > 1 ? ReadAPI.query(split[1]) : [:]
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            reads.submit(method: head.method, path: path, query: query, authorization: head.headers.first(name: "Authorization"), on: context.eventLoop) { response in
                let (handler, context) = loopBound.value
                handler.send(context, head, response.status, "application/json", ByteBuffer(bytes: response.body), response.headers + [("Cache-Control", "no-store")])
            }
        }
    }

    private func send(
        _ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ status: HTTPResponseStatus, _ contentType: String, _ body: ByteBuffer,
        _ extra: [(String, String)] = []
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        for (name, value) in extra { headers.add(name: name, value: value) }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        if head.isKeepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in loopBound.value.close(promise: nil) }
        }
    }
}

/// Runs read API requests on their own thread, a bounded number at a time: past `limit`
/// waiting, a read is answered 503 at once rather than queued without end.
final class ReadQueue: Sendable {
    let api: ReadAPI
    let pool: NIOThreadPool
    let limit: Int
    private let waiting = Atomic<Int>(0)

    init(api: ReadAPI, pool: NIOThreadPool, limit: Int = 64) {
        self.api = api
        self.pool = pool
        self.limit = limit
    }

    func submit(
        method: HTTPMethod, path: String, query: [String: String], authorization: String?, on eventLoop: any EventLoop,
        _ done: @escaping @Sendable (ReadAPI.Response) -> Void
    ) {
        guard waiting.wrappingAdd(1, ordering: .relaxed).newValue <= limit else {
            waiting.wrappingSubtract(1, ordering: .relaxed)
            done(ReadAPI.failure(.serviceUnavailable, "more than \(limit) reads are waiting; try again shortly"))
            return
        }
        let api = api
        let future = pool.runIfActive(eventLoop: eventLoop) { api.respond(method: method, path: path, query: query, authorization: authorization) }
        future.whenComplete { [self] result in
            waiting.wrappingSubtract(1, ordering: .relaxed)
            switch result {
            case .success(let response): done(response)
            case .failure: done(ReadAPI.failure(.serviceUnavailable, "the server is shutting down"))
            }
        }
    }
}

/// First on every admin connection, before HTTP: counts it against `adminMaxConnections`;
/// past the limit it writes a 503 itself and closes, so the admin port's descriptors stay
/// bounded apart from the gate's.
final class AdminAdmission: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let limiter: ConnectionLimiter
    private var admitted = false

    init(limiter: ConnectionLimiter) {
        self.limiter = limiter
    }

    func channelActive(context: ChannelHandlerContext) {
        guard limiter.acquire() else {
            let body = "too many admin connections (the limit is \(limiter.maximum)); try again shortly\n"
            let response = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: response))).whenComplete { _ in context.close(promise: nil) }
            return
        }
        admitted = true
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if admitted {
            admitted = false
            limiter.release()
            context.fireChannelInactive()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if admitted { context.fireChannelRead(data) }
    }
}

/// On every admitted admin connection: closes it when a request takes longer than the timeout
/// to arrive whole, or when it sits idle that long between requests. A response being
/// prepared does not count as idle. Slow or stuck clients cannot pile up descriptors.
final class AdminConnectionGuard: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let timeout: TimeAmount
    private var answering = 0
    private var lastActivity = NIODeadline.now()
    private var check: RepeatedTask?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard check == nil else { return }
        lastActivity = .now()
        let period = TimeAmount.nanoseconds(max(timeout.nanoseconds / 4, 10_000_000))
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        check = context.eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { _ in
            let (handler, context) = loopBound.value
            if handler.answering == 0 && NIODeadline.now() - handler.lastActivity >= handler.timeout {
                context.close(promise: nil)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = unwrapInboundIn(data) {
            answering += 1
            lastActivity = .now()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            answering = max(0, answering - 1)
            lastActivity = .now()
        }
        context.write(data, promise: promise)
    }
}
