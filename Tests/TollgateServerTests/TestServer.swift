import Foundation
import Logging
import NIOCore
import Synchronization
import ServiceLifecycle
import TollgateClient
import TollgateJournal
import TollgateLedger
import TollgateLedgerTestSupport
import TollgateServer
import TollgateWire

#if canImport(Glibc)
import Glibc
#endif

/// The wall clock a test server reads (a value, so a trailing closure still means `adjust`).
struct WallClock: Sendable {
    let now: @Sendable () -> Instant

    init(_ now: @escaping @Sendable () -> Instant) {
        self.now = now
    }
}

/// A real tollgated on loopback with free ports, run by a ServiceGroup as in production.
final class TestServer: Sendable {
    let server: TollgateServer
    let group: ServiceGroup
    let task: Task<Void, any Error>
    let port: Int
    let adminPort: Int

    static func start(
        journalFiles: any JournalFiles = SystemJournalFiles(), eventLogFiles: any JournalFiles = SystemJournalFiles(), logger custom: Logger? = nil,
        clock: WallClock = WallClock(wallClock), _ adjust: (inout ServerConfiguration) -> Void = { _ in }
    ) async throws -> TestServer {
        var configuration = ServerConfiguration()
        configuration.port = 0
        configuration.adminPort = 0
        configuration.threads = 2
        configuration.dataDirectory = NSTemporaryDirectory() + "tollgate-test-\(UUID().uuidString)"
        // Most tests are about the ledger and the protocol, not access: everyone is an admin.
        // AccessTests set their own credentials.
        configuration.credentials = .open
        adjust(&configuration)
        var logger = custom ?? Logger(label: "test-tollgated")
        if custom == nil { logger.logLevel = .warning }
        let server = TollgateServer(configuration: configuration, logger: logger, clock: clock.now, journalFiles: journalFiles, eventLogFiles: eventLogFiles)
        let group = ServiceGroup(configuration: .init(services: [server], gracefulShutdownSignals: [], logger: logger))
        let task = Task { try await group.run() }
        try await server.waitUntilListening()
        return TestServer(server: server, group: group, task: task)
    }

    private init(server: TollgateServer, group: ServiceGroup, task: Task<Void, any Error>) {
        self.server = server
        self.group = group
        self.task = task
        self.port = server.gateAddress?.port ?? 0
        self.adminPort = server.adminAddress?.port ?? 0
    }

    func client(
        connections: Int = 1, connectTimeoutMilliseconds: Int64 = 2_000, requestTimeoutMilliseconds: Int64 = 5_000, token: String = "",
        retries: Int = 3, tls: TLSOptions? = nil
    ) async throws -> TollgateClient {
        try await TollgateClient.connect(
            .init(
                port: port, token: token, connections: connections, connectTimeoutMilliseconds: connectTimeoutMilliseconds,
                requestTimeoutMilliseconds: requestTimeoutMilliseconds, retries: retries, tls: tls))
    }

    /// Graceful shutdown, as on SIGTERM; returns when the server has stopped.
    func stop() async throws {
        await group.triggerGracefulShutdown()
        try await task.value
    }
}

/// A plain socket for sending arbitrary bytes, as a misbehaving client would. The socket
/// blocks, so every call that can wait (connecting, sending, reading) runs on a thread of its
/// own (`OffPool.blocking`) while the test's task is suspended: a test blocked in `recv` on
/// the test pool would hold one of its two threads, and with it every in-process server and
/// client waiting to resume.
final class RawSocket: @unchecked Sendable {
    private(set) var descriptor: Int32

    private init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// Connects to 127.0.0.1:`port`; reads give up after `receiveTimeoutMilliseconds`.
    static func connect(port: Int, receiveTimeoutMilliseconds: Int = 3_000) async throws -> RawSocket {
        try await OffPool.blocking("raw-connect") { try RawSocket.connectBlocking(port: port, receiveTimeoutMilliseconds: receiveTimeoutMilliseconds) }
    }

    private static func connectBlocking(port: Int, receiveTimeoutMilliseconds: Int) throws -> RawSocket {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw ServerError("socket failed: \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            let code = errno
            close(descriptor)
            throw ServerError("connect failed: \(code)")
        }
        var timeout = timeval(tv_sec: receiveTimeoutMilliseconds / 1_000, tv_usec: (receiveTimeoutMilliseconds % 1_000) * 1_000)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return RawSocket(descriptor: descriptor)
    }

    deinit { shut() }

