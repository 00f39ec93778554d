import Logging
import NIOPosix
import ServiceLifecycle
import Foundation
import TollgateClient
import TollgateJournal
import TollgateLedger
import TollgateServer
import TollgateWire

// Measures what each journal mode costs (none, async, sync): starts tollgated in-process,
// drives reserve+commit pairs through the Swift client, and prints latency percentiles and
// throughput; then replays each journal and reports its size per record and the replay speed.
// (It also compared decisions on a dedicated ledger thread, until that mode was removed:
// bench/README.md keeps the figures.)
//   swift run -c release tollgate-decision-bench [pairs-per-client]

let pairs = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 20_000 : 20_000

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

func measure(
    clients: Int, journal: ServerConfiguration.JournalModeSetting = .none,
    data: String = "/tmp/tollgate-decision-bench-\(UUID().uuidString)"
) async throws -> String {
    var configuration = ServerConfiguration()
    configuration.journalMode = journal
    configuration.port = 0
    configuration.adminPort = nil
    configuration.threads = 2
    configuration.dataDirectory = data
    configuration.credentials = .open
    var logger = Logger(label: "bench")
    logger.logLevel = .error
    let server = TollgateServer(configuration: configuration, logger: logger)
    let group = ServiceGroup(configuration: .init(services: [server], gracefulShutdownSignals: [], logger: logger))
    let task = Task { try await group.run() }
    try await server.waitUntilListening()
    let port = server.gateAddress!.port!
    let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let setup = try await TollgateClient.connect(.init(port: port), group: clientGroup)
    _ = try await setup.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch))
    _ = try await setup.apply(.createAccount(CreateAccount(account: "acct")))
    _ = try await setup.apply(.addGrant(AddGrant(account: "acct", amount: 1_000_000_000_000, effectiveAt: .epoch)))
    for index in 0..<clients { _ = try await setup.apply(.addMember(account: "acct", member: "m\(index)")) }

    let started = ContinuousClock.now
    let latencies = try await withThrowingTaskGroup(of: [Double].self) { tasks in
        for index in 0..<clients {
            tasks.addTask {
                let gate = try await TollgateClient.connect(.init(port: port), group: clientGroup)
                var samples: [Double] = []
                samples.reserveCapacity(pairs)
                for _ in 0..<pairs {
                    let begin = ContinuousClock.now
                    let hold = try await gate.reserve(account: "acct", member: "m\(index)", product: "p", quantity: 1)
                    try await gate.commit(account: "acct", hold: hold.hold!)
                    let elapsed = ContinuousClock.now - begin
                    samples.append(Double(elapsed.components.attoseconds) / 1e12 + Double(elapsed.components.seconds) * 1e6)
                }
                await gate.close()
                return samples
            }
        }
        var all: [Double] = []
        for try await samples in tasks { all += samples }
        return all.sorted()
    }
    let seconds = Double((ContinuousClock.now - started).components.attoseconds) / 1e18 + Double((ContinuousClock.now - started).components.seconds)
    await setup.close()
    try await clientGroup.shutdownGracefully()
    await group.triggerGracefulShutdown()
    try await task.value
    func format(_ value: Double) -> String { String(Int(value.rounded())) }
    return "| \(journal.rawValue) | \(clients) | \(format(percentile(latencies, 0.5))) | \(format(percentile(latencies, 0.99))) | \(format(percentile(latencies, 0.999))) | \(format(latencies.last!)) | \(Int(Double(latencies.count) / seconds)) |"
}

print("reserve+commit pairs through TollgateClient, \(pairs) per client; latency of a pair in µs")
print("| journal | clients | p50 | p99 | p99.9 | max | pairs/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for clients in [1, 8] {
    print(try await measure(clients: clients))
}
var journals: [(ServerConfiguration.JournalModeSetting, String)] = []
for journal in [ServerConfiguration.JournalModeSetting.async, .sync] {
    for clients in [1, 8] {
        let data = "/tmp/tollgate-decision-bench-\(UUID().uuidString)"
        print(try await measure(clients: clients, journal: journal, data: data))
        journals.append((journal, data))
    }
}

// Replay: how fast a journal rebuilds the ledger, and how big it is per record.
print("")
print("| journal | records | bytes per record | replay records/s |")
print("|---|---:|---:|---:|")
for (journal, data) in journals {
    let directory = data + "/journal"
    let bytes = Journal.segmentFiles(in: directory).reduce(0) { $0 + ((try? FileManager.default.attributesOfItem(atPath: $1)[.size] as? Int) ?? 0) }
    var ledger = Ledger(startingAt: .epoch)
    let started = ContinuousClock.now
    let scan = try Journal.scan(directory: directory, repair: false) { record in
        ledger.replay(record.command, key: record.key, at: record.instant)
    }
    let elapsed = ContinuousClock.now - started
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    print("| \(journal.rawValue) | \(scan.records) | \(bytes / max(1, scan.records)) | \(Int(Double(scan.records) / seconds)) |")
    try? FileManager.default.removeItem(atPath: data)
}
