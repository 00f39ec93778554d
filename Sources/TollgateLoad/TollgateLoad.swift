import ArgumentParser
import Foundation
import Histogram
import NIOCore
import NIOPosix
import NIOSSL
import TollgateClient
import TollgateLedger
import TollgateWire

#if canImport(Glibc)
import Glibc
#endif

/// `tollgate-load`: the measuring instrument of bench/ (README there says how it is used).
@main
struct TollgateLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tollgate-load", abstract: "Drive tollgated (or the echo floor) and report latency and throughput.",
        subcommands: [Run.self, Setup.self, EchoServer.self, Plot.self, FsyncProbe.self, EtcdProbe.self])
}

struct Target: ParsableArguments {
    @Option(help: "HOST:PORT of tollgated or of `tollgate-load echo-server`.") var server = "127.0.0.1:7400"
    @Option(help: "Token for HELLO.") var token = ""
    @Option(help: "Token file (read if --token is not given).") var tokenFile: String?
    @Option(help: "CA bundle: speak TLS to the server.") var tlsCa: String?

    func validate() throws {
        guard let colon = server.lastIndex(of: ":"), colon != server.startIndex, let port = Int(server[server.index(after: colon)...]),
            (1...65_535).contains(port)
        else { throw ValidationError("--server is HOST:PORT, e.g. 127.0.0.1:7400 (got \"\(server)\")") }
    }

    /// Checked by `validate()` before any command runs.
    var hostPort: (String, Int) {
        let colon = server.lastIndex(of: ":")!
        return (String(server[..<colon]), Int(server[server.index(after: colon)...])!)
    }

    var resolvedToken: String {
        if !token.isEmpty { return token }
        if let file = tokenFile, let text = try? String(contentsOfFile: file, encoding: .utf8) { return text.trimmingCharacters(in: .whitespacesAndNewlines) }
        return ""
    }
}

