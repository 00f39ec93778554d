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

/// The admin port: `/healthz` (the process is up), `/readyz` (it is taking decisions) and
/// `/metrics` (Prometheus text). Anything else is a 404.
final class AdminHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private let problem: @Sendable () -> String?
    private let refreshGauges: @Sendable () -> Void
    private var path: String?
    private var method: HTTPMethod = .GET
    private var keepAlive = true

    init(registry: PrometheusCollectorRegistry, problem: @escaping @Sendable () -> String?, refreshGauges: @escaping @Sendable () -> Void) {
        self.registry = registry
        self.problem = problem
        self.refreshGauges = refreshGauges
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            method = head.method
            keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            respond(context: context)
        }
    }

    private func respond(context: ChannelHandlerContext) {
        let status: HTTPResponseStatus
        let body: String
        var contentType = "text/plain; charset=utf-8"
        switch (method, path ?? "") {
        case (.GET, "/healthz"), (.HEAD, "/healthz"):
            (status, body) = (.ok, "ok\n")
        case (.GET, "/readyz"), (.HEAD, "/readyz"):
            if let problem = problem() {
                (status, body) = (.serviceUnavailable, "not ready: \(problem)\n")
            } else {
                (status, body) = (.ok, "ready\n")
            }
        case (.GET, "/metrics"):
            refreshGauges()
            contentType = "text/plain; version=0.0.4; charset=utf-8"
            (status, body) = (.ok, registry.emitToString())
        case (_, "/healthz"), (_, "/readyz"), (_, "/metrics"):
            (status, body) = (.methodNotAllowed, "use GET\n")
        default:
            (status, body) = (.notFound, "not found: try /healthz, /readyz or /metrics\n")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        }
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in loopBound.value.close(promise: nil) }
        }
        path = nil
    }
}
