import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import TollgateClient
import TollgateLedger
import TollgateServer
import TollgateWire

// What TLS costs: connections per second (TCP connect, TLS handshake, HELLO, close) and the
// latency of a SPEND at a fixed offered rate, over plaintext, TLS and mTLS, against one
// in-process tollgated (2 event-loop threads, journal none). Certificates (P-256) are made by
// the `openssl` tool in a temporary directory. Latency is open-loop: each request is due at a
// fixed time and measured from then, not from when it was sent.
//   swift run -c release tollgate-tls-bench [seconds-per-rate]

let secondsPerRate = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 5 : 5

@discardableResult
func shell(_ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw ServerError("openssl \(arguments.joined(separator: " ")): \(output)") }
    return output
}

let pki = NSTemporaryDirectory() + "tollgate-tls-bench-\(UUID().uuidString)"
try FileManager.default.createDirectory(atPath: pki, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: pki) }
let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
try shell(["req", "-x509"] + curve + ["-keyout", "\(pki)/ca.key", "-out", "\(pki)/ca.pem", "-days", "1", "-subj", "/CN=bench CA"])
for (name, usage, san) in [("server", "serverAuth", "IP:127.0.0.1"), ("client", "clientAuth", "URI:spiffe://bench/client")] {
    try shell(["req"] + curve + ["-keyout", "\(pki)/\(name).key", "-out", "\(pki)/\(name).csr", "-subj", "/CN=\(name)"])
    try "extendedKeyUsage=\(usage)\nsubjectAltName=\(san)\n".write(toFile: "\(pki)/\(name).ext", atomically: true, encoding: .utf8)
    try shell([
        "x509", "-req", "-in", "\(pki)/\(name).csr", "-CA", "\(pki)/ca.pem", "-CAkey", "\(pki)/ca.key", "-CAcreateserial", "-out", "\(pki)/\(name).pem",
        "-days", "1", "-extfile", "\(pki)/\(name).ext",
    ])
}

enum Transport: String, CaseIterable {
    case plaintext, tls, mtls

    func adjust(_ configuration: inout ServerConfiguration) {
        guard self != .plaintext else { return }
        configuration.tlsCertificateFile = "\(pki)/server.pem"
        configuration.tlsKeyFile = "\(pki)/server.key"
        if self == .mtls { configuration.tlsClientCAFile = "\(pki)/ca.pem" }
    }

    var client: TLSOptions? {
        switch self {
        case .plaintext: nil
        case .tls: TLSOptions(caFile: "\(pki)/ca.pem")
        case .mtls: TLSOptions(caFile: "\(pki)/ca.pem", certificateFile: "\(pki)/client.pem", keyFile: "\(pki)/client.key")
        }
    }
}

func withServer<T>(_ transport: Transport, _ body: (Int) async throws -> T) async throws -> T {
    var configuration = ServerConfiguration()
    configuration.journalMode = .none
    configuration.port = 0
    configuration.adminPort = nil
    configuration.threads = 2
    configuration.maxConnections = 100_000
    configuration.credentials = .open
    configuration.dataDirectory = "\(pki)/data-\(transport.rawValue)"
    transport.adjust(&configuration)
    var logger = Logger(label: "bench")
    logger.logLevel = .error
    let server = TollgateServer(configuration: configuration, logger: logger)
    let group = ServiceGroup(configuration: .init(services: [server], gracefulShutdownSignals: [], logger: logger))
    let task = Task { try await group.run() }
    try await server.waitUntilListening()
    let result = try await body(server.gateAddress!.port!)
    await group.triggerGracefulShutdown()
    try await task.value
    return result
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

/// Connections opened (and closed) per second by `parallel` connectors for `duration`.
func handshakes(_ transport: Transport, parallel: Int) async throws -> (perSecond: Int, p50: Double, p99: Double) {
    try await withServer(transport) { port in
        let deadline = ContinuousClock.now + .seconds(secondsPerRate)
        let started = ContinuousClock.now
        let samples = try await withThrowingTaskGroup(of: [Double].self) { tasks in
            for _ in 0..<parallel {
                tasks.addTask {
                    var samples: [Double] = []
                    while ContinuousClock.now < deadline {
                        let begin = ContinuousClock.now
                        let client = try await TollgateClient.connect(.init(port: port, retries: 0, tls: transport.client), group: clientGroup)
                        samples.append(seconds(ContinuousClock.now - begin) * 1e6)
                        await client.close()
                    }
                    return samples
                }
            }
            var all: [Double] = []
            for try await samples in tasks { all += samples }
            return all.sorted()
        }
        return (Int(Double(samples.count) / seconds(ContinuousClock.now - started)), percentile(samples, 0.5), percentile(samples, 0.99))
    }
}

/// One account with one member and ample credits, for the latency rows.
func prepare(port: Int, _ transport: Transport) async throws {
    let setup = try await TollgateClient.connect(.init(port: port, tls: transport.client), group: clientGroup)
    _ = try await setup.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch))
    _ = try await setup.apply(.createAccount(CreateAccount(account: "acct")))
    _ = try await setup.apply(.addGrant(AddGrant(account: "acct", amount: 1_000_000_000_000, effectiveAt: .epoch)))
    _ = try await setup.apply(.addMember(account: "acct", member: "m"))
    await setup.close()
}

