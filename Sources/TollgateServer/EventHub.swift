import Foundation
import Logging
import NIOCore
import Synchronization
import TollgateJournal
import TollgateLedger
import TollgateWire

/// Where the ledger's events (alerts, recharges) go: appended to `<data>/events/events.log`
/// (JSON lines, fsynced), kept in memory for subscribers that resume, pushed to SUBSCRIBE
/// streams, and posted to the webhook.
///
/// Events are numbered by the ledger and regenerated when the journal is replayed, so a
/// restart loses none: what the log already holds (by sequence) is skipped, and the webhook
/// resumes from its persisted cursor — at least once, never a gap. A checkpoint waits for the
/// events it includes to be in the log (`waitUntilLogged`), since the journal before a
/// checkpoint is not replayed again.
public final class EventHub: Sendable {
    public struct Settings: Sendable {
        public var directory: String?
        public var webhookURL: String?
        public var webhookTimeoutMilliseconds: Int64 = 5_000
        /// Recent events kept in memory for SUBSCRIBE `after`.
        public var recentKept = 10_000
        /// Events a subscriber may have unsent before it is cut off.
        public var subscriberQueueMax = 10_000

        public init(directory: String?, webhookURL: String? = nil) {
            self.directory = directory
            self.webhookURL = webhookURL
        }
    }

    struct Subscriber: Sendable {
        var channel: any Channel
        var requestID: UInt32
        var account: String?
        var queued: SharedCounter
        /// The last event written to this stream, touched only on the channel's event loop,
        /// where every write to it happens: the backlog and new events, in order, each once.
        var lastSent: NIOLoopBoundBox<UInt64>

        /// A frame of this stream, as bytes (the connection's pipeline has no frame encoder).
        func frame(_ response: WireResponse, opcode: Opcode) -> ByteBuffer {
            var bytes = channel.allocator.buffer(capacity: 256)
            response.writeFrame(opcode: opcode, requestID: requestID, to: &bytes)
            return bytes
        }
    }

    private struct State {
        /// The last event the log holds (on disk, fsynced).
        var lastLogged: UInt64 = 0
        /// The last event taken from the ledger: replays at start repeat what came before.
        var lastAccepted: UInt64 = 0
        var recent: [LedgerEvent] = []
        var subscribers: [ObjectIdentifier: Subscriber] = [:]
        var logFile: Int32 = -1
    }

    /// Events taken but not yet in the log, because writing it failed; retried with every
    /// batch and every `retryInterval`. Owned by the hub's thread. Checkpoints wait for them
    /// (`waitUntilLogged`), so the journal that produces them again is kept meanwhile.
    private let hubOwned = HubThreadState()
    static let retryInterval: TimeInterval = 0.1
    private let files: any JournalFiles

    let settings: Settings
    private let logger: Logger
    private let state = Mutex(State())
    /// Batches from the ledger, waiting for the hub's thread.
    private let queue = BatchQueue()
    let webhook: WebhookDelivery?
    private let metrics: ServerMetrics

    init(settings: Settings, logger: Logger, metrics: ServerMetrics, files: any JournalFiles = SystemJournalFiles()) {
        self.settings = settings
        self.files = files
        self.logger = logger
        self.metrics = metrics
        if let url = settings.webhookURL {
            webhook = WebhookDelivery(
                url: url, cursorFile: settings.directory.map { $0 + "/webhook.cursor" }, timeoutMilliseconds: settings.webhookTimeoutMilliseconds,
                logger: logger, metrics: metrics)
        } else {
            webhook = nil
        }
    }

    /// The last sequence the log holds.
    public var lastLogged: UInt64 { state.withLock { $0.lastLogged } }

    /// The account's most recent events that are in the log, newest first.
    func recent(account: String, limit: Int) -> [LedgerEvent] {
        state.withLock { state in Array(state.recent.reversed().lazy.filter { $0.account == account }.prefix(limit)) }
    }

