import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization
import TollgateLedger

/// Posts each event, in order, to the webhook URL as JSON (see `EventJSON`), with the event's
/// id in the body and in `Idempotency-Key`. A 2xx answer delivers it; anything else, or no
/// answer within the timeout, is retried with backoff (0.2 s doubling to 30 s) until it is
/// delivered. The cursor (the last sequence delivered) is written to a file after each
/// delivery, so a restart resumes there: at least once, in order, never a gap.
final class WebhookDelivery: Sendable {
    struct Target: Sendable {
        var host: String
        var port: Int
        var path: String
        var tls: Bool
    }

    private struct State {
        var queue: [LedgerEvent] = []
        var cursor: UInt64 = 0
        var stopped = false
        /// Held (a cluster's follower): events queue up but are not posted.
        var paused = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    let url: String
    let target: Target?
    private let cursorFile: String?
    private let timeout: TimeAmount
    private let logger: Logger
    private let metrics: ServerMetrics
    private let state = Mutex(State())
    /// Events waiting beyond this are dropped (oldest first) and counted: the webhook is
    /// down for that long, and the event log still has them.
    let queueMax = 100_000

    init(url: String, cursorFile: String?, timeoutMilliseconds: Int64, logger: Logger, metrics: ServerMetrics) {
        self.url = url
        self.target = WebhookDelivery.parse(url)
        self.cursorFile = cursorFile
        self.timeout = .milliseconds(timeoutMilliseconds)
        self.logger = logger
        self.metrics = metrics
    }

    /// `http://host[:port]/path` or `https://…`.
    static func parse(_ url: String) -> Target? {
        let tls: Bool
        var rest: Substring
        if url.hasPrefix("http://") {
            tls = false
            rest = url.dropFirst(7)
        } else if url.hasPrefix("https://") {
            tls = true
            rest = url.dropFirst(8)
        } else {
            return nil
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let path = slash == rest.endIndex ? "/" : String(rest[slash...])
        rest = authority
        var host = String(authority)
        var port = tls ? 443 : 80
        if let colon = authority.lastIndex(of: ":"), let number = Int(authority[authority.index(after: colon)...]) {
            host = String(authority[..<colon])
            port = number
        }
        guard !host.isEmpty, (1...65_535).contains(port) else { return nil }
        return Target(host: host, port: port, path: path, tls: tls)
    }

    func load(backlog: [LedgerEvent]) {
        var cursor: UInt64 = 0
        if let file = cursorFile, let text = try? String(contentsOfFile: file, encoding: .utf8), let value = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            cursor = value
        }
        state.withLock { state in
            state.cursor = cursor
            state.queue = Array(backlog.filter { $0.sequence > cursor }.suffix(queueMax))
        }
    }

    func enqueue(_ events: [LedgerEvent]) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            let fresh = events.filter { $0.sequence > state.cursor && $0.sequence > (state.queue.last?.sequence ?? 0) }
            state.queue.append(contentsOf: fresh)
            if state.queue.count > queueMax {
                let dropped = state.queue.count - queueMax
                state.queue.removeFirst(dropped)
                logger.error("webhook backlog over \(queueMax): dropped the oldest \(dropped) (they stay in the event log)")
            }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Holds deliveries (true) or lets them go on (false).
    func setPaused(_ paused: Bool) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            state.paused = paused
            defer { state.waiter = nil }
            return paused ? nil : state.waiter
        }
        waiter?.resume()
    }

    func stop() {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            state.stopped = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    func run() async {
        guard let target else {
            logger.error("the webhook URL \(url) is not http:// or https://; events are not posted")
            return
        }
        var failures = 0
        while true {
            let next: LedgerEvent?? = state.withLock { state in
                if state.stopped { return .some(nil) }
                if state.paused { return nil }
                return state.queue.first.map { .some($0) } ?? nil
            }
            switch next {
            case .some(.none):
                return
            case .none:
                await withCheckedContinuation { continuation in
                    let resumeNow = state.withLock { state in
                        if state.stopped || (!state.queue.isEmpty && !state.paused) { return true }
                        state.waiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            case .some(.some(let event)):
                let outcome = await post(event, to: target)
                if let status = outcome, (200..<300).contains(status) {
                    failures = 0
                    await delivered(event)
                    metrics.recordWebhook(succeeded: true)
                } else {
                    failures += 1
                    metrics.recordWebhook(succeeded: false)
                    let delay = min(30_000, 200 << min(failures - 1, 8))
                    if failures == 1 || failures % 10 == 0 {
                        logger.warning(
                            "webhook delivery failed; retrying", metadata: ["url": "\(url)", "event": "\(event.sequence)", "status": "\(outcome.map(String.init) ?? "no answer")", "attempt": "\(failures)"])
                    }
                    try? await Task.sleep(for: .milliseconds(delay))
                }
            }
        }
    }

    private func delivered(_ event: LedgerEvent) async {
        state.withLock { state in
            state.cursor = event.sequence
            if state.queue.first?.sequence == event.sequence { state.queue.removeFirst() }
        }
        guard let file = cursorFile else { return }
        // The cursor's fsync waits for the disk: on NIO's blocking-I/O pool, not the Swift
        // concurrency pool.
        try? await NIOThreadPool.singleton.runIfActive { Self.writeCursor(event.sequence, to: file) }
    }

    private static func writeCursor(_ sequence: UInt64, to file: String) {
        // Written beside and renamed over, so a crash leaves the old cursor or the new one.
        let temporary = file + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let text = Array("\(sequence)\n".utf8)
        _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        fsync(fd)
        close(fd)
        rename(temporary, file)
    }

    /// One POST; the response status, or nil if there was none in time.
    private func post(_ event: LedgerEvent, to target: Target) async -> Int? {
        let body = EventJSON.encode(event)
        let group = MultiThreadedEventLoopGroup.singleton
        let collector = StatusCollector(promise: group.next().makePromise(of: Int.self))
        let timeout = self.timeout
        do {
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(timeout)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        if target.tls {
                            let context = try NIOSSLContext(configuration: .makeClientConfiguration())
                            try sync.addHandler(NIOSSLClientHandler(context: context, serverHostname: target.host))
                        }
                        try sync.addHTTPClientHandlers()
                        try sync.addHandler(collector)
                    }
                }
                .connect(host: target.host, port: target.port).get()
            defer { channel.close(promise: nil) }
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: target.path)
            head.headers.add(name: "Host", value: target.host)
            head.headers.add(name: "Content-Type", value: "application/json")
            head.headers.add(name: "Content-Length", value: String(body.count))
            head.headers.add(name: "Idempotency-Key", value: "tollgate-event-\(event.sequence)")
            head.headers.add(name: "User-Agent", value: "tollgated")
            head.headers.add(name: "Connection", value: "close")
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
            try await channel.writeAndFlush(HTTPClientRequestPart.end(nil)).get()
            let timer = channel.eventLoop.scheduleTask(in: timeout) { collector.fail() }
            defer { timer.cancel() }
            return try await collector.promise.futureResult.get()
        } catch {
            return nil
        }
    }
}

/// Completes with the status of the first response head, or fails when the connection ends.
final class StatusCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart
    let promise: EventLoopPromise<Int>
    private let completed = Atomic<Bool>(false)

    init(promise: EventLoopPromise<Int>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data), !completed.exchange(true, ordering: .relaxed) { promise.succeed(Int(head.status.code)) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail()
        context.close(promise: nil)
    }

    func fail() {
        if !completed.exchange(true, ordering: .relaxed) { promise.fail(ServerError("no answer")) }
    }
}
