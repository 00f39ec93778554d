import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Prometheus
import ServiceLifecycle
import Synchronization
import TollgateJournal
import TollgateLedger
import TollgateWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The metrics registry the process reports from. swift-metrics can be bootstrapped once per
/// process, so every server in a process (tests start several) shares it.
public enum MetricsBootstrap {
    public static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Decisions take microseconds: buckets from 10 µs to 1 s.
        factory.durationHistogramBuckets["tollgate_request_duration_seconds"] = [
            .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
            .milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .seconds(1),
        ]
        MetricsSystem.bootstrap(factory)
        return registry
    }()
}

/// `tollgated`: the gate port, the admin HTTP port and the sweep timer, as one `Service`.
/// Graceful shutdown stops accepting, lets every open connection send what it has answered,
/// then closes them (after `shutdownGraceMilliseconds` at most) and returns.
public final class TollgateServer: Service, Sendable {
    public let configuration: ServerConfiguration
    public let service: LedgerService
    public let readiness = Readiness()
    private let logger: Logger
    private let metrics: ServerMetrics
    private let group: MultiThreadedEventLoopGroup
    private let limiter: ConnectionLimiter
    private let connections = Mutex<[ObjectIdentifier: any Channel]>([:])
    private let bound = Mutex<(gate: SocketAddress?, admin: SocketAddress?)>((nil, nil))
    private let started = Mutex<[CheckedContinuation<Void, any Error>]>([])

    private let clock: @Sendable () -> Instant
    private let decisionClock: DecisionClock
    private let journalFiles: any JournalFiles
    private let lastCheckpoint = Mutex<UInt64>(0)
    private let checkpointThread = NIOThreadPool(numberOfThreads: 1)
    /// Answers balances in the past, which read checkpoints and the journal.
    private let historyThread = NIOThreadPool(numberOfThreads: 1)
    /// Re-reads the TLS files and the credentials file, off the event loops.
    private let reloadThread = NIOThreadPool(numberOfThreads: 1)
    /// Answers the read API, off the event loops.
    private let readThread = NIOThreadPool(numberOfThreads: 1)
    /// Reads idempotency keys from the disk tier for retries the filters could not rule out.
    private let keyThread = NIOThreadPool(numberOfThreads: 2)
    /// The credentials in force; empty (everyone refused) until `run` loads them.
    public let access = AccessControl(Credentials())
    /// The ledger's events: the event log, SUBSCRIBE streams and the webhook.
    public let events: EventHub
    private let tlsSource = Mutex<TLSContextSource?>(nil)
    /// The balance over time of the accounts the read API and the dashboard are watching.
    public let history: BalanceHistory
    private let startedAt: Instant
    /// In a cluster, this node's part in its shard.
    private let node = Mutex<ClusterNode?>(nil)
    /// In router mode, what passes requests on to the shards.
    private let router = Mutex<ShardRouter?>(nil)
    /// Why the node stopped leading, once it has: the server shuts down and `run` throws.
    private let deposedBecause = Mutex<String?>(nil)

    /// In a cluster: whether this node leads its shard now, and the leader it knows of.
    public var clusterRole: (leading: Bool, leader: String?)? {
        node.withLock { $0 }.map { node in (node.isLeading, node.knownLeader.map { "\($0.node) at \($0.address)" }) }
    }

