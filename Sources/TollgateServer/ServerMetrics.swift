import CoreMetrics
import Synchronization
import TollgateJournal
import TollgateLedger
import TollgateWire

/// The server's metrics, through swift-metrics. Every label comes from a fixed set
/// (opcodes, status names), so the number of series is bounded.
public final class ServerMetrics: Sendable {
    private struct Key: Hashable {
        var operation: UInt8
        var outcome: String
    }

    /// Each opcode's name as its label says it, by raw value, made once.
    private static let operationNames: [String] = {
        var names = Array(repeating: "", count: 256)
        for opcode in Opcode.allCases { names[Int(opcode.rawValue)] = opcode.name.lowercased() }
        return names
    }()

    /// `tollgate_requests_total{outcome="ok"}` of every opcode, by raw value, made at start: the
    /// answer nearly every request gets is counted without a lock or an allocation.
    private let answeredOK: [CoreMetrics.Counter?]

    private let decisions = Mutex<[Key: CoreMetrics.Counter]>([:])
    private let errors = Mutex<[String: CoreMetrics.Counter]>([:])
    private let latency: CoreMetrics.Timer
    private let connections: CoreMetrics.Gauge
    private let openHolds: CoreMetrics.Gauge
    private let journalHealthy: CoreMetrics.Gauge
    private let journalFailures: CoreMetrics.Gauge
    private let connectionCount = Atomic<Int>(0)
    private let labelled = Mutex<[String: CoreMetrics.Counter]>([:])
    private let certificateExpiry: CoreMetrics.Gauge
    /// In a cluster: 1 while this node leads its shard, 0 while it follows; and the last record
    /// of its local journal (replicas of a shard compare it to see how far a follower is behind).
    private let clusterLeading: CoreMetrics.Gauge
    private let clusterJournalSequence: CoreMetrics.Gauge

    public init() {
        latency = CoreMetrics.Timer(label: "tollgate_request_duration_seconds")
        connections = CoreMetrics.Gauge(label: "tollgate_connections")
        openHolds = CoreMetrics.Gauge(label: "tollgate_open_holds")
        journalHealthy = CoreMetrics.Gauge(label: "tollgate_journal_healthy")
        journalFailures = CoreMetrics.Gauge(label: "tollgate_journal_write_failures")
        certificateExpiry = CoreMetrics.Gauge(label: "tollgate_tls_certificate_not_after_seconds")
        clusterLeading = CoreMetrics.Gauge(label: "tollgate_cluster_leading")
        clusterJournalSequence = CoreMetrics.Gauge(label: "tollgate_cluster_journal_sequence")
        var answeredOK = [CoreMetrics.Counter?](repeating: nil, count: 256)
        for opcode in Opcode.allCases {
            answeredOK[Int(opcode.rawValue)] = CoreMetrics.Counter(
                label: "tollgate_requests_total", dimensions: [("operation", Self.operationNames[Int(opcode.rawValue)]), ("outcome", "ok")])
        }
        self.answeredOK = answeredOK
    }

    /// A counter with fixed-set labels, made once and kept.
    private func counter(_ label: String, _ dimensions: [(String, String)]) -> CoreMetrics.Counter {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        return labelled.withLock { cache in
            if let counter = cache[key] { return counter }
            let counter = CoreMetrics.Counter(label: label, dimensions: dimensions)
            cache[key] = counter
            return counter
        }
    }

    /// A credential refused (`unauthorized`) or a request its role or scope does not allow
    /// (`forbidden`), by the role of the identity (`none` when there was none).
    public func recordAccessRefusal(_ status: ProtocolStatus, role: String, reason: String) {
        counter("tollgate_access_refusals_total", [("status", status.name), ("role", role), ("reason", reason)]).increment()
    }

    /// A TLS handshake that completed or failed.
    public func recordTLSHandshake(succeeded: Bool) {
        counter("tollgate_tls_handshakes_total", [("outcome", succeeded ? "ok" : "failed")]).increment()
    }

    /// A reload of the TLS files or the credentials file that changed something (`ok`) or
    /// was refused (`failed`, the previous ones stay in force).
    public func recordReload(_ what: String, succeeded: Bool) {
        counter("tollgate_reloads_total", [("what", what), ("outcome", succeeded ? "ok" : "failed")]).increment()
    }

    private let burnMinute = CoreMetrics.Gauge(label: "tollgate_burn_credits", dimensions: [("window", "minute")])
    private let burnHour = CoreMetrics.Gauge(label: "tollgate_burn_credits", dimensions: [("window", "hour")])

    /// Credits consumed across the ledger in the last minute and hour (per account and member
    /// they are in balances: a label per account would not stay bounded).
    public func recordBurn(_ burn: BurnRate) {
        burnMinute.record(burn.lastMinute)
        burnHour.record(burn.lastHour)
    }

    /// An event the ledger produced, by type.
    public func recordEvent(_ event: LedgerEvent) {
        let type: String
        switch event.kind {
        case .alert: type = "alert"
        case .depleted: type = "depleted"
        case .recharged: type = "recharged"
        case .softLimit: type = "softLimit"
        }
        counter("tollgate_events_total", [("type", type)]).increment()
    }

    /// A webhook POST that was answered 2xx, or was not.
    public func recordWebhook(succeeded: Bool) {
        counter("tollgate_webhook_posts_total", [("outcome", succeeded ? "ok" : "failed")]).increment()
    }