    /// Opens the log and reads where it ends, and what the webhook has still to deliver.
    func open() throws {
        guard let directory = settings.directory else { return }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw ServerError("cannot create the events directory \(directory): \(String(cString: strerror(errno)))")
        }
        let path = directory + "/events.log"
        var loaded: [LedgerEvent] = []
        if let data = FileManager.default.contents(atPath: path) {
            for line in data.split(separator: UInt8(ascii: "\n")) {
                if let event = EventJSON.decode(Data(line)) { loaded.append(event) }
            }
        }
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ServerError("cannot open \(path): \(String(cString: strerror(errno)))") }
        state.withLock { state in
            state.logFile = fd
            state.lastLogged = loaded.last?.sequence ?? 0
            state.lastAccepted = state.lastLogged
            state.recent = Array(loaded.suffix(settings.recentKept))
        }
        if let webhook { webhook.load(backlog: loaded) }
    }

    /// Takes events from the ledger's lock: cheap (a short lock and a signal), never waits
    /// for the log.
    func accept(_ events: [LedgerEvent], covering sequence: UInt64 = 0) {
        queue.put(Batch(events: events, covering: sequence))
    }

    /// In `sync` mode, set once recovery is done: the journal whose records must be kept before
    /// the events they produced are logged, streamed or sent (nothing not kept is shown).
    private let keptBy = Mutex<JournalWriter?>(nil)

    func holdEvents(until journal: JournalWriter) {
        keptBy.withLock { $0 = journal }
    }

    /// Waits (on the hub's thread) until the journal keeps `sequence`; false if it never will
    /// (it stopped first), and the batch is dropped: its records are not kept either.
    private func kept(_ sequence: UInt64) -> Bool {
        guard sequence > 0, let journal = keptBy.withLock({ $0 }) else { return true }
        while !journal.waitUntilDurable(sequence, timeoutMilliseconds: 1_000) {
            if journal.hasStopped { return journal.durableSequence >= sequence }
        }
        return true
    }

    /// Writes, fans out and delivers until `stop`. Writing the log is a write and an fsync per
    /// batch: that happens on a thread of the hub's own, not on the Swift concurrency pool,
    /// which the rest of the process shares (one thread per core).
    func run() async {
        if let webhook {
            Task { await webhook.run() }
        }
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let thread = Thread { [self] in
                nameCurrentThread("tg-events")
                while let batches = queue.takeAll(timeout: Self.retryInterval) {
                    for batch in batches where kept(batch.covering) { process(batch.events) }
                    if !hubOwned.unlogged.isEmpty { writeUnlogged() }
                }
                done.resume()
            }
            thread.name = "tollgate-events"
            thread.start()
        }
        webhook?.stop()
    }

    /// Ends `run` once the batches already accepted are processed.
    /// In a cluster only the shard's leader posts to the webhook: a follower's replayed
    /// events are logged and streamed, and posted once it leads (from its own cursor, so an
    /// event the old leader posted may be posted again: receivers deduplicate by its id).
    public func holdWebhook(_ held: Bool) {
        webhook?.setPaused(held)
    }

    func stop() {
        queue.close()
    }

    private func process(_ batch: [LedgerEvent]) {
        let fresh: [LedgerEvent] = state.withLock { state in
            let fresh = batch.filter { $0.sequence > state.lastAccepted }
            guard let last = fresh.last else { return [] }
            state.lastAccepted = last.sequence
            state.recent.append(contentsOf: fresh)
            if state.recent.count > settings.recentKept { state.recent.removeFirst(state.recent.count - settings.recentKept) }
            return fresh
        }
        guard !fresh.isEmpty else { return }
        hubOwned.unlogged += fresh
        writeUnlogged()
        for event in fresh { metrics.recordEvent(event) }
        let subscribers = state.withLock { Array($0.subscribers.values) }
        for subscriber in subscribers {
            for event in fresh where subscriber.account == nil || subscriber.account == event.account {
                push(event, to: subscriber)
            }
        }
        webhook?.enqueue(fresh)
    }

    /// Appends the events not yet logged and fsyncs; on failure cuts back what reached the
    /// file and keeps them for the next try, so the log never skips one or holds one twice,
    /// and `lastLogged` only says what is really there.
    private func writeUnlogged() {
        guard let last = hubOwned.unlogged.last else { return }
        let file = state.withLock { $0.logFile }
        guard file >= 0 else {
            // No log (journalMode none): nothing is kept, so nothing is waited for.
            state.withLock { $0.lastLogged = last.sequence }
            hubOwned.unlogged = []
            return
        }
        var text = Data()
        for event in hubOwned.unlogged {
            text.append(EventJSON.encode(event))
            text.append(UInt8(ascii: "\n"))
        }
        let end = lseek(file, 0, SEEK_END)
        let written = text.withUnsafeBytes { files.write(file, $0) }
        guard end >= 0, written == text.count, files.sync(file) == 0 else {
            let reason = String(cString: strerror(errno))
            if end >= 0 { _ = ftruncate(file, end) }
            if !hubOwned.logFailing {
                logger.error("cannot write the event log; keeping \(hubOwned.unlogged.count) events to try again: \(reason)")
                hubOwned.logFailing = true
            }
            return
        }
        if hubOwned.logFailing {
            logger.notice("the event log is written again", metadata: ["through": "\(last.sequence)"])
            hubOwned.logFailing = false
        }
        state.withLock { $0.lastLogged = last.sequence }
        hubOwned.unlogged = []
    }

    /// Blocks (the checkpoint thread) until the log holds every event up to `sequence`.
    func waitUntilLogged(_ sequence: UInt64, timeoutMilliseconds: Int = 5_000) -> Bool {
        for _ in 0..<timeoutMilliseconds {
            if lastLogged >= sequence { return true }
            usleep(1_000)
        }
        return lastLogged >= sequence
    }

    // MARK: - Subscribers

    /// Registers a SUBSCRIBE stream; called on the channel's event loop. Recent events past
    /// `after` are sent first (without one, the connection passes the sequence its answer
    /// named, less one, so nothing decided in between is missed); if the server no longer has
    /// them all, the stream is refused with a message saying so.
    func subscribe(channel: any Channel, requestID: UInt32, after: UInt64?, account: String?) -> WireError? {
        let subscriber = Subscriber(
            channel: channel, requestID: requestID, account: account, queued: SharedCounter(),
            lastSent: NIOLoopBoundBox(after ?? 0, eventLoop: channel.eventLoop))
        let backlog: [LedgerEvent]? = state.withLock { state in
            if let after {
                // Events after `after` were dropped if the oldest kept is past `after + 1` (compared
                // without adding: `after` comes from the client and may be 2^64 − 1).
                if let first = state.recent.first, after < first.sequence, first.sequence - after > 1, state.lastAccepted > after { return nil }
                state.subscribers[ObjectIdentifier(channel)] = subscriber
                return state.recent.filter { $0.sequence > after }
            }
            state.subscribers[ObjectIdentifier(channel)] = subscriber
            return []
        }
        guard let backlog else {
            return WireError(.unavailable, "events after \(after ?? 0) are older than the \(settings.recentKept) kept in memory; read them from the event log or the journal export")
        }
        for event in backlog where account == nil || account == event.account { push(event, to: subscriber) }
        return nil
    }

    func unsubscribe(_ channel: any Channel) {
        _ = state.withLock { $0.subscribers.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    private func push(_ event: LedgerEvent, to subscriber: Subscriber) {
        guard subscriber.queued.increment() <= settings.subscriberQueueMax else {
            unsubscribe(subscriber.channel)
            let error = WireResponse.error(WireError(.tooManyInFlight, "more than \(settings.subscriberQueueMax) events unread; the subscription is ended"))
            subscriber.channel.writeAndFlush(subscriber.frame(error, opcode: .subscribe), promise: nil)
            return
        }
        let counter = subscriber.queued
        let write = {
            // The backlog and the hub's thread may both hold an event: it goes out once.
            guard event.sequence > subscriber.lastSent.value else {
                counter.decrement()
                return
            }
            subscriber.lastSent.value = event.sequence
            subscriber.channel.writeAndFlush(subscriber.frame(.event(event), opcode: .event)).whenComplete { _ in counter.decrement() }
        }
        if subscriber.channel.eventLoop.inEventLoop { write() } else { subscriber.channel.eventLoop.execute(write) }
    }
}

/// Events from one step of the ledger, and the last journal record appended when they were
/// taken (0: none to wait for).
struct Batch: Sendable {
    var events: [LedgerEvent]
    var covering: UInt64
}

/// Event batches handed from the ledger's lock to the hub's thread, in order.
final class BatchQueue: @unchecked Sendable {
    private let condition = NSCondition()
    private var batches: [Batch] = []
    private var closed = false

    func put(_ batch: Batch) {
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return }
        batches.append(batch)
        condition.signal()
    }

    /// Every batch waiting, in order, once there is one or `timeout` has passed (then
    /// perhaps none); nil once closed and empty.
    func takeAll(timeout: TimeInterval) -> [Batch]? {
        condition.lock()
        defer { condition.unlock() }
        if batches.isEmpty && !closed { _ = condition.wait(until: Date(timeIntervalSinceNow: timeout)) }
        guard !batches.isEmpty || !closed else { return nil }
        defer { batches = [] }
        return batches
    }

    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }
}