    /// Closes the socket once; a second close could hit a descriptor reused by someone else.
    /// `shutdown` first wakes a thread still blocked sending or reading on it.
    func shut() {
        if descriptor >= 0 {
            shutdown(descriptor, Int32(SHUT_RDWR))
            close(descriptor)
        }
        descriptor = -1
    }

    /// Wakes a thread blocked sending or reading on the socket (both directions are shut
    /// down); the descriptor stays open until `shut`, so it cannot be reused meanwhile.
    func interrupt() {
        if descriptor >= 0 { shutdown(descriptor, Int32(SHUT_RDWR)) }
    }

    /// Whether bytes (or the end of the stream) are waiting to be read, without waiting.
    func hasBytesToRead() -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) > 0
    }

    /// Sends every byte, or as many as the peer takes before the connection fails.
    func send(_ bytes: [UInt8]) async {
        let descriptor = descriptor
        await OffPool.blocking("raw-send") {
            var sent = 0
            while sent < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }
                sent += n
            }
        }
    }

    func send(_ request: WireRequest, id: UInt32) async {
        await send(Array(request.frame(requestID: id).bytes.readableBytesView))
    }

    func hello() async throws {
        await send(.hello(Hello(clientName: "raw")), id: 1)
        let (header, _) = try await readFrame()
        guard header.status == 0 else { throw ServerError("hello refused: \(header.status)") }
    }

    /// Reads exactly `count` bytes, or fewer if the connection closes or the timeout passes.
    func read(_ count: Int) async -> [UInt8] {
        let descriptor = descriptor
        return await OffPool.blocking("raw-read") { RawSocket.readBlocking(descriptor, count) }
    }

    /// What one recv returns: up to `count` bytes, as soon as any arrive (empty at the end).
    func readSome(_ count: Int) async -> [UInt8] {
        let descriptor = descriptor
        return await OffPool.blocking("raw-read") {
            var bytes = [UInt8](repeating: 0, count: count)
            let n = bytes.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, count, 0) }
            return Array(bytes.prefix(max(0, n)))
        }
    }

    private static func readBlocking(_ descriptor: Int32, _ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            let n = bytes.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress! + received, count - received, 0) }
            if n <= 0 { break }
            received += n
        }
        return Array(bytes.prefix(received))
    }

    func readFrame() async throws -> (FrameHeader, WireResponse) {
        let headerBytes = await read(FrameHeader.size)
        guard headerBytes.count == FrameHeader.size, let header = try FrameHeader.peek(ByteBuffer(bytes: headerBytes)) else {
            throw ServerError("no frame (got \(headerBytes.count) bytes)")
        }
        let body = await read(Int(header.bodyLength))
        let response = try WireResponse.decode(opcode: header.opcode, status: header.status, body: ByteBuffer(bytes: body))
        return (header, response)
    }

    /// True when the server has closed the connection (a read returns end of stream).
    /// Whether the server closed the connection: end of stream, or a reset — a server that
    /// closes with bytes of ours still unread in its socket makes the kernel send RST (a
    /// trickling client's last byte may arrive just before the close).
    func isClosedByServer() async -> Bool {
        let descriptor = descriptor
        return await OffPool.blocking("raw-read") {
            var byte: UInt8 = 0
            // Each recv gives up after the socket's receive timeout: a busy machine may take
            // longer than one to close, so it waits through several (30 s at most).
            for _ in 0..<10 {
                let result = recv(descriptor, &byte, 1, 0)
                if result == 0 || (result < 0 && errno == ECONNRESET) { return true }
                if result < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) { continue }
                return false
            }
            return false
        }
    }
}

/// A child process: started at once, and waited for (its output read, its exit reaped) on
/// threads of their own while the test's task is suspended.
final class ChildProcess: @unchecked Sendable {
    struct Result: Sendable {
        var status: Int32
        /// Standard output, followed by standard error unless they were kept apart.
        var output: String
        var errors: String
    }

    let process = Process()
    private let output = Pipe()
    private let errors: Pipe
    /// Standard error read by `waitForErrors(containing:)`, before `finish` reads the rest.
    private var errorsSoFar = ""

    var pid: Int32 { process.processIdentifier }

    /// Starts `program`; with `separateErrors`, standard error is kept apart from standard output.
    init(_ program: String, _ arguments: [String], input: String? = nil, environment: [String: String]? = nil, separateErrors: Bool = false) throws {
        errors = separateErrors ? Pipe() : output
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardOutput = output
        process.standardError = errors
        let stdin = Pipe()
        process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try? stdin.fileHandleForWriting.close()
    }