/// A latency row: the rate achieved, percentiles of the sorted samples in µs, and errors.
struct LatencyRow {
    var achieved: Int
    var samples: [Double]
    var errors = "0"

    func markdown(_ transport: Transport, rate: Int) -> String {
        let columns = [0.5, 0.9, 0.99, 0.999].map { f(percentile(samples, $0)) } + [f(samples.last!), errors]
        return "| \(transport.rawValue) | \(rate) | \(achieved) | " + columns.joined(separator: " | ") + " |"
    }
}

/// The open-loop driver: on the connection's own event loop, each SPEND is sent at its due
/// time (a scheduled task per request) and its latency taken from that due time when the
/// answer arrives. No Swift-concurrency hop on the measured path.
final class OpenLoop: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    let rate: Int
    let total: Int
    let warmUp: Int
    var due: [NIODeadline]
    var samples: [Double] = []
    var answered = 0
    var errors = 0
    var firstError: UInt16 = 0
    let done: EventLoopPromise<[Double]>
    var context: ChannelHandlerContext?
    var start = NIODeadline.now()

    init(rate: Int, seconds: Int, done: EventLoopPromise<[Double]>) {
        self.rate = rate
        self.total = rate * (seconds + 1)
        self.warmUp = rate
        self.due = []
        self.done = done
        samples.reserveCapacity(total)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func begin(on loop: any EventLoop) {
        start = .now() + .milliseconds(5)
        let interval = 1_000_000_000 / Int64(rate)
        due = (0..<total).map { start + .nanoseconds(interval * Int64($0)) }
        schedule(0, on: loop)
    }

    private func schedule(_ index: Int, on loop: any EventLoop) {
        guard index < total else { return }
        loop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: due[index]) {
            self.send(index)
            self.schedule(index + 1, on: loop)
        }
    }

    private func send(_ index: Int) {
        guard let context else { return }
        let request = WireRequest.command(.spend(Spend(DecisionRequest(account: "acct", member: "m", product: "p", quantity: 1))), key: "k\(index)")
        context.writeAndFlush(wrapOutboundOut(request.frame(requestID: UInt32(index + 100))), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let index = Int(frame.header.requestID) - 100
        guard index >= 0, index < total else { return }
        if frame.header.status != 0 {
            if errors == 0 { firstError = frame.header.status }
            errors += 1
        }
        if index >= warmUp { samples.append(Double((NIODeadline.now() - due[index]).nanoseconds) / 1_000) }
        answered += 1
        if answered == total { done.succeed(samples.sorted()) }
    }
}

