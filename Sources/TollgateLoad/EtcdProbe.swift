import ArgumentParser
import Foundation
import NIOCore
import TollgateCluster

/// `tollgate-load etcd-probe`: what one write to etcd costs now — a put of `--bytes` to one
/// key, back to back, through the same client the cluster's nodes use — the baseline the
/// `replicated` journal is held to in the same run (bench/cluster).
struct EtcdProbe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "etcd-probe", abstract: "Measure etcd put latency (the baseline of the replicated journal).")
    @Option(help: "etcd client endpoints, comma-separated HOST:PORT.") var endpoints = "127.0.0.1:2379"
    @Option(help: "Seconds to measure.") var duration: Double = 5
    @Option(help: "Bytes per put (a group commit's batch).") var bytes = 4_096
    @Option var label = "etcd put"
    @Flag var json = false

    func validate() throws {
        guard duration > 0, duration <= 3_600 else { throw ValidationError("--duration is 0 to 3,600 seconds") }
        guard (1...(1 << 20)).contains(bytes) else { throw ValidationError("--bytes is 1 to 1,048,576") }
    }

    func run() async throws {
        let list = try EtcdEndpoint.list(endpoints).get()
        let client = EtcdClient(endpoints: list, callTimeout: .seconds(5))
        defer { client.close() }
        let value = [UInt8](repeating: 0x5A, count: bytes)
        let key = "/tollgate-probe/\(getpid())"
        var measured = Measured()
        let end = NIODeadline.now() + .nanoseconds(Int64(duration * 1_000_000_000))
        while NIODeadline.now() < end {
            let start = NIODeadline.now()
            try await client.put(key, value)
            let nanoseconds = UInt64(max(0, (NIODeadline.now() - start).nanoseconds))
            measured.corrected.record(nanoseconds)
            measured.uncorrected.record(nanoseconds)
            measured.sent += 1
            measured.answered += 1
            measured.decisions += 1
        }
        try await client.delete(key)
        let report = Report(
            label: label, mode: "etcd put", offered: nil, seconds: duration, connections: 1, batch: 1, operation: "put of \(bytes) bytes",
            accounts: "-", accountCount: 0, measured: measured, cpus: Run.allowedCPUs())
        print(json ? report.json : report.text)
    }
}