/// What only the hub's own thread touches: events the log does not have yet.
final class HubThreadState: @unchecked Sendable {
    var unlogged: [LedgerEvent] = []
    var logFailing = false
}

/// A counter shared between threads.
final class SharedCounter: Sendable {
    private let value = Atomic<Int>(0)

    func increment() -> Int { value.wrappingAdd(1, ordering: .relaxed).newValue }
    func decrement() { value.wrappingSubtract(1, ordering: .relaxed) }
}

/// Events as JSON: the event log's lines and the webhook's bodies.
///
/// ```json
/// {"id":"tollgate-event-7","sequence":7,"type":"alert","at":"2026-11-21T10:00:00.000000Z",
///  "atMicroseconds":1795255200000000,"account":"acme","member":null,"alert":"low","threshold":10,"balance":9}
/// ```
/// `type` is `alert`, `depleted`, `recharged` (with `grant` and `amount`) or `softLimit` (with
/// `level`, `subject`, `window`, `limit` and `used`, and no balance). `id` is the same
/// on every delivery of one event: receivers de-duplicate by it.
enum EventJSON {
    static func encode(_ event: LedgerEvent) -> Data {
        LedgerJSON.data(object(event))
    }

    static func object(_ event: LedgerEvent) -> [String: Any] {
        var fields: [(String, Any)] = [
            ("id", "tollgate-event-\(event.sequence)"), ("sequence", event.sequence), ("at", event.at.description),
            ("atMicroseconds", event.at.microsecondsSinceEpoch), ("account", event.account), ("member", event.member as Any? ?? NSNull()),
        ]
        switch event.kind {
        case .alert(let id, let threshold, let balance):
            fields += [("type", "alert"), ("alert", id), ("threshold", threshold), ("balance", balance)]
        case .depleted(let id, let balance):
            fields += [("type", "depleted"), ("alert", id), ("threshold", Int64(0)), ("balance", balance)]
        case .recharged(let grant, let amount, let balance):
            fields += [("type", "recharged"), ("grant", grant), ("amount", amount), ("balance", balance)]
        case .softLimit(let level, let subject, let window, let limit, let used):
            fields += [("type", "softLimit"), ("level", level.name), ("subject", subject), ("window", window.name), ("limit", limit), ("used", used)]
        }
        var object: [String: Any] = [:]
        for (key, value) in fields { object[key] = value }
        return object
    }

