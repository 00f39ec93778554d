import NIOCore
import NIOPosix
import Synchronization

/// A TCP proxy between a node and one etcd member that a test can cut, to make partitions
/// without root: `.blackhole` drops everything both ways (connections stay open and silent,
/// as across a dead link), `.dropReplies` lets requests through and drops etcd's answers (a
/// one-way partition: etcd applies what the node sends, the node never hears back).
final class PartitionProxy: Sendable {
    enum Mode: UInt8 {
        case open = 0
        case blackhole = 1
        case dropReplies = 2
    }

    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let mode = Atomic<UInt8>(Mode.open.rawValue)
    private let listener = Mutex<(any Channel)?>(nil)
    let target: (host: String, port: Int)

    init(to host: String, port: Int) {
        self.target = (host, port)
    }

    var current: Mode { Mode(rawValue: mode.load(ordering: .relaxed)) ?? .open }

    func set(_ mode: Mode) { self.mode.store(mode.rawValue, ordering: .relaxed) }

    /// Listens on a free loopback port; returns it.
    func start() async throws -> Int {
        let target = self.target
        let proxy = self
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { inbound in
                ClientBootstrap(group: inbound.eventLoop)
                    .connect(host: target.host, port: target.port)
                    .flatMap { outbound in
                        let toTarget = Relay(proxy: proxy, towardsTarget: true)
                        let toClient = Relay(proxy: proxy, towardsTarget: false)
                        toTarget.peer = outbound
                        toClient.peer = inbound
                        return inbound.pipeline.addHandler(toTarget).flatMap {
                            outbound.pipeline.addHandler(toClient)
                        }.map {
                            inbound.read()
                        }
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        listener.withLock { $0 = channel }
        return channel.localAddress?.port ?? 0
    }

    func stop() {
        listener.withLock { $0 }?.close(promise: nil)
        try? group.syncShutdownGracefully()
    }

    func drops(towardsTarget: Bool) -> Bool {
        switch current {
        case .open: false
        case .blackhole: true
        case .dropReplies: !towardsTarget
        }
    }

    /// Reads one side and writes to the other, unless the proxy drops that direction.
    final class Relay: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let proxy: PartitionProxy
        let towardsTarget: Bool
        var peer: (any Channel)?

        init(proxy: PartitionProxy, towardsTarget: Bool) {
            self.proxy = proxy
            self.towardsTarget = towardsTarget
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !proxy.drops(towardsTarget: towardsTarget) else { return }
            peer?.writeAndFlush(data, promise: nil)
        }

        func channelActive(context: ChannelHandlerContext) {
            context.read()
            context.fireChannelActive()
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            context.read()
        }

        func channelInactive(context: ChannelHandlerContext) {
            peer?.close(promise: nil)
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
