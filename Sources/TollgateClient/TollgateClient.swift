import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import TollgateLedger
import TollgateWire

/// A client for tollgated: async/await, pipelined (many calls in flight on each connection),
/// a small pool of connections used in turn, a deadline on every call, and automatic retry of
/// mutating calls with the same idempotency key, so a retry can never charge twice.
///
/// ```swift
/// let gate = try await TollgateClient.connect(.init(host: "127.0.0.1", port: 7400))
/// let hold = try await gate.reserve(account: "acme", member: "ana", product: "ai.assistant", quantity: 1)
/// try await gate.commit(account: "acme", hold: hold.hold!, amount: .credits(10))
/// ```
public final class TollgateClient: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var clientName: String
        public var token: String
        /// Connections in the pool; calls are spread over them in turn.
        public var connections: Int
        public var connectTimeoutMilliseconds: Int64
        /// The default deadline of a call.
        public var requestTimeoutMilliseconds: Int64
        /// Further attempts of a mutating call after a retriable failure, with the same key.
        public var retries: Int
        public var retryBackoffMilliseconds: Int64
        /// TLS to the gate port; nil for plaintext.
        public var tls: TLSOptions?

        public init(
            host: String = "127.0.0.1", port: Int = 7400, clientName: String = "TollgateClient", token: String = "",
            connections: Int = 1, connectTimeoutMilliseconds: Int64 = 2_000, requestTimeoutMilliseconds: Int64 = 5_000,
            retries: Int = 3, retryBackoffMilliseconds: Int64 = 50, tls: TLSOptions? = nil
        ) {
            self.tls = tls
            self.host = host
            self.port = port
            self.clientName = clientName
            self.token = token
            self.connections = max(1, connections)
            self.connectTimeoutMilliseconds = connectTimeoutMilliseconds
            self.requestTimeoutMilliseconds = requestTimeoutMilliseconds
            self.retries = max(0, retries)
            self.retryBackoffMilliseconds = retryBackoffMilliseconds
        }
    }

    public let configuration: Configuration
    private let group: any EventLoopGroup
    private let ownsGroup: Bool
    private let pool: Mutex<[Connection?]>
    /// SUBSCRIBE connections still open, by channel, and whether `close` has run: `close` ends
    /// them before the event loops stop, and a stream dropped afterwards finds nothing to
    /// close (closing a channel whose loop has stopped schedules onto a dead loop, which NIO
    /// reports and will make a crash).
    private let subscriptions = Mutex<(closed: Bool, open: [ObjectIdentifier: Connection])>((false, [:]))
    private let next = Atomic<Int>(0)
    private let tlsContext: NIOSSLContext?

    private init(configuration: Configuration, group: any EventLoopGroup, ownsGroup: Bool, tlsContext: NIOSSLContext?) {
        self.tlsContext = tlsContext
        self.configuration = configuration
        self.group = group
        self.ownsGroup = ownsGroup
        self.pool = Mutex(Array(repeating: nil, count: configuration.connections))
    }

    /// Connects the first connection of the pool (the rest connect when first used).
    public static func connect(_ configuration: Configuration = Configuration(), group: (any EventLoopGroup)? = nil) async throws(TollgateError) -> TollgateClient {
        let tlsContext = try configuration.tls.map { options throws(TollgateError) in try options.makeContext() }
        let client = TollgateClient(
            configuration: configuration, group: group ?? MultiThreadedEventLoopGroup(numberOfThreads: 1), ownsGroup: group == nil,
            tlsContext: tlsContext)
        do {
            _ = try await client.connection(slot: 0)
        } catch {
            await client.close()
            throw error
        }
        return client
    }

    /// What the server said in its HELLO answer, from the first connection.
    public var serverHello: HelloAnswer? {
        pool.withLock { $0.first??.hello }
    }

    public func close() async {
        let connections = pool.withLock { pool in defer { pool = pool.map { _ in nil } }; return pool }
        for connection in connections { await connection?.close() }
        let streams = subscriptions.withLock { state in
            state.closed = true
            defer { state.open = [:] }
            return Array(state.open.values)
        }
        for connection in streams { await connection.close() }
        if ownsGroup { try? await group.shutdownGracefully() }
    }

    // MARK: - Sending

    private func connection(slot: Int) async throws(TollgateError) -> Connection {
        if let existing = pool.withLock({ $0[slot] }), existing.isActive { return existing }
        let connection = try await Connection.open(
            group: group, host: configuration.host, port: configuration.port, clientName: configuration.clientName,
            token: configuration.token, timeout: .milliseconds(configuration.connectTimeoutMilliseconds),
            tls: tlsContext.map { ($0, configuration.tls?.serverName ?? configuration.host) })
        let replaced = pool.withLock { pool in
            defer { pool[slot] = connection }
            return pool[slot]
        }
        await replaced?.close()
        return connection
    }

    /// Sends one request and returns the server's response, whatever it is. Mutating
    /// requests (`.command`) are retried with the same key after retriable failures.
    public func send(_ request: WireRequest, timeoutMilliseconds: Int64? = nil) async throws(TollgateError) -> WireResponse {
        let timeout = TimeAmount.milliseconds(timeoutMilliseconds ?? configuration.requestTimeoutMilliseconds)
        let attempts = request.isRetriable ? configuration.retries + 1 : 1
        var lastError = TollgateError.connection("not attempted")
        for attempt in 0..<attempts {
            if attempt > 0 {
                try? await Task.sleep(for: .milliseconds(configuration.retryBackoffMilliseconds << min(attempt - 1, 6)))
            }
            let slot = next.wrappingAdd(1, ordering: .relaxed).oldValue % configuration.connections
            do {
                let response = try await connection(slot: slot).send(request, timeout: timeout)
                if case .error(let error) = response, TollgateError.server(error).isRetriable, attempt + 1 < attempts {
                    lastError = .server(error)
                    continue
                }
                return response
            } catch {
                lastError = error
                guard error.isRetriable else { throw error }
            }
        }
        throw lastError
    }

    /// Sends a request whose answer is a ledger `Answer`; a refusal or an error throws.
    public func answer(_ request: WireRequest, timeoutMilliseconds: Int64? = nil) async throws(TollgateError) -> Answer {
        let response = try await send(request, timeoutMilliseconds: timeoutMilliseconds)
        switch response {
        case .answer(.refused(let refusal)): throw .refused(refusal)
        case .answer(let answer): return answer
        case .error(let error): throw .server(error)
        default: throw .unexpectedResponse("\(response)")
        }
    }

    /// Applies any command under `key` (a fresh random key when nil).
    public func apply(_ command: Command, key: String? = nil, timeoutMilliseconds: Int64? = nil) async throws(TollgateError) -> Answer {
        try await answer(.command(command, key: key ?? Self.newKey()), timeoutMilliseconds: timeoutMilliseconds)
    }

    /// A random 128-bit idempotency key, as 32 hex digits.
    public static func newKey() -> String {
        var generator = SystemRandomNumberGenerator()
        let high = generator.next() as UInt64
        let low = generator.next() as UInt64
        func hex(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return hex(high) + hex(low)
    }

    // MARK: - The gate

    public func ping(timeoutMilliseconds: Int64? = nil) async throws(TollgateError) {
        let response = try await send(.ping, timeoutMilliseconds: timeoutMilliseconds)
        guard case .pong = response else { throw .unexpectedResponse("\(response) to PING") }
    }

    public func check(account: String, member: String?, product: String, quantity: Int64) async throws(TollgateError) -> Decision {
        try decision(await answer(.check(DecisionRequest(account: account, member: member, product: product, quantity: quantity))))
    }

    public func reserve(
        account: String, member: String?, product: String, quantity: Int64, ttlMilliseconds: Int64 = 60_000, key: String? = nil
    ) async throws(TollgateError) -> Decision {
        let request = DecisionRequest(account: account, member: member, product: product, quantity: quantity)
        return try decision(await apply(.reserve(Reserve(request, ttlMicroseconds: ttlMilliseconds * 1_000)), key: key))
    }

    public func spend(account: String, member: String?, product: String, quantity: Int64, key: String? = nil) async throws(TollgateError) -> Decision {
        try decision(await apply(.spend(Spend(DecisionRequest(account: account, member: member, product: product, quantity: quantity))), key: key))
    }

    @discardableResult
    public func commit(account: String, hold: HoldID, amount: Commit.Amount = .held, final: Bool = true, key: String? = nil) async throws(TollgateError) -> CommitResult {
        let answer = try await apply(.commit(Commit(HoldReference(account: account, hold: hold), amount: amount, isFinal: final)), key: key)
        guard case .committed(let result) = answer else { throw .unexpectedResponse("\(answer) to COMMIT") }
        return result
    }

    @discardableResult
    public func release(account: String, hold: HoldID, key: String? = nil) async throws(TollgateError) -> ReleaseResult {
        let answer = try await apply(.release(HoldReference(account: account, hold: hold)), key: key)
        guard case .released(let result) = answer else { throw .unexpectedResponse("\(answer) to RELEASE") }
        return result
    }

    @discardableResult
    public func extend(account: String, hold: HoldID, ttlMilliseconds: Int64, key: String? = nil) async throws(TollgateError) -> ExtendResult {
        let answer = try await apply(.extend(Extend(HoldReference(account: account, hold: hold), ttlMicroseconds: ttlMilliseconds * 1_000)), key: key)
        guard case .extended(let result) = answer else { throw .unexpectedResponse("\(answer) to EXTEND") }
        return result
    }

    /// The balance now, or as it was at `at` (answered from checkpoints and the journal).
    public func balance(account: String, member: String? = nil, at: Instant? = nil) async throws(TollgateError) -> Balance {
        let request: WireRequest = at.map { .balanceAt(account: account, member: member, at: $0) } ?? .balance(account: account, member: member)
        let response = try await send(request)
        switch response {
        case .balance(let balance): return balance
        case .answer(.refused(let refusal)): throw .refused(refusal)
        case .error(let error): throw .server(error)
        default: throw .unexpectedResponse("\(response) to BALANCE")
        }
    }

    /// A stream of the server's events (alerts, recharges), on a connection of its own that
    /// closes when the stream is dropped or finished. `after` resumes after that sequence
    /// (the server keeps the recent ones); nil starts with the next event.
    public func subscribe(after: UInt64? = nil, account: String? = nil) async throws(TollgateError) -> (nextSequence: UInt64, events: AsyncStream<LedgerEvent>) {
        let connection = try await Connection.open(
            group: group, host: configuration.host, port: configuration.port, clientName: configuration.clientName,
            token: configuration.token, timeout: .milliseconds(configuration.connectTimeoutMilliseconds),
            tls: tlsContext.map { ($0, configuration.tls?.serverName ?? configuration.host) })
        let id = ObjectIdentifier(connection.channel)
        let registered = subscriptions.withLock { state in
            if state.closed { return false }
            state.open[id] = connection
            return true
        }
        guard registered else {
            await connection.close()
            throw .connection("the client is closed")
        }
        let (events, continuation) = AsyncStream.makeStream(of: LedgerEvent.self, bufferingPolicy: .bufferingNewest(100_000))
        // Dropped or finished: the stream's connection closes, unless `close` has closed it.
        continuation.onTermination = { [weak self] _ in
            guard let self, let mine = self.subscriptions.withLock({ $0.open.removeValue(forKey: id) }) else { return }
            mine.channel.close(promise: nil)
        }
        let response = try await connection.subscribe(
            .subscribe(after: after, account: account), timeout: .milliseconds(configuration.requestTimeoutMilliseconds), stream: continuation)
        switch response {
        case .subscribed(let next): return (next, events)
        case .error(let error):
            continuation.finish()
            throw .server(error)
        default:
            continuation.finish()
            throw .unexpectedResponse("\(response) to SUBSCRIBE")
        }
    }

    /// Many gate operations in one frame; each item's response in order.
    public func batch(_ items: [WireRequest]) async throws(TollgateError) -> [BatchItemResponse] {
        let response = try await send(.batch(items))
        switch response {
        case .batch(let answers): return answers
        case .error(let error): throw .server(error)
        default: throw .unexpectedResponse("\(response) to BATCH")
        }
    }

    private func decision(_ answer: Answer) throws(TollgateError) -> Decision {
        guard case .decision(let decision) = answer else { throw .unexpectedResponse("\(answer)") }
        return decision
    }
}

extension WireRequest {
    /// Mutating requests carry an idempotency key, so sending them again is safe.
    var isRetriable: Bool {
        switch self {
        case .command, .ping, .check, .balance, .balanceAt, .familyTransfer, .nodeFiles, .readNodeFile: true
        case .subscribe: false
        case .batch(let items): items.allSatisfy(\.isRetriable)
        case .hello: false
        }
    }
}