struct Setup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create the accounts a scenario uses: acct-0… with members m0…, rate p = 1, ample credits.")
    @OptionGroup var target: Target
    @Option var accounts = 1
    @Option var members = 64
    @Option(help: "Credits per account.") var credits: Int64 = 1_000_000_000_000
    @Option(help: "Requests in flight while setting up.") var parallel = 256
    @Flag(help: "Set up Redis instead (the baselines): a pool key per account.") var redis = false

    func run() async throws {
        let (host, port) = target.hostPort
        if redis {
            let collector = RESPCollector()
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPDecoder()))
                        try channel.pipeline.syncOperations.addHandler(collector)
                    }
                }
                .connect(host: host, port: port).get()
            _ = try await collector.command(["FLUSHALL"], on: channel).get()
            var index = 0
            while index < accounts {
                let chunk = (index..<min(accounts, index + 1_000)).map { i in ["pool:\(Workload.accountName(i))", String(credits)] }
                _ = try await collector.command(["MSET"] + chunk.flatMap { $0 }, on: channel).get()
                index += 1_000
            }
            try await channel.close()
            print("set up \(accounts) Redis pools of \(credits) credits")
            return
        }
        let tls = target.tlsCa.map { TLSOptions(caFile: $0) }
        let client = try await TollgateClient.connect(.init(host: host, port: port, token: target.resolvedToken, connections: 4, tls: tls))
        _ = try await client.apply(.setRate(product: Workload.product, creditsPerUnit: 1, effectiveAt: .epoch), key: "load-setup-rate")
        let plan = Plan(name: "load-\(members)-\(credits)", grants: [PlanGrant(amount: credits, source: .manual)])
        _ = try await client.apply(.definePlan(plan), key: "load-setup-plan-\(members)-\(credits)")
        let memberNames = (0..<members).map(Workload.memberName)
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = 0
            func add() {
                let index = next
                next += 1
                group.addTask {
                    do {
                        _ = try await client.apply(
                            .provision(Provision(account: Workload.accountName(index), plan: plan.name, members: memberNames)), key: "load-setup-\(members)-\(index)")
                    } catch let error as TollgateError {
                        guard case .refused(let refusal) = error, refusal.error.code == .alreadyExists else { throw error }
                    }
                }
            }
            for _ in 0..<min(parallel, accounts) { add() }
            while try await group.next() != nil { if next < accounts { add() } }
        }
        await client.close()
        print("set up \(accounts) accounts × \(members) members in \(ContinuousClock.now - started)")
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open loop at --rate (latency from each request's due time), or --closed for saturation throughput.")
    @OptionGroup var target: Target
    @Option(help: "Offered requests per second in all (open loop).") var rate: Double = 1_000
    @Flag(help: "Poisson arrivals (default: constant spacing).") var poisson = false
    @Flag(help: "Closed loop: each connection keeps --depth requests in flight; reports saturation throughput.") var closed = false
    @Option(help: "Requests in flight per connection (closed loop).") var depth = 16
    @Option var connections = 1
    @Option(help: "Seconds measured.") var duration: Double = 10
    @Option(help: "Seconds run first and not recorded.") var warmUp: Double = 2
    @Option(help: "hot, uniform or zipf.") var accounts = "hot"
    @Option(help: "Accounts the scenario spreads over (uniform, zipf).") var accountCount = 1
    @Option var members = 64
    @Option(help: "spend, check, reserve-commit, mixed or ping.") var operation = "spend"
    @Option(help: "Decisions per frame (BATCH when more than 1).") var batch = 1
    @Option(help: "Requests a connection may have unanswered before it skips a due one (counted).") var maxOutstanding = 10_000
    @Option(help: "Event-loop threads of the generator.") var threads = 1
    @Option(help: "Seed of the request sequence.") var seed: UInt64 = 1
    @Option(help: "A label for the report.") var label = ""
    @Option(help: "tollgate, redis-lua (the same decision in Lua scripts) or redis-naive (GET, then DECRBY).") var `protocol` = "tollgate"
    @Flag(help: "Print the report as JSON.") var json = false

    func run() async throws {
        guard let accountsKind = Workload.Accounts(rawValue: accounts) else { throw ValidationError("--accounts is hot, uniform or zipf") }
        guard let operationKind = Workload.Operation(rawValue: operation) else { throw ValidationError("--operation is spend, check, reserve-commit, mixed or ping") }
        let workload = Workload(
            accounts: accountsKind, accountCount: max(1, accountCount), membersPerAccount: members, operation: operationKind, batch: max(1, batch))
        let zipf = accountsKind == .zipf ? RequestSource.zipfTable(count: workload.accountCount, exponent: workload.zipfExponent) : []
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let (host, port) = target.hostPort
        let sslContext = try target.tlsCa.map { ca -> NIOSSLContext in
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
            return try NIOSSLContext(configuration: configuration)
        }
        let token = target.resolvedToken
        let startAt = NIODeadline.now() + .milliseconds(200)
        let warmUpEnd = startAt + .nanoseconds(Int64(warmUp * 1e9))
        let end = warmUpEnd + .nanoseconds(Int64(duration * 1e9))
        var handlers: [(start: @Sendable () -> Void, complete: @Sendable () -> Void, channel: any Channel, finished: EventLoopFuture<Measured>)] = []
        for connection in 0..<connections {
            let loop = group.next()
            let finished = loop.makePromise(of: Measured.self)
            let hello = loop.makePromise(of: UInt16.self)
            let mode: Pacer.Mode = closed ? .closed(depth: depth) : .open(ratePerSecond: rate / Double(connections), poisson: poisson)
            let pacer = Pacer(mode: mode, warmUpEnd: warmUpEnd, end: end, maxOutstanding: maxOutstanding, finished: finished)
            let source = RequestSource(workload: workload, connection: connection, seed: seed, zipf: zipf)
            if let flavour = RedisLoadHandler.Flavour(rawValue: `protocol`) {
                let handler = RedisLoadHandler(flavour: flavour, pacer: pacer, source: source, ready: hello)
                let channel = try await ClientBootstrap(group: loop)
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPDecoder()))
                            try channel.pipeline.syncOperations.addHandler(handler)
                        }
                    }
                    .connect(host: host, port: port).get()
                loop.execute { handler.loadScripts() }
                guard try await hello.futureResult.get() == 0 else { throw ValidationError("Redis refused SCRIPT LOAD") }
                handlers.append(({ loop.execute { handler.start(at: startAt) } }, { loop.execute { pacer.complete() } }, channel, finished.futureResult))
                continue
            }
            guard `protocol` == "tollgate" else { throw ValidationError("--protocol is tollgate, redis-lua or redis-naive") }
            let handler = LoadHandler(pacer: pacer, source: source, hello: hello)
            let channel = try await ClientBootstrap(group: loop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        if let sslContext { try sync.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: nil)) }
                        try sync.addHandler(ByteToMessageHandler(FrameDecoder(maxBodyLength: FrameHeader.largestBody, expectsResponses: true)))
                        try sync.addHandler(MessageToByteHandler(FrameEncoder()))
                        try sync.addHandler(handler)
                    }
                }
                .connect(host: host, port: port).get()
            try await channel.writeAndFlush(WireRequest.hello(Hello(clientName: "tollgate-load", token: token)).frame(requestID: 1))
            let status = try await hello.futureResult.get()
            guard status == 0 else { throw ValidationError("HELLO refused with status \(status)") }
            handlers.append(({ loop.execute { handler.start(at: startAt) } }, { loop.execute { pacer.complete() } }, channel, finished.futureResult))
        }
        for handler in handlers { handler.start() }
        FileHandle.standardError.write(Data("tollgate-load: running: \(warmUp) s of warm-up, then \(duration) s measured\n".utf8))
        // Wait for the run and the last answers (at most 10 s after the end).
        let deadline = end + .seconds(10)
        var total = Measured()
        for handler in handlers {
            let complete = handler.complete
            let timer = handler.channel.eventLoop.scheduleTask(deadline: deadline) { complete() }
            total.add(try await handler.finished.get())
            timer.cancel()
            try? await handler.channel.close()
        }
        try await group.shutdownGracefully()
        let report = Report(
            label: label.isEmpty ? `protocol` : label, mode: closed ? "closed(depth \(depth))" : "open(\(poisson ? "poisson" : "constant"))", offered: closed ? nil : rate,
            seconds: duration, connections: connections, batch: workload.batch, operation: operation, accounts: accounts, accountCount: workload.accountCount,
            measured: total, cpus: Self.allowedCPUs())
        print(json ? report.json : report.text)
    }

    /// The CPUs this process may run on (taskset), from /proc/self/status.
    static func allowedCPUs() -> String {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") })
        else { return "?" }
        return line.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces)
    }
}

