import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import TollgateLedger
import TollgateWire

/// One TCP connection to tollgated: frames out, responses matched to requests by id, any
/// number in flight.
final class Connection: Sendable {
    let channel: any Channel
    let handler: ResponseHandler
    let hello: HelloAnswer

    private init(channel: any Channel, handler: ResponseHandler, hello: HelloAnswer) {
        self.channel = channel
        self.handler = handler
        self.hello = hello
    }

    static func open(
        group: any EventLoopGroup, host: String, port: Int, clientName: String, token: String, timeout: TimeAmount,
        tls: (context: NIOSSLContext, serverName: String)?
    ) async throws(TollgateError) -> Connection {
        let handler = ResponseHandler(tls: tls != nil)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(timeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        if let tls {
                            // An IP address is verified against the certificate's IP SANs
                            // and never sent as SNI.
                            let isAddress = (try? SocketAddress(ipAddress: tls.serverName, port: 0)) != nil
                            try sync.addHandler(NIOSSLClientHandler(context: tls.context, serverHostname: isAddress ? nil : tls.serverName))
                        }
                        try sync.addHandler(ByteToMessageHandler(FrameDecoder(maxBodyLength: FrameHeader.largestBody, expectsResponses: true)))
                        try sync.addHandler(MessageToByteHandler(FrameEncoder()))
                        try sync.addHandler(handler)
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            throw .connection("cannot connect to \(host):\(port): \(error)")
        }
        let response = try await handler.send(WireRequest.hello(Hello(clientName: clientName, token: token)), on: channel, timeout: timeout)
        guard case .hello(let hello) = response else {
            channel.close(promise: nil)
            if case .error(let error) = response { throw .server(error) }
            throw .unexpectedResponse("\(response) to HELLO")
        }
        return Connection(channel: channel, handler: handler, hello: hello)
    }

    var isActive: Bool { channel.isActive }

    func send(_ request: WireRequest, timeout: TimeAmount) async throws(TollgateError) -> WireResponse {
        try await handler.send(request, on: channel, timeout: timeout)
    }

    func subscribe(_ request: WireRequest, timeout: TimeAmount, stream: AsyncStream<LedgerEvent>.Continuation) async throws(TollgateError) -> WireResponse {
        try await handler.send(request, on: channel, timeout: timeout, stream: stream)
    }

    func close() async {
        try? await channel.close()
    }
}

/// Matches response frames to the requests waiting for them.
final class ResponseHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = Frame

    private struct State {
        var nextID: UInt32 = 1
        var waiting: [UInt32: CheckedContinuation<WireResponse, any Error>] = [:]
        var closedReason: String?
        /// SUBSCRIBE streams by request id: EVENT frames go there.
        var streams: [UInt32: AsyncStream<LedgerEvent>.Continuation] = [:]
    }

    private let state = Mutex(State())
    private let tls: Bool

    init(tls: Bool) {
        self.tls = tls
    }

    func send(
        _ request: WireRequest, on channel: any Channel, timeout: TimeAmount, stream: AsyncStream<LedgerEvent>.Continuation? = nil
    ) async throws(TollgateError) -> WireResponse {
        do {
            return try await withCheckedThrowingContinuation { continuation in
                let id: UInt32? = state.withLock { state in
                    if let reason = state.closedReason {
                        continuation.resume(throwing: TollgateError.connection(reason))
                        return nil
                    }
                    let id = state.nextID
                    state.nextID &+= 1
                    if state.nextID == 0 { state.nextID = 1 }
                    state.waiting[id] = continuation
                    if let stream { state.streams[id] = stream }
                    return id
                }
                guard let id else { return }
                channel.writeAndFlush(request.frame(requestID: id)).whenFailure { [weak self] error in
                    self?.fail(id, TollgateError.connection("write failed: \(error)"))
                }
                channel.eventLoop.scheduleTask(in: timeout) { [weak self] in
                    self?.fail(id, TollgateError.timeout)
                }
            }
        } catch let error as TollgateError {
            throw error
        } catch {
            throw .connection("\(error)")
        }
    }

    private func fail(_ id: UInt32, _ error: TollgateError) {
        let continuation = state.withLock { $0.waiting.removeValue(forKey: id) }
        continuation?.resume(throwing: error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let response: WireResponse
        do {
            response = try WireResponse.decode(opcode: frame.header.opcode, status: frame.header.status, body: frame.body)
        } catch {
            failAll("undecodable response: \(error)")
            context.close(promise: nil)
            return
        }
        if frame.header.opcode == Opcode.error.rawValue, frame.header.requestID == 0 {
            // Connection-level error: every waiting request hears it.
            if case .error(let error) = response { failAll(error) }
            return
        }
        if case .event(let event) = response {
            _ = state.withLock { $0.streams[frame.header.requestID] }?.yield(event)
            return
        }
        if case .error = response, let stream = state.withLock({ state in
            state.waiting[frame.header.requestID] == nil ? state.streams.removeValue(forKey: frame.header.requestID) : nil
        }) {
            // A subscription the server ended.
            stream.finish()
            return
        }
        let continuation = state.withLock { $0.waiting.removeValue(forKey: frame.header.requestID) }
        continuation?.resume(returning: response)
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll("connection closed")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if tls, error is NIOSSLError || error is BoringSSLError {
            failAll(TollgateError.tls("\(error)"))
            context.close(promise: nil)
            return
        }
        failAll("\(error)")
        context.close(promise: nil)
    }

    private func failAll(_ reason: String) {
        failAll(TollgateError.connection(reason))
    }

    private func failAll(_ error: WireError) {
        failAll(TollgateError.server(error))
    }

    private func failAll(_ error: TollgateError) {
        let (waiting, streams) = state.withLock { state in
            if state.closedReason == nil { state.closedReason = "\(error)" }
            defer {
                state.waiting = [:]
                state.streams = [:]
            }
            return (state.waiting, state.streams)
        }
        for continuation in waiting.values { continuation.resume(throwing: error) }
        for stream in streams.values { stream.finish() }
    }
}
