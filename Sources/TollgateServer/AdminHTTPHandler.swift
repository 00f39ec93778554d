import NIOCore
import NIOHTTP1
import Prometheus
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
    private let readAPI: ReadAPI
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry, problem: @escaping @Sendable () -> String?, refreshGauges: @escaping @Sendable () -> Void, readAPI: ReadAPI) {
        self.registry = registry
        self.problem = problem
        self.refreshGauges = refreshGauges
        self.readAPI = readAPI
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
        let method = head.method
        var status = HTTPResponseStatus.ok
        var body = ByteBuffer()
        var contentType = "text/plain; charset=utf-8"
        var extra: [(String, String)] = []
        switch (method, path) {
        case (.GET, "/healthz"), (.HEAD, "/healthz"):
            body = ByteBuffer(string: "ok\n")
        case (.GET, "/readyz"), (.HEAD, "/readyz"):
            if let problem = problem() {
                (status, body) = (.serviceUnavailable, ByteBuffer(string: "not ready: \(problem)\n"))
            } else {
                body = ByteBuffer(string: "ready\n")
            }
        case (.GET, "/metrics"):
            refreshGauges()
            contentType = "text/plain; version=0.0.4; charset=utf-8"
            body = ByteBuffer(string: registry.emitToString())
        case (.GET, "/"), (.HEAD, "/"):
            (status, body) = (.found, ByteBuffer(string: "see /dashboard\n"))
            extra.append(("Location", "/dashboard"))
        case (.GET, "/dashboard"), (.HEAD, "/dashboard"):
            contentType = "text/html; charset=utf-8"
            body = ByteBuffer(string: Dashboard.page)
            // Everything the page needs is in it: no other origin may be asked for anything.
            extra.append(("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:"))
        case (_, "/healthz"), (_, "/readyz"), (_, "/metrics"), (_, "/dashboard"):
            (status, body) = (.methodNotAllowed, ByteBuffer(string: "use GET\n"))
        default:
            if path == "/api/v1" || path.hasPrefix("/api/v1/") {
                let query = split.count > 1 ? ReadAPI.query(split[1]) : [:]
                let response = readAPI.respond(method: method, path: path, query: query, authorization: head.headers.first(name: "Authorization"))
                status = response.status
                body = ByteBuffer(bytes: response.body)
                contentType = "application/json"
                extra = response.headers + [("Cache-Control", "no-store")]
            } else {
                (status, body) = (.notFound, ByteBuffer(string: "not found: try /healthz, /readyz, /metrics, /api/v1 or /dashboard\n"))
            }
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        for (name, value) in extra { headers.add(name: name, value: value) }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if method != .HEAD {
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