/// What a run found.
struct Report: Encodable {
    var label: String
    var mode: String
    var offered: Double?
    var seconds: Double
    var connections: Int
    var batch: Int
    var operation: String
    var accounts: String
    var accountCount: Int
    var cpus: String
    var sent: Int
    var answered: Int
    var skipped: Int
    var achievedRequestsPerSecond: Double
    var achievedDecisionsPerSecond: Double
    var corrected: Percentiles
    var uncorrected: Percentiles
    var errors: [String: Int]
    /// The corrected latency (µs) at percentiles 50 … 100, for plots.
    var distribution: [[Double]]

    struct Percentiles: Encodable {
        var p50: Double
        var p90: Double
        var p99: Double
        var p999: Double
        var max: Double

        /// In microseconds.
        init(_ histogram: Histogram<UInt64>) {
            func µs(_ value: UInt64) -> Double { (Double(value) / 1_000).rounded() }
            p50 = µs(histogram.valueAtPercentile(50))
            p90 = µs(histogram.valueAtPercentile(90))
            p99 = µs(histogram.valueAtPercentile(99))
            p999 = µs(histogram.valueAtPercentile(99.9))
            max = µs(histogram.max)
        }
    }

    init(
        label: String, mode: String, offered: Double?, seconds: Double, connections: Int, batch: Int, operation: String, accounts: String, accountCount: Int,
        measured: Measured, cpus: String
    ) {
        self.label = label
        self.mode = mode
        self.offered = offered
        self.seconds = seconds
        self.connections = connections
        self.batch = batch
        self.operation = operation
        self.accounts = accounts
        self.accountCount = accountCount
        self.cpus = cpus
        sent = measured.sent
        answered = measured.answered
        skipped = measured.skipped
        let recorded = Double(measured.corrected.totalCount)
        achievedRequestsPerSecond = (recorded / seconds).rounded()
        achievedDecisionsPerSecond = (Double(measured.decisions) / seconds).rounded()
        corrected = Percentiles(measured.corrected)
        uncorrected = Percentiles(measured.uncorrected)
        errors = Dictionary(uniqueKeysWithValues: measured.errors.map { (status, count) in (Report.statusName(status), count) })
        distribution = Report.plotted.map { [$0, (Double(measured.corrected.valueAtPercentile($0)) / 1_000).rounded()] }
    }

    static let plotted: [Double] = [50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100]

    static func statusName(_ status: UInt16) -> String {
        if let code = LedgerError.Code(rawValue: status) { return code.identifier }
        if let status = ProtocolStatus(rawValue: status) { return status.name }
        return "status \(status)"
    }