    /// Runs a program to completion.
    static func run(
        _ program: String, _ arguments: [String], input: String? = nil, environment: [String: String]? = nil, separateErrors: Bool = false
    ) async throws -> Result {
        try await ChildProcess(program, arguments, input: input, environment: environment, separateErrors: separateErrors).finish()
    }

    /// Reads standard error until it holds `text` (or closes).
    func waitForErrors(containing text: String) async {
        await OffPool.blocking("child-errors") {
            while !self.errorsSoFar.contains(text) {
                let chunk = self.errors.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                self.errorsSoFar += String(decoding: chunk, as: UTF8.self)
            }
        }
    }

    /// Waits for the exit; what it wrote. Standard error, if apart, is drained beside standard
    /// output, so neither pipe can fill up and stall the child.
    func finish() async -> Result {
        await OffPool.blocking("child-process") {
            let separate = self.errors !== self.output
            let errorText = Mutex(self.errorsSoFar)
            let drained = DispatchGroup()
            if separate {
                drained.enter()
                Thread.detachNewThread {
                    let text = String(decoding: self.errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                    errorText.withLock { $0 += text }
                    drained.leave()
                }
            }
            let text = String(decoding: self.output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            drained.wait()
            self.process.waitUntilExit()
            return Result(status: self.process.terminationStatus, output: text, errors: errorText.withLock { $0 })
        }
    }
}

/// A port nothing listens on right now, from the kernel (bind to port 0, read it, close): for
/// a child process that must be told its port. Ports the kernel hands out are not handed out
/// again at once, so another test's server does not land on it in the meantime.
func freePort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw ServerError("socket failed: \(errno)") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) } }
    guard bound == 0 else { throw ServerError("bind failed: \(errno)") }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

extension TollgateClient {
    /// The seeds' Team plan: acme with four seats and 400 pooled credits, rates 12/5/7, and a
    /// 1,000-credit top-up at priority 100 unless `topUp` is false.
    func setUpTeamPlan(account: String = "acme", topUp: Bool = true, now: Instant = Instant(microsecondsSinceEpoch: 0)) async throws {
        _ = try await apply(.setRate(product: "ai.assistant", creditsPerUnit: 12, effectiveAt: now))
        _ = try await apply(.setRate(product: "ai.preview", creditsPerUnit: 5, effectiveAt: now))
        _ = try await apply(.setRate(product: "ai.summary", creditsPerUnit: 7, effectiveAt: now))
        _ = try await apply(.createAccount(CreateAccount(account: account)))
        for seat in ["ana", "ben", "cy", "dee"] {
            _ = try await apply(.addMember(account: account, member: seat))
        }
        _ = try await apply(.addGrant(AddGrant(account: account, amount: 400, effectiveAt: now, source: .recurring)))
        if topUp {
            _ = try await apply(.addGrant(AddGrant(account: account, amount: 1_000, priority: 100, effectiveAt: now, source: .topUp)))
        }
    }
}

/// HTTP/1.1 by hand, one request per connection: what the admin port answers, byte for byte.
enum RawHTTP {
    struct Reply {
        var status: Int
        var head: String
        var body: String

        func header(_ name: String) -> String? {
            for line in head.split(separator: "\r\n") {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2, parts[0].lowercased() == name.lowercased() { return parts[1].trimmingCharacters(in: .whitespaces) }
            }
            return nil
        }

        /// The body as a JSON object.
        var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:]
        }
    }

    static func get(port: Int, path: String) async throws -> String {
        let reply = try await request(port: port, path: path)
        return reply.head + "\r\n\r\n" + reply.body
    }

    static func request(port: Int, path: String, method: String = "GET", token: String? = nil) async throws -> Reply {
        let socket = try await RawSocket.connect(port: port)
        var text = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if let token { text += "Authorization: Bearer \(token)\r\n" }
        await socket.send(Array((text + "\r\n").utf8))
        var bytes: [UInt8] = []
        while true {
            let chunk = await socket.read(4_096)
            if chunk.isEmpty { break }
            bytes += chunk
        }
        let reply = String(decoding: bytes, as: UTF8.self)
        guard let split = reply.range(of: "\r\n\r\n") else { throw ServerError("no HTTP head in \(reply.prefix(200))") }
        let head = String(reply[..<split.lowerBound])
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        return Reply(status: status, head: head, body: String(reply[split.upperBound...]))
    }
}
