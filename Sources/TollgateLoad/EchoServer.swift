import ArgumentParser
import NIOCore
import NIOPosix
import TollgateWire

/// The floor: a server that answers every Tollgate frame by sending it back with the response
/// flag set, after the same framing work and nothing else. The generator measures it exactly as
/// it measures tollgated.
struct EchoServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "echo-server", abstract: "Answer every frame with itself (the latency floor).")
    @Option var host = "127.0.0.1"
    @Option var port = 7499
    @Option(help: "Event-loop threads.") var threads = 1

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(ByteToMessageHandler(FrameDecoder(maxBodyLength: FrameHeader.largestBody, expectsResponses: false)))
                    try sync.addHandler(MessageToByteHandler(FrameEncoder()))
                    try sync.addHandler(Echo())
                }
            }
            .bind(host: host, port: port).get()
        print("echo server on \(channel.localAddress!)")
        try await channel.closeFuture.get()
    }

    final class Echo: ChannelInboundHandler, Sendable {
        typealias InboundIn = Frame
        typealias OutboundOut = Frame

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            context.write(wrapOutboundOut(Frame(opcode: frame.header.opcode, isResponse: true, status: 0, requestID: frame.header.requestID, body: frame.body)), promise: nil)
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            context.flush()
        }
    }
}