    var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }

    var text: String {
        let offeredText = offered.map { "offered \(Int($0))/s, " } ?? ""
        var lines = [
            "\(label.isEmpty ? "" : label + ": ")\(mode), \(operation) on \(accounts) (\(accountCount) accounts), \(connections) connections, batch \(batch), generator CPUs \(cpus)",
            "\(offeredText)achieved \(Int(achievedRequestsPerSecond)) requests/s, \(Int(achievedDecisionsPerSecond)) decisions/s over \(seconds) s; sent \(sent), answered \(answered), skipped \(skipped)",
            "latency µs        p50      p90      p99    p99.9      max",
        ]
        func row(_ name: String, _ p: Percentiles) -> String {
            name.padding(toLength: 13, withPad: " ", startingAt: 0)
                + [p.p50, p.p90, p.p99, p.p999, p.max].map { String(Int($0)).leftPadded(9) }.joined()
        }
        lines.append(row("corrected", corrected))
        lines.append(row("uncorrected", uncorrected))
        lines.append(errors.isEmpty ? "errors: none" : "errors: " + errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        return lines.joined(separator: "\n")
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
}

/// `tollgate-load plot REPORTS.jsonl OUT.svg`: corrected latency by percentile, one line per
/// report, both axes logarithmic (percentiles as 1/(1 − p)). No dependencies: plain SVG.
struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Plot reports (JSON lines from `run --json`) as an SVG percentile chart.")
    @Argument var reports: String
    @Argument var output: String
    @Option var title = "Latency by percentile (corrected for coordinated omission)"

    struct Line: Decodable {
        var label: String
        var distribution: [[Double]]
    }

    func run() throws {
        let text = try String(contentsOfFile: reports, encoding: .utf8)
        let lines = try text.split(separator: "\n").map { try JSONDecoder().decode(Line.self, from: Data($0.utf8)) }
        guard !lines.isEmpty else { throw ValidationError("no reports in \(reports)") }
        let width = 900.0, height = 520.0, left = 70.0, right = 230.0, top = 40.0, bottom = 50.0
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        // x: log10(1 / (1 - p)), p in [0.5, 0.9999]; 100% is drawn at 99.999.
        func x(_ percentile: Double) -> Double {
            let p = min(percentile, 99.999) / 100
            let value = log10(1 / (1 - p))
            let low = log10(2.0), high = log10(100_000.0)
            return left + (value - low) / (high - low) * plotWidth
        }
        let values = lines.flatMap { $0.distribution.map { max(1, $0[1]) } }
        let lowY = pow(10, floor(log10(values.min() ?? 1))), highY = pow(10, ceil(log10(values.max() ?? 10)))
        func y(_ microseconds: Double) -> Double {
            let value = log10(max(1, microseconds))
            return top + plotHeight - (value - log10(lowY)) / (log10(highY) - log10(lowY)) * plotHeight
        }
        let colours = ["#1b6ca8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d5a97", "#30638e", "#e07a5f", "#3d405b", "#81b29a"]
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"\(left)\" y=\"24\" font-size=\"15\">\(title)</text>\n"
        for percentile in [50.0, 90, 99, 99.9, 99.99] {
            let px = x(percentile)
            svg += "<line x1=\"\(px)\" y1=\"\(top)\" x2=\"\(px)\" y2=\"\(top + plotHeight)\" stroke=\"#ddd\"/>"
            svg += "<text x=\"\(px)\" y=\"\(top + plotHeight + 18)\" text-anchor=\"middle\">p\(percentile == percentile.rounded() ? String(Int(percentile)) : String(percentile))</text>\n"
        }
        var decade = lowY
        while decade <= highY {
            let py = y(decade)
            svg += "<line x1=\"\(left)\" y1=\"\(py)\" x2=\"\(left + plotWidth)\" y2=\"\(py)\" stroke=\"#ddd\"/>"
            svg += "<text x=\"\(left - 6)\" y=\"\(py + 4)\" text-anchor=\"end\">\(decade >= 1_000 ? "\(Int(decade / 1_000)) ms" : "\(Int(decade)) µs")</text>\n"
            decade *= 10
        }
        svg += "<text x=\"\(left + plotWidth / 2)\" y=\"\(height - 12)\" text-anchor=\"middle\">percentile</text>\n"
        for (index, line) in lines.enumerated() {
            let colour = colours[index % colours.count]
            let points = line.distribution.map { "\(x($0[0])),\(y($0[1]))" }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2\" points=\"\(points)\"/>\n"
            let legendY = top + 16 * Double(index) + 8
            svg += "<line x1=\"\(left + plotWidth + 12)\" y1=\"\(legendY)\" x2=\"\(left + plotWidth + 32)\" y2=\"\(legendY)\" stroke=\"\(colour)\" stroke-width=\"2\"/>"
            let label = line.label.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            svg += "<text x=\"\(left + plotWidth + 38)\" y=\"\(legendY + 4)\">\(label)</text>\n"
        }
        svg += "</svg>\n"
        try svg.write(toFile: output, atomically: true, encoding: .utf8)
        print("wrote \(output)")
    }
}