/// SPENDs at `rate` per second on one connection, open loop; latency from each request's due time.
func openLoop(_ transport: Transport, rate: Int) async throws -> LatencyRow {
    try await withServer(transport) { port in
        try await prepare(port: port, transport)
        let loop = clientGroup.next()
        let done = loop.makePromise(of: [Double].self)
        let driver = OpenLoop(rate: rate, seconds: secondsPerRate, done: done)
        let sslContext = try transport.client.map { options -> NIOSSLContext in
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(options.caFile!))
            if let certificate = options.certificateFile, let key = options.keyFile {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            return try NIOSSLContext(configuration: configuration)
        }
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let sslContext { try sync.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: nil)) }
                    try sync.addHandler(ByteToMessageHandler(FrameDecoder(maxBodyLength: 1 << 20, expectsResponses: true)))
                    try sync.addHandler(MessageToByteHandler(FrameEncoder()))
                    try sync.addHandler(driver)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        // HELLO first (answered with request id 1, ignored by the driver), then the load.
        try await channel.writeAndFlush(WireRequest.hello(Hello(clientName: "tls-bench")).frame(requestID: 1))
        try await Task.sleep(for: .milliseconds(50))
        loop.execute { driver.begin(on: loop) }
        let samples = try await done.futureResult.get()
        let elapsed = Double((NIODeadline.now() - driver.start).nanoseconds) / 1e9
        try await channel.close()
        let errors = driver.errors == 0 ? "0" : "\(driver.errors) (status \(driver.firstError))"
        return LatencyRow(achieved: Int(Double(driver.total) / elapsed), samples: samples, errors: errors)
    }
}

/// SPENDs at `rate` per second through TollgateClient (Swift concurrency), open loop.
func latency(_ transport: Transport, rate: Int) async throws -> LatencyRow {
    try await withServer(transport) { port in
        try await prepare(port: port, transport)
        let gate = try await TollgateClient.connect(.init(port: port, retries: 0, tls: transport.client), group: clientGroup)
        // Warm-up: one second at the same rate, not recorded.
        let interval = Duration.nanoseconds(1_000_000_000 / rate)
        let total = rate * (secondsPerRate + 1)
        let warmUp = rate
        let start = ContinuousClock.now + .milliseconds(10)
        let samples = try await withThrowingTaskGroup(of: Double?.self) { tasks in
            for index in 0..<total {
                let due = start + interval * index
                try await Task.sleep(until: due, tolerance: .zero, clock: .continuous)
                tasks.addTask {
                    _ = try await gate.spend(account: "acct", member: "m", product: "p", quantity: 1, key: "k\(index)")
                    return index < warmUp ? nil : seconds(ContinuousClock.now - due) * 1e6
                }
            }
            var all: [Double] = []
            for try await sample in tasks { if let sample { all.append(sample) } }
            return all.sorted()
        }
        let elapsed = seconds(ContinuousClock.now - start)
        await gate.close()
        return LatencyRow(achieved: Int(Double(total) / elapsed), samples: samples)
    }
}

func f(_ value: Double) -> String { String(Int(value.rounded())) }

print("tollgate-tls-bench: \(secondsPerRate) s per row; server 2 event-loop threads, client 1, same process, unpinned; ECDSA P-256, TLS 1.3")
print("")
print("Connections: TCP connect + TLS handshake + HELLO answered, then close; closed loop.")
print("| transport | connectors | connections/s | p50 µs | p99 µs |")
print("|---|---:|---:|---:|---:|")
for parallel in [1, 4] {
    for transport in Transport.allCases {
        let result = try await handshakes(transport, parallel: parallel)
        print("| \(transport.rawValue) | \(parallel) | \(result.perSecond) | \(f(result.p50)) | \(f(result.p99)) |")
    }
}
print("")
print("SPEND on one connection at a fixed offered rate, open loop (latency from the due time), 1 s warm-up not recorded.")
print("Driver: NIO handler on the client's event loop, one scheduled send per request.")
let latencyHeader = """
    | transport | offered/s | achieved/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | errors |
    |---|---:|---:|---:|---:|---:|---:|---:|---:|
    """
print(latencyHeader)
for rate in [1_000, 5_000, 20_000] {
    for transport in Transport.allCases { print(try await openLoop(transport, rate: rate).markdown(transport, rate: rate)) }
}
print("")
print("The same through TollgateClient (async/await per call: what an application sees).")
print(latencyHeader)
for rate in [1_000, 5_000] {
    for transport in Transport.allCases { print(try await latency(transport, rate: rate).markdown(transport, rate: rate)) }
}
try await clientGroup.shutdownGracefully()
