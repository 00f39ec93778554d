import Foundation
import Logging
import NIOPosix
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

/// SPENDs at `rate` per second on one connection, open loop; latency from each request's due time.
func latency(_ transport: Transport, rate: Int) async throws -> (achieved: Int, p50: Double, p90: Double, p99: Double, p999: Double, max: Double) {
    try await withServer(transport) { port in
        let setup = try await TollgateClient.connect(.init(port: port, tls: transport.client), group: clientGroup)
        _ = try await setup.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch))
        _ = try await setup.apply(.createAccount(CreateAccount(account: "acct")))
        _ = try await setup.apply(.addGrant(AddGrant(account: "acct", amount: 1_000_000_000_000, effectiveAt: .epoch)))
        _ = try await setup.apply(.addMember(account: "acct", member: "m"))
        await setup.close()
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
        return (
            Int(Double(total) / elapsed), percentile(samples, 0.5), percentile(samples, 0.9), percentile(samples, 0.99), percentile(samples, 0.999),
            samples.last!
        )
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
print("| transport | offered/s | achieved/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for rate in [1_000, 5_000, 10_000] {
    for transport in Transport.allCases {
        let r = try await latency(transport, rate: rate)
        print("| \(transport.rawValue) | \(rate) | \(r.achieved) | \(f(r.p50)) | \(f(r.p90)) | \(f(r.p99)) | \(f(r.p999)) | \(f(r.max)) |")
    }
}
try await clientGroup.shutdownGracefully()