    /// When the serving certificate expires, in seconds since 1970, for an expiry alert.
    public func recordCertificateNotAfter(_ seconds: Int64) {
        certificateExpiry.record(seconds)
    }

    /// One request answered: its operation, its outcome (`ok` or a status name) and how long
    /// the server took from decoding it to writing the answer.
    /// `ok` is counted by a counter made at start; other outcomes (refusals, errors, batches)
    /// by counters made on first use and kept behind a lock.
    public func recordRequest(_ opcode: Opcode, outcome: String, nanoseconds: Int64) {
        if outcome == "ok", let counter = answeredOK[Int(opcode.rawValue)] {
            counter.increment()
        } else {
            let key = Key(operation: opcode.rawValue, outcome: outcome)
            let counter = decisions.withLock { cache in
                if let counter = cache[key] { return counter }
                let counter = CoreMetrics.Counter(
                    label: "tollgate_requests_total", dimensions: [("operation", Self.operationNames[Int(key.operation)]), ("outcome", key.outcome)])
                cache[key] = counter
                return counter
            }
            counter.increment()
        }
        latency.recordNanoseconds(nanoseconds)
    }

    /// A protocol error, by status name.
    public func recordError(_ status: ProtocolStatus) {
        let counter = errors.withLock { cache in
            if let counter = cache[status.name] { return counter }
            let counter = CoreMetrics.Counter(label: "tollgate_protocol_errors_total", dimensions: [("kind", status.name)])
            cache[status.name] = counter
            return counter
        }
        counter.increment()
    }

    public func connectionOpened() {
        connections.record(connectionCount.wrappingAdd(1, ordering: .relaxed).newValue)
    }

    public func connectionClosed() {
        connections.record(connectionCount.wrappingSubtract(1, ordering: .relaxed).newValue)
    }

    public func recordOpenHolds(_ count: Int) {
        openHolds.record(count)
    }

    private let keysInMemory = CoreMetrics.Gauge(label: "tollgate_idempotency_keys", dimensions: [("tier", "memory")])
    private let keysWaiting = CoreMetrics.Gauge(label: "tollgate_idempotency_keys", dimensions: [("tier", "waiting")])
    private let keysOnDisk = CoreMetrics.Gauge(label: "tollgate_idempotency_keys", dimensions: [("tier", "disk")])
    private let keysForgottenEarly = CoreMetrics.Gauge(label: "tollgate_idempotency_keys_forgotten_early")
    private let keyDiskBytes = CoreMetrics.Gauge(label: "tollgate_idempotency_disk_bytes")
    private let keyMemoryBytes = CoreMetrics.Gauge(label: "tollgate_idempotency_disk_tier_memory_bytes")
    private let keyRuns = CoreMetrics.Gauge(label: "tollgate_idempotency_disk_runs")
    private let keyWriteFailures = CoreMetrics.Gauge(label: "tollgate_idempotency_disk_write_failures")
    private let keyReadFailures = CoreMetrics.Gauge(label: "tollgate_idempotency_disk_read_failures")
    private let keyLimitReached = Mutex<[String: CoreMetrics.Gauge]>([:])

    /// The idempotency key tiers: keys in each, what the disk tier takes, what was forgotten
    /// before its retention because a limit was reached (1 on `..._limit_reached{limit=...}`
    /// for the last limit reached), and disk failures.
    public func recordIdempotency(memoryKeys: Int, forgottenInMemory: Int, disk: KeyArchive.Statistics?) {
        keysInMemory.record(memoryKeys)
        keysForgottenEarly.record(forgottenInMemory + (disk?.forgottenEarly ?? 0))
        guard let disk else { return }
        keysWaiting.record(disk.keysWaiting)
        keysOnDisk.record(disk.keysOnDisk)
        keyDiskBytes.record(disk.diskBytes)
        keyMemoryBytes.record(disk.memoryBytes)
        keyRuns.record(disk.runs)
        keyWriteFailures.record(disk.writeFailures)
        keyReadFailures.record(disk.readFailures)
        keyLimitReached.withLock { gauges in
            for limit in ["pendingMax", "keysMax", "bytesMax"] {
                let gauge = gauges[limit] ?? CoreMetrics.Gauge(label: "tollgate_idempotency_limit_reached", dimensions: [("limit", limit)])
                gauges[limit] = gauge
                gauge.record(disk.lastLimit == limit ? 1 : 0)
            }
        }
    }

    /// A retry read from the disk tier: `found`, `absent` (a filter's false positive or an
    /// expired key), `failed`, or `busy` (too many reads waiting).
    public func recordKeyRead(outcome: String) {
        counter("tollgate_idempotency_disk_reads_total", [("outcome", outcome)]).increment()
    }

    /// 1 while the journal writes, 0 while it fails; and how many writes or fsyncs failed.
    public func recordCluster(leading: Bool, journalSequence: UInt64) {
        clusterLeading.record(leading ? 1 : 0)
        clusterJournalSequence.record(Int64(clamping: journalSequence))
    }

    public func recordJournal(healthy: Bool, failures: Int) {
        journalHealthy.record(healthy ? 1 : 0)
        journalFailures.record(failures)
    }
}

extension WireResponse {
    /// `ok`, or the status name, for the outcome label.
    var outcome: String {
        switch self {
        case .answer(.refused(let refusal)): refusal.error.code.identifier
        case .error(let error): error.status.name
        case .batch: "batch"
        default: "ok"
        }
    }
}
