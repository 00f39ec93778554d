import NIOCore
import NIOHTTP1
import NIOPosix

/// One request to etcd's JSON gateway: a POST of a JSON body to a `/v3/...` path.
struct EtcdHTTPRequest {
    var path: String
    var body: ByteBuffer
    /// For a unary call: the whole response body once it has ended.
    var reply: EventLoopPromise<EtcdHTTPReply>?
    /// For a stream (a watch): each complete JSON message as it arrives, on the channel's loop.
    var messages: (@Sendable (ByteBuffer) -> Void)?
    /// Extra headers: `Grpc-Metadata-*` headers reach etcd as gRPC metadata.
    var headers: [(String, String)] = []
}

/// A response: the HTTP status and the body.
struct EtcdHTTPReply: Sendable {
    var status: Int
    var body: ByteBuffer
}

/// HTTP/1.1 to one etcd member. Requests are written in order and answered in order (etcd's
/// gateway is Go's HTTP server, which answers a connection's requests one after another). A
/// stream request (a watch) takes the connection for itself: its body is a sequence of JSON
/// messages separated by newlines, delivered one by one.
final class EtcdHTTPHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = EtcdHTTPRequest
    typealias OutboundOut = HTTPClientRequestPart

    private struct Waiting {
        var reply: EventLoopPromise<EtcdHTTPReply>?
        var messages: (@Sendable (ByteBuffer) -> Void)?
    }

    private let host: String
    private var waiting = CircularBuffer<Waiting>()
    private var status = 0
    private var body = ByteBuffer()
    /// Messages longer than this end the stream: a bound on what one watch response may hold.
    static let messageBytesMax = 64 << 20

    init(host: String) {
        self.host = host
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        waiting.append(Waiting(reply: request.reply, messages: request.messages))
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: request.path)
        head.headers.add(name: "Host", value: host)
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Content-Length", value: String(request.body.readableBytes))
        for (name, value) in request.headers { head.headers.add(name: name, value: value) }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(request.body))), promise: nil)
        context.write(wrapOutboundOut(.end(nil)), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            body.clear()
        case .body(var part):
            if let first = waiting.first, let messages = first.messages {
                body.writeBuffer(&part)
                deliverLines(to: messages, context: context)
            } else {
                body.writeBuffer(&part)
            }
        case .end:
            guard let first = waiting.popFirst() else {
                context.close(promise: nil)
                return
            }
            if let messages = first.messages, body.readableBytes > 0 {
                messages(body)
                body.clear()
            }
            first.reply?.succeed(EtcdHTTPReply(status: status, body: body))
            body = ByteBuffer()
            if first.messages != nil { context.close(promise: nil) }
        }
    }

    private func deliverLines(to messages: @Sendable (ByteBuffer) -> Void, context: ChannelHandlerContext) {
        while let newline = body.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - body.readerIndex
            if length > 0, let line = body.readSlice(length: length) { messages(line) }
            body.moveReaderIndex(forwardBy: 1)
        }
        body.discardReadBytes()
        if body.readableBytes > Self.messageBytesMax { context.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(EtcdError(.unreachable, "etcd at \(host): \(error)"))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(EtcdError(.unreachable, "etcd at \(host) closed the connection"))
        context.fireChannelInactive()
    }

    private func failAll(_ error: EtcdError) {
        while let first = waiting.popFirst() { first.reply?.fail(error) }
    }
}

/// One connection to one etcd member.
final class EtcdConnection: Sendable {
    let channel: any Channel
    let endpoint: EtcdEndpoint

    private init(channel: any Channel, endpoint: EtcdEndpoint) {
        self.channel = channel
        self.endpoint = endpoint
    }

    static func connect(to endpoint: EtcdEndpoint, on loop: any EventLoop, timeout: TimeAmount) -> EventLoopFuture<EtcdConnection> {
        ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(EtcdHTTPHandler(host: "\(endpoint.host):\(endpoint.port)"))
                }
            }
            .connect(host: endpoint.host, port: endpoint.port)
            .map { EtcdConnection(channel: $0, endpoint: endpoint) }
            .flatMapErrorThrowing { error in
                throw EtcdError(.unreachable, "cannot connect to etcd at \(endpoint): \(error)")
            }
    }

    var isActive: Bool { channel.isActive }

    /// Sends a unary request; fails after `deadline`, closing the connection (its answers
    /// would be out of step otherwise).
    func call(_ path: String, _ body: ByteBuffer, deadline: NIODeadline) -> EventLoopFuture<EtcdHTTPReply> {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: EtcdHTTPReply.self)
        let channel = self.channel
        let endpoint = self.endpoint
        let timer = loop.scheduleTask(deadline: deadline) {
            promise.fail(EtcdError(.timeout, "etcd at \(endpoint) did not answer \(path) in time"))
            channel.close(promise: nil)
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        channel.writeAndFlush(EtcdHTTPRequest(path: path, body: body, reply: promise, messages: nil)).whenFailure { error in
            promise.fail(EtcdError(.unreachable, "cannot send to etcd at \(endpoint): \(error)"))
        }
        return promise.futureResult
    }

    /// Starts a stream on this connection (which it then owns). `messages` gets each JSON
    /// message; the returned future completes when the stream ends, for any reason.
    func stream(_ path: String, _ body: ByteBuffer, headers: [(String, String)], messages: @escaping @Sendable (ByteBuffer) -> Void) -> EventLoopFuture<Void> {
        let promise = channel.eventLoop.makePromise(of: EtcdHTTPReply.self)
        channel.writeAndFlush(EtcdHTTPRequest(path: path, body: body, reply: promise, messages: messages, headers: headers)).whenFailure { error in
            promise.fail(error)
        }
        return promise.futureResult.map { _ in }
    }

    func close() {
        channel.close(promise: nil)
    }
}