    static func decode(_ data: Data) -> LedgerEvent? {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let sequence = (object["sequence"] as? NSNumber)?.uint64Value,
            let at = (object["atMicroseconds"] as? NSNumber)?.int64Value,
            let account = object["account"] as? String,
            let type = object["type"] as? String
        else { return nil }
        let member = object["member"] as? String
        let balance = (object["balance"] as? NSNumber)?.int64Value ?? 0
        let kind: LedgerEvent.Kind
        switch type {
        case "alert":
            guard let id = object["alert"] as? String, let threshold = (object["threshold"] as? NSNumber)?.int64Value else { return nil }
            kind = .alert(id: id, threshold: threshold, balance: balance)
        case "depleted":
            guard let id = object["alert"] as? String else { return nil }
            kind = .depleted(id: id, balance: balance)
        case "recharged":
            guard let grant = (object["grant"] as? NSNumber)?.uint64Value, let amount = (object["amount"] as? NSNumber)?.int64Value else { return nil }
            kind = .recharged(grant: grant, amount: amount, balance: balance)
        case "softLimit":
            guard let level = (object["level"] as? String).flatMap({ name in LedgerError.Level.allCases.first { $0.name == name } }),
                let subject = object["subject"] as? String, let window = (object["window"] as? String).flatMap(CapWindow.init(name:)),
                let limit = (object["limit"] as? NSNumber)?.int64Value, let used = (object["used"] as? NSNumber)?.int64Value
            else { return nil }
            kind = .softLimit(level: level, subject: subject, window: window, limit: limit, used: used)
        default:
            return nil
        }
        return LedgerEvent(sequence: sequence, at: Instant(microsecondsSinceEpoch: at), account: account, member: member, kind: kind)
    }
}