    /// `journalFiles` and `eventLogFiles` replace the file operations of the journal and of
    /// the event log, for fault-injection tests.
    public init(
        configuration: ServerConfiguration, logger: Logger, clock: @escaping @Sendable () -> Instant = wallClock,
        journalFiles: any JournalFiles = SystemJournalFiles(), eventLogFiles: any JournalFiles = SystemJournalFiles()
    ) {
        _ = MetricsBootstrap.registry
        let offset = configuration.clockOffsetSeconds * 1_000_000
        let base = clock
        let shifted: @Sendable () -> Instant = { base().adding(microseconds: offset) }
        let decisionClock = DecisionClock(wall: offset == 0 ? base : shifted)
        let clock: @Sendable () -> Instant = { decisionClock.now() }
        if offset != 0 { logger.warning("the server's clock is shifted by \(configuration.clockOffsetSeconds) s (clockOffsetSeconds)") }
        self.decisionClock = decisionClock
        self.clock = clock
        self.journalFiles = journalFiles
        self.configuration = configuration
        self.logger = logger
        let metrics = ServerMetrics()
        // Without a journal the ledger starts empty every time, and so do its event numbers:
        // nothing is kept.
        let eventDirectory = configuration.journalMode == .none ? nil : configuration.dataDirectory + "/events"
        var hubSettings = EventHub.Settings(directory: eventDirectory, webhookURL: configuration.webhookURL)
        hubSettings.webhookTimeoutMilliseconds = configuration.webhookTimeoutMilliseconds
        self.events = EventHub(settings: hubSettings, logger: logger, metrics: metrics, files: eventLogFiles)
        self.service = LedgerService(configuration: configuration, clock: clock, hub: events)
        var historySettings = BalanceHistory.Settings()
        historySettings.accountsMax = configuration.dashboardAccountsMax
        self.history = BalanceHistory(settings: historySettings)
        self.startedAt = clock()
        self.metrics = metrics
        self.limiter = ConnectionLimiter(maximum: configuration.maxConnections)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.threads > 0 ? configuration.threads : System.coreCount)
    }

    /// The addresses actually bound (useful with port 0), once `run` has started listening.
    public var gateAddress: SocketAddress? { bound.withLock { $0.gate } }
    public var adminAddress: SocketAddress? { bound.withLock { $0.admin } }
    public var openConnections: Int { limiter.current }

    /// Returns once the server is listening (or throws if it could not start).
    public func waitUntilListening() async throws {
        if gateAddress != nil { return }
        try await withCheckedThrowingContinuation { continuation in
            let listening = bound.withLock { $0.gate != nil }
            if listening {
                continuation.resume()
            } else {
                started.withLock { $0.append(continuation) }
            }
        }
    }

    public func run() async throws {
        let gate: any Channel
        var admin: (any Channel)?
        do {
            for notice in configuration.retiredSettings { logger.warning("\(notice)") }
            ensureDescriptorLimit()
            try createDataDirectory()
            try loadAccess()
            try events.open()
            // The admin port first: /healthz answers and /readyz says what start-up is doing
            // while a long journal replays.
            admin = try await bindAdmin()
            // Replaying a journal is long CPU and file work: on a thread of its own, never on
            // the Swift concurrency pool, whose few threads (one per core) everything else in
            // the process shares.
            if configuration.router {
                // No ledger here: every request goes to a shard.
                let made = try ShardRouter(configuration: configuration, token: try upstreamToken(), group: group, logger: logger)
                readiness.set(notReadyBecause: "starting: reading the shard map from etcd")
                do {
                    try await made.start()
                } catch {
                    await made.stop()
                    throw ServerError("cannot read the shard map from etcd (\(configuration.etcdEndpoints.joined(separator: ","))): \(error)")
                }
                router.withLock { $0 = made }
            } else {
                if configuration.isClustered {
                    // A new replica, or one the shard's log has left behind, starts from another
                    // node's files (ClusterBootstrap.swift).
                    readiness.set(notReadyBecause: "starting: checking this node's data against shard \(configuration.shard)'s journal in etcd")
                    try await ClusterBootstrap(configuration: configuration, logger: logger, token: try upstreamToken()).prepare()
                }
                try await NIOThreadPool.singleton.runIfActive { [self] in
                    try recover()
                    service.reserveIdempotencyIndex()
                }
            }
            // A cluster's node decides nothing until elected, not even while it joins.
            if configuration.isClustered {
                service.follow(refusal: .notLeader(node: nil, address: nil, shard: configuration.shard))
                events.holdWebhook(true)
            }
            gate = try await bindGate()
            if configuration.isClustered {
                let bound = gate.localAddress?.port ?? configuration.port
                let address = configuration.advertiseAddress.isEmpty ? "\(configuration.host):\(bound)" : configuration.advertiseAddress
                let decisionClock = decisionClock
                let service = service
                let events = events
                let made = try ClusterNode(
                    configuration: configuration, address: address, service: service, logger: logger, now: clock, token: try upstreamToken(),
                    checkpointed: { [weak self] in self?.lastCheckpoint.withLock { $0 } ?? 0 },
                    leading: {
                        decisionClock.notBefore(service.ledgerClock)
                        events.holdWebhook(false)
                    },
                    deposed: { [weak self] reason in
                        self?.deposedBecause.withLock { $0 = reason }
                        gate.close(promise: nil)
                    })
                node.withLock { $0 = made }
                readiness.set(notReadyBecause: "starting: joining shard \(configuration.shard) (reading its journal from etcd)")
                do {
                    try await made.join()
                } catch {
                    await made.stop()
                    try? await gate.close()
                    throw error
                }
            }
        } catch {
            let waiting = started.withLock { waiting in defer { waiting = [] }; return waiting }
            for continuation in waiting { continuation.resume(throwing: error) }
            try? await admin?.close()
            try? await readThread.shutdownGracefully()
            try? await group.shutdownGracefully()
            throw error
        }
        bound.withLock { $0 = (gate.localAddress, admin?.localAddress) }
        let waiting = started.withLock { waiting in defer { waiting = [] }; return waiting }
        for continuation in waiting { continuation.resume() }
        let eventTask = Task { [events] in await events.run() }
        node.withLock { $0 }?.start()
        readiness.set(notReadyBecause: nil)
        SystemdNotify.send("READY=1\nSTATUS=taking decisions")
        logger.info(
            "tollgated listening",
            metadata: [
                "gate": "\(gate.localAddress.map(String.init(describing:)) ?? "?")",
                "admin": "\(admin?.localAddress.map(String.init(describing:)) ?? "off")",
                "data": "\(configuration.dataDirectory)",
            ])
        var reloads: RepeatedTask?
        if configuration.reloadCheckSeconds > 0 && (configuration.tls != nil || configuration.credentialsFile != nil) {
            reloadThread.start()
            let pool = reloadThread
            let interval = TimeAmount.seconds(configuration.reloadCheckSeconds)
            reloads = group.next().scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
                pool.submit { [weak self] state in
                    guard state == .active, let server = self else { return }
                    server.reload()
                }
            }
        }
        let sweep = group.next().scheduleRepeatedTask(
            initialDelay: .milliseconds(configuration.sweepIntervalMilliseconds), delay: .milliseconds(configuration.sweepIntervalMilliseconds)
        ) { [service] _ in
            service.sweep()
        }

        // Balance samples of watched accounts: a few reads under the ledger's lock, on the
        // history thread rather than an event loop that has connections to answer.
        let samplingInterval = TimeAmount.milliseconds(history.settings.intervalMilliseconds)
        let sampling = group.next().scheduleRepeatedTask(initialDelay: samplingInterval, delay: samplingInterval) { [history, service, historyThread] _ in
            historyThread.submit { state in
                guard state == .active else { return }
                history.sample(service)
            }
        }

        var checkpoints: RepeatedTask?
        if configuration.checkpointIntervalSeconds > 0 && configuration.journalMode != .none {
            checkpointThread.start()
            let pool = checkpointThread
            let interval = TimeAmount.seconds(configuration.checkpointIntervalSeconds)
            checkpoints = group.next().scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self, logger] _ in
                pool.submit { [weak self] state in
                    guard state == .active, let server = self else { return }
                    do {
                        try server.writeCheckpoint()
                    } catch {
                        logger.error("checkpoint failed: \(error)")
                    }
                }
            }
        }

        // Serve until asked to stop.
        await withGracefulShutdownHandler {
            try? await gate.closeFuture.get()
        } onGracefulShutdown: { [readiness, logger] in
            readiness.set(notReadyBecause: "shutting down")
            SystemdNotify.send("STOPPING=1\nSTATUS=shutting down: finishing open connections")
            logger.info("shutting down: no new connections; finishing open ones")
            gate.close(promise: nil)
        }

        if deposedBecause.withLock({ $0 }) != nil {
            // A deposed leader can acknowledge nothing more (its appends are fenced): its
            // clients are cut off at once, to retry at the new leader with the same keys,
            // rather than wait out the grace period for answers that will never come.
            await dropConnections()
        } else {
            await drainConnections()
        }
        sweep.cancel()
        sampling.cancel()
        if let reloads {
            reloads.cancel()
            try? await reloadThread.shutdownGracefully()
        }
        if let checkpoints {
            checkpoints.cancel()
            try? await checkpointThread.shutdownGracefully()
        }
        try? await historyThread.shutdownGracefully()
        try? await keyThread.shutdownGracefully()
        try? await admin?.close()
        try? await readThread.shutdownGracefully()
        service.journal?.close()
        // A leader resigns once its journal is closed (everything it answered is in etcd), so
        // another node takes over at once rather than after the lease.
        await node.withLock { $0 }?.stop()
        await router.withLock { $0 }?.stop()
        service.archive?.stop()
        events.stop()
        await eventTask.value
        try await group.shutdownGracefully()
        if let reason = deposedBecause.withLock({ $0 }) {
            logger.notice("tollgated stopped: it must restart to go on as a node of its shard", metadata: ["reason": "\(reason)"])
            throw ServerError("\(reason): restart to follow the shard", restart: true)
        }
        logger.info("tollgated stopped")
    }

    /// Rebuilds the ledger from the journal: every record replayed at the instant it was
    /// decided. A torn tail (a crash mid-write) is truncated and logged; damage anywhere else
    /// refuses to start, naming the file and offset.
    private func recover() throws {
        guard configuration.journalMode != .none else { return }
        let directory = configuration.dataDirectory + "/journal"
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw ServerError("cannot create the journal directory \(directory): \(String(cString: strerror(errno)))")
        }
        let started = ContinuousClock.now
        if let newest = Checkpoint.files(in: directory).last {
            readiness.set(notReadyBecause: "starting: loading the checkpoint \(newest)")
            logger.info("loading a checkpoint", metadata: ["file": "\(newest)", "bytes": "\(Self.fileSize(newest))"])
        }
        let checkpoint = Checkpoint.newest(in: directory, limits: configuration.limits)
        if let checkpoint {
            let bytes = Self.fileSize(checkpoint.file)
            let seconds = ContinuousClock.now - started
            logger.info(
                "loaded a checkpoint",
                metadata: [
                    "file": "\(checkpoint.file)", "sequence": "\(checkpoint.position.sequence)", "bytes": "\(bytes)",
                    "accounts": "\(checkpoint.ledger.accountCount)", "members": "\(checkpoint.ledger.memberCount)", "openHolds": "\(checkpoint.ledger.openHoldCount)",
                    "seconds": "\(seconds.secondsText)",
                    "megabytesPerSecond": "\(seconds.rate(of: Int64(bytes)) / 1_000_000)",
                ])
            lastCheckpoint.withLock { $0 = checkpoint.position.sequence }
        }
        var ledger = checkpoint?.ledger ?? Ledger(limits: configuration.limits, startingAt: .epoch)
        ledger.useIDSpace(tag: configuration.idSpaceTag)
        // The disk tier of idempotency keys is there before the replay, which hands it the
        // keys the table lets go of as it did live.
        var archiveSettings = KeyArchive.Settings(directory: configuration.dataDirectory + "/keys", retentionMicroseconds: configuration.limits.idempotencyRetentionMicroseconds)
        archiveSettings.keysMax = configuration.idempotencyDiskKeysMax
        archiveSettings.bytesMax = Int64(configuration.idempotencyDiskGigabytesMax) << 30
        let archive: KeyArchive
        do {
            archive = try KeyArchive(settings: archiveSettings, clock: { [decisionClock] in decisionClock.now() }) { [logger] message in logger.warning("\(message)") }
        } catch {
            throw ServerError("cannot open the idempotency keys' directory: \(error)")
        }
        ledger.archivesEvictedKeys = true
        readiness.set(notReadyBecause: "starting: replaying the journal")
        let readiness = readiness
        var progress = ProgressMeter(every: .milliseconds(configuration.progressIntervalMilliseconds)) { [logger] report in
            logger.info("replaying the journal", metadata: ["records": "\(report.done)", "recordsPerSecond": "\(report.perSecond)", "seconds": "\(report.elapsed.secondsText)"])
            readiness.set(notReadyBecause: "starting: replaying the journal (\(report.line(unit: "records")))")
        }
        let scan: JournalScan
        var divergent = 0
        do {
            scan = try Journal.scan(directory: directory, repair: true, after: checkpoint?.position) { [logger] record in
                // Each record changed the ledger when it was decided; one that does not now is
                // reported (it cannot come from the configuration: replay does not depend on it).
                if !ledger.replay(record.command, key: record.key, at: record.instant).changedState {
                    divergent += 1
                    if divergent <= 10 {
                        logger.error(
                            "a journal record changed nothing on replay, though it did when decided",
                            metadata: ["sequence": "\(record.sequence)", "command": "\(WireText.describe(command: record.command, key: record.key))"])
                    }
                }
                // Events come out again as the journal replays; the hub keeps those it has
                // not logged yet (by sequence), so none is lost and none logged twice.
                if ledger.hasPendingEvents { events.accept(ledger.takeEvents()) }
                if ledger.hasEvictedKeys {
                    archive.add(ledger.takeEvictedKeys())
                    // Full batches are written as they fill; merging waits for the threads.
                    while archive.waitingKeyCount >= archiveSettings.batchKeys, archive.writeFullBatch() {}
                }
                progress.advance()
            }
        } catch let damage as JournalDamage {
            throw ServerError("\(damage). Refusing to start; inspect it with `tollgate journal verify \(directory)`.")
        }
        if let torn = scan.tornTail {
            logger.warning("truncated a torn journal tail", metadata: ["file": "\(torn.file)", "offset": "\(torn.offset)", "reason": "\(torn.reason)"])
        }
        // A journal decided ahead of the wall clock (a clock stepped back since): time goes on
        // from where the ledger is, at the real rate, rather than stand still until the wall
        // clock catches up.
        if ledger.clock > clock() {
            logger.warning(
                "the journal's last instant is ahead of the wall clock: time runs on from it until the wall clock catches up",
                metadata: ["ledgerClock": "\(ledger.clock)", "wallClock": "\(clock())"])
            decisionClock.notBefore(ledger.clock)
        }
        ledger.advance(to: clock())
        if ledger.hasPendingEvents { events.accept(ledger.takeEvents()) }
        let interval = configuration.journalFlushIntervalMilliseconds * 1_000
        let mode: JournalMode =
            configuration.isClustered ? .replicated(intervalMicroseconds: interval) : configuration.journalMode == .sync ? .sync : .async(intervalMicroseconds: interval)
        let writer: JournalWriter
        do {
            writer = try JournalWriter(directory: directory, mode: mode, after: scan, segmentBytes: configuration.journalSegmentBytes, files: journalFiles)
        } catch {
            throw ServerError("cannot open the journal: \(error)")
        }
        service.restore(ledger, journal: writer, archive: archive)
        archive.start()
        let keys = archive.statistics
        logger.info(
            "idempotency keys", metadata: ["inMemory": "\(ledger.idempotencyKeyCount)", "onDisk": "\(keys.keysOnDisk)", "runs": "\(keys.runs)", "diskBytes": "\(keys.diskBytes)", "damagedRuns": "\(keys.damagedRuns)"])
        if configuration.journalMode == .sync || configuration.journalMode == .replicated { events.holdEvents(until: writer) }
        let replayed = progress.current()
        logger.info(
            "recovered from the journal",
            metadata: [
                "records": "\(scan.records)", "segments": "\(scan.segments.count)", "mode": "\(configuration.journalMode.rawValue)",
                "divergentRecords": "\(divergent)",
                "recordsPerSecond": "\(replayed.perSecond)", "accounts": "\(ledger.accountCount)", "openHolds": "\(ledger.openHoldCount)",
                "seconds": "\((ContinuousClock.now - started).secondsText)",
            ])
        readiness.set(notReadyBecause: "starting: opening the gate port")
    }

    /// Writes a checkpoint if the journal moved since the last one: the ledger is copied under
    /// its lock (cheap: storage is shared until it changes), then encoded and written on the
    /// checkpoint thread while decisions go on.
    public func writeCheckpoint(waitingForTheJournalMilliseconds wait: Int = 10_000) throws {
        guard let source = service.checkpointSource(), source.position.sequence > lastCheckpoint.withLock({ $0 }) else { return }
        // The copy includes records appended but perhaps not yet on disk: a checkpoint of them
        // would outlive a crash that loses them, and the journal would end before it. It is
        // written only once the journal has kept everything it includes.
        if let journal = service.journal, !journal.waitUntilDurable(source.position.sequence, timeoutMilliseconds: wait) {
            throw ServerError(
                "the journal has not kept record \(source.position.sequence) yet (kept through \(journal.durableSequence)\(journal.failureReason.map { ": \($0)" } ?? "")); checkpoint postponed")
        }
        // The journal before a checkpoint is never replayed again, so the events it produced
        // must be in the event log first.
        guard events.waitUntilLogged(source.ledger.nextEventSequence - 1) else {
            throw ServerError("the event log is behind (at \(events.lastLogged), the ledger at \(source.ledger.nextEventSequence - 1)); checkpoint postponed")
        }
        let directory = configuration.dataDirectory + "/journal"
        let started = ContinuousClock.now
        // Keys the table let go of before the copy are not in it: they go to disk first.
        try service.archive?.persist()
        let bytes = source.ledger.snapshot()
        let file = try Checkpoint.write(bytes, at: source.position, in: directory)
        lastCheckpoint.withLock { $0 = source.position.sequence }
        Checkpoint.prune(directory: directory, retentionSeconds: Double(configuration.journalRetentionHours) * 3_600)
        logger.info(
            "wrote a checkpoint",
            metadata: ["file": "\(file)", "bytes": "\(bytes.count)", "sequence": "\(source.position.sequence)", "seconds": "\((ContinuousClock.now - started).secondsText)"])
    }

    // MARK: - Access and TLS

    /// What a reload found: which of the TLS files and the credentials file changed, and the
    /// errors of those that could not be used (the previous ones stay in force).
    public struct ReloadOutcome: Sendable, CustomStringConvertible {
        public var tlsChanged = false
        public var credentialsChanged = false
        public var errors: [String] = []

        public var description: String {
            var parts: [String] = []
            if tlsChanged { parts.append("TLS certificate reloaded") }
            if credentialsChanged { parts.append("credentials reloaded") }
            parts += errors
            return parts.isEmpty ? "nothing changed" : parts.joined(separator: "; ")
        }
    }

    /// Re-reads the TLS certificate, key and client CA, and the credentials file, installing
    /// whatever changed. New connections use the new certificate; open connections keep the
    /// one they were accepted with, and re-check their identity against the new credentials
    /// at their next request. Called on SIGHUP and every `reloadCheckSeconds`.
    @discardableResult
    public func reload() -> ReloadOutcome {
        var outcome = ReloadOutcome()
        if let source = tlsSource.withLock({ $0 }) {
            do {
                if try source.reload() {
                    outcome.tlsChanged = true
                    metrics.recordReload("tls", succeeded: true)
                    metrics.recordCertificateNotAfter(source.notValidAfter)
                    logger.notice("reloaded the TLS certificate", metadata: ["file": "\(source.settings.certificateFile)", "notAfter": "\(source.notValidAfter)"])
                }
            } catch {
                outcome.errors.append(error.description)
                metrics.recordReload("tls", succeeded: false)
                logger.error("kept the previous TLS certificate: \(error.description)")
            }
        }
        if configuration.credentials == nil, let file = configuration.credentialsFile {
            do {
                if access.replace(with: try Self.readCredentials(file)) {
                    outcome.credentialsChanged = true
                    metrics.recordReload("credentials", succeeded: true)
                    logger.notice("reloaded the credentials", metadata: ["file": "\(file)"])
                }
            } catch {
                outcome.errors.append("\(error)")
                metrics.recordReload("credentials", succeeded: false)
                logger.error("kept the previous credentials: \(error)")
            }
        }
        return outcome
    }

    static func readCredentials(_ file: String) throws -> Credentials {
        let bytes = try readFile(file, what: "credentials file")
        return try Credentials.parse(yaml: String(decoding: bytes, as: UTF8.self), source: file)
    }

    /// Loads the credentials and the TLS context, and refuses plaintext off loopback.
    private func loadAccess() throws {
        if let tls = configuration.tls {
            let source = try TLSContextSource(settings: tls)
            tlsSource.withLock { $0 = source }
            metrics.recordCertificateNotAfter(source.notValidAfter)
        } else if !configuration.allowPlaintext && !Self.isLoopback(configuration.host) {
            throw ServerError(
                "refusing to serve plaintext on \(configuration.host), which is not a loopback address: tokens would cross the network in the clear. "
                    + "Configure TLS (tlsCertificateFile, tlsKeyFile) or set allowPlaintext: true.")
        }
        if let credentials = configuration.credentials {
            access.replace(with: credentials)
        } else if let file = configuration.credentialsFile {
            do {
                access.replace(with: try Self.readCredentials(file))
            } catch {
                throw ServerError("\(error)")
            }
            logger.info("credentials loaded", metadata: ["file": "\(file)"])
        } else {
            let (token, path, created) = try adminToken()
            access.replace(with: .adminToken(token))
            logger.notice(
                created ? "no credentials file configured: wrote a new admin token" : "no credentials file configured: using the admin token",
                metadata: ["file": "\(path)"])
        }
    }

    static func fileSize(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_size) : 0
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// The admin token of a server without a credentials file: read from
    /// `<dataDirectory>/admin.token`, or made (256 random bits) and written there with mode 0600.
    /// The admin token this node shows other nodes of its cluster: `upstreamToken`, else its
    /// own admin token (a cluster's nodes then share one).
    private func upstreamToken() throws -> String {
        configuration.upstreamToken.isEmpty ? try adminToken().token : configuration.upstreamToken
    }

    private func adminToken() throws -> (token: String, path: String, created: Bool) {
        let path = configuration.dataDirectory + "/admin.token"
        if let bytes = try? readFile(path, what: "admin token") {
            var info = stat()
            if stat(path, &info) == 0, info.st_mode & 0o077 != 0 {
                logger.warning("the admin token file can be read by other users; chmod 600 it", metadata: ["file": "\(path)"])
            }
            let token = String(decoding: bytes.filter { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 }, as: UTF8.self)
            guard token.utf8.count >= 16, token.utf8.count <= 256 else {
                throw ServerError("the admin token in \(path) must be 16 to 256 bytes long")
            }
            return (token, path, false)
        }
        var generator = SystemRandomNumberGenerator()
        let random = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let token = "tg_" + SHA256.hexString(random)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ServerError("cannot write the admin token \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let line = Array((token + "\n").utf8)
        let written = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == line.count, fsync(fd) == 0 else {
            throw ServerError("cannot write the admin token \(path): \(String(cString: strerror(errno)))")
        }
        return (token, path, true)
    }

    private func createDataDirectory() throws {
        if mkdir(configuration.dataDirectory, 0o700) != 0 && errno != EEXIST {
            throw ServerError("cannot create the data directory \(configuration.dataDirectory): \(String(cString: strerror(errno)))")
        }
    }

    private func bindGate() async throws -> any Channel {
        let service = service
        let metrics = metrics
        let limiter = limiter
        let logger = logger
        let configuration = configuration
        let history = historyThread
        let keyReads = keyThread
        let access = access
        let tlsSource = tlsSource.withLock { $0 }
        let forwarder: (any RequestForwarder)? = router.withLock { $0 }
        history.start()
        keyReads.start()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 32 * 1_024, high: 256 * 1_024))
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { [weak self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    var tls: NIOSSLServerHandler?
                    if let tlsSource {
                        // The context current when the connection arrives; a reload later
                        // does not touch this connection.
                        let handler = NIOSSLServerHandler(context: tlsSource.context)
                        try sync.addHandler(handler)
                        tls = handler
                    }
                    try sync.addHandler(BackPressureHandler())
                    // No frame decoder or encoder of their own: the handler splits frames
                    // itself and encodes its answers straight into one outbound buffer per
                    // connection (the event hub writes bytes too).
                    try sync.addHandler(GateConnectionHandler(
                            service: service, metrics: metrics, limiter: limiter, logger: logger, history: history, keyReads: keyReads, access: access, tls: tls,
                            forwarder: forwarder))
                    self?.track(channel)
                }
            }
        do {
            return try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        } catch {
            throw ServerError("cannot listen on \(configuration.host):\(configuration.port): \(error)")
        }
    }

    /// Descriptors for every gate and admin connection the limits allow, plus the journal,
    /// checkpoints, event log and listeners: the soft open-file limit is raised to cover them
    /// (up to the hard limit), or a warning says how many connections it leaves room for.
    private func ensureDescriptorLimit() {
        let needed = rlim_t(configuration.maxConnections + (configuration.adminPort == nil ? 0 : configuration.adminMaxConnections) + 128)
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < needed else { return }
        let wanted = min(needed, limit.rlim_max)
        var raised = limit
        raised.rlim_cur = wanted
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit.rlim_cur = wanted }
        if limit.rlim_cur < needed {
            logger.warning(
                "the open-file limit is below what the connection limits need: connections past it will fail",
                metadata: ["limit": "\(limit.rlim_cur)", "needed": "\(needed)", "maxConnections": "\(configuration.maxConnections)",
                    "adminMaxConnections": "\(configuration.adminMaxConnections)"])
        } else {
            logger.info("raised the open-file limit", metadata: ["limit": "\(limit.rlim_cur)"])
        }
    }

    private func bindAdmin() async throws -> (any Channel)? {
        guard let port = configuration.adminPort else { return nil }
        let clusterRole: @Sendable () -> (leading: Bool, leader: String?)? = { [weak self] in self?.clusterRole }
        let readiness = readiness
        let service = service
        let metrics = metrics
        readThread.start()
        let reads = ReadQueue(
            api: ReadAPI(service: service, access: access, history: history, events: events, metrics: metrics, readiness: readiness, startedAt: startedAt),
            pool: readThread)
        if !Self.isLoopback(configuration.adminHost) {
            logger.notice(
                "the admin port is not on loopback: the read API's tokens cross the network in plaintext unless a mesh encrypts it",
                metadata: ["adminHost": "\(configuration.adminHost)"])
        }
        let adminLimiter = ConnectionLimiter(maximum: configuration.adminMaxConnections)
        let adminTimeout = TimeAmount.milliseconds(configuration.adminRequestTimeoutMilliseconds)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.addHandler(AdminAdmission(limiter: adminLimiter)).flatMap {
                    channel.pipeline.configureHTTPServerPipeline()
                }.flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(AdminConnectionGuard(timeout: adminTimeout))
                    try channel.pipeline.syncOperations.addHandler(
                        AdminHTTPHandler(
                            registry: MetricsBootstrap.registry,
                            problem: { readiness.problem ?? service.journal?.failureReason.map { "journal failing: \($0)" } },
                            refreshGauges: {
                                metrics.recordOpenHolds(service.openHolds)
                                metrics.recordBurn(service.burn)
                                let keys = service.idempotencyCounts
                                metrics.recordIdempotency(memoryKeys: keys.memory, forgottenInMemory: keys.forgottenEarly, disk: service.archive?.statistics)
                                if let journal = service.journal {
                                    metrics.recordJournal(healthy: journal.failureReason == nil, failures: journal.failureCount)
                                }
                                if let role = clusterRole() {
                                    metrics.recordCluster(leading: role.leading, journalSequence: service.journalPosition?.sequence ?? 0)
                                }
                            }, reads: reads))
                }
            }
        do {
            return try await bootstrap.bind(host: configuration.adminHost, port: port).get()
        } catch {
            throw ServerError("cannot listen on the admin port \(configuration.adminHost):\(port): \(error)")
        }
    }

    /// Closes every open gate connection at once, as a crash of the network between client
    /// and server would; the server keeps listening. For tests and for operators who need to
    /// push clients to reconnect.
    public func dropConnections() async {
        for channel in connections.withLock({ Array($0.values) }) {
            try? await channel.close()
        }
    }

    private func track(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        connections.withLock { $0[id] = channel }
        channel.closeFuture.whenComplete { [weak self] _ in
            self?.connections.withLock { _ = $0.removeValue(forKey: id) }
        }
    }

    /// Asks every connection to send what it has answered and close; closes any still open
    /// after the grace period.
    private func drainConnections() async {
        let open = connections.withLock { Array($0.values) }
        for channel in open {
            channel.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(DrainEvent()) }
        }
        let deadline = NIODeadline.now() + .milliseconds(configuration.shutdownGraceMilliseconds)
        while connections.withLock({ !$0.isEmpty }) && NIODeadline.now() < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        for channel in connections.withLock({ Array($0.values) }) {
            try? await channel.close()
        }
    }
}

public struct ServerError: Error, CustomStringConvertible {
    public var description: String
    /// The server stopped so that it can start again (a cluster node that lost its shard's
    /// leadership): tollgated exits with status 75 (EX_TEMPFAIL) for its supervisor to restart.
    public var restart = false

    public init(_ description: String, restart: Bool = false) {
        self.description = description
        self.restart = restart
    }
}
