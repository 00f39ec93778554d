import Foundation
import NIOCore
import Synchronization
import Testing
import TollgateClient
import TollgateLedger
import TollgateServer
import TollgateWire

/// Misbehaving clients get a clear error, and nobody else notices.
@Suite(.serialized) struct BadInputTests {
    /// A well-behaved client on its own connection must keep working throughout.
    /// Another client connects and is answered while the misbehaving one is at it. The
    /// connection's timeout is generous: on a machine busy with the rest of the suite, a
    /// handshake once took more than the default 2 s (`timed out` in a full run); what this
    /// checks is that the bystander is served, not how fast a loaded machine is.
    func bystanderWorks(_ server: TestServer) async throws {
        let gate = try await server.client(connectTimeoutMilliseconds: 15_000, requestTimeoutMilliseconds: 15_000)
        try await gate.ping()
        _ = try await gate.balance(account: "acme")
        await gate.close()
    }

    @Test func aTruncatedFrameThenCloseLeavesTheServerServing() async throws {
        let server = try await TestServer.start()
        try await server.client().setUpTeamPlan()
        let socket = try await RawSocket.connect(port: server.port)
        try await socket.hello()
        let bytes = Array(WireRequest.check(DecisionRequest(account: "acme", member: "ana", product: "ai.assistant", quantity: 1)).frame(requestID: 2).bytes.readableBytesView)
        await socket.send(Array(bytes.prefix(bytes.count - 3)))
        socket.shut()
        try await bystanderWorks(server)
        try await server.stop()
    }

    @Test func anOversizedLengthIsRefusedAndClosed() async throws {
        let server = try await TestServer.start { $0.maxFrameBody = 4_096 }
        try await server.client().setUpTeamPlan()
        let socket = try await RawSocket.connect(port: server.port)
        try await socket.hello()
        await socket.send([0x54, 0x47, 0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x01, 0x00, 0x00, 0x00])
        let (header, response) = try await socket.readFrame()
        #expect(header.opcode == Opcode.error.rawValue)
        #expect(response == .error(WireError(.frameTooLarge, "body of 16777216 bytes exceeds the limit of 4096")))
        #expect(await socket.isClosedByServer())
        try await bystanderWorks(server)
        try await server.stop()
    }

    @Test func anUnknownOpcodeIsAnsweredAndTheConnectionStaysOpen() async throws {
        let server = try await TestServer.start()
        try await server.client().setUpTeamPlan()
        let socket = try await RawSocket.connect(port: server.port)
        try await socket.hello()
        await socket.send([0x54, 0x47, 0x01, 0x7E, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x03, 0xAA, 0xBB, 0xCC])
        let (header, response) = try await socket.readFrame()
        #expect(header.requestID == 9 && header.opcode == Opcode.error.rawValue)
        #expect(response.status == ProtocolStatus.unknownOpcode.rawValue)
        await socket.send(.ping, id: 10)
        let (pong, _) = try await socket.readFrame()
        #expect(pong.requestID == 10 && pong.status == 0)
        try await server.stop()
    }

    @Test func aMalformedBodyIsAnsweredAndTheConnectionStaysOpen() async throws {
        let server = try await TestServer.start()
        let socket = try await RawSocket.connect(port: server.port)
        try await socket.hello()
        await socket.send([0x54, 0x47, 0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01, 0x00])
        let (header, response) = try await socket.readFrame()
        #expect(header.requestID == 4 && header.opcode == Opcode.check.rawValue)
        #expect(response == .error(WireError(.malformedFrame, "account is cut short")))
        await socket.send(.ping, id: 5)
        #expect(try await socket.readFrame().0.status == 0)
        try await server.stop()
    }

    @Test func garbageAfterAGoodFrameGetsTheGoodAnswerThenAnErrorAndAClose() async throws {
        let server = try await TestServer.start()
        try await server.client().setUpTeamPlan()
        let socket = try await RawSocket.connect(port: server.port)
        try await socket.hello()
        await socket.send(Array(WireRequest.ping.frame(requestID: 2).bytes.readableBytesView) + Array("GET / HTTP/1.1\r\n\r\n".utf8))
        let (first, _) = try await socket.readFrame()
        #expect(first.requestID == 2 && first.status == 0)
        let (second, error) = try await socket.readFrame()
        #expect(second.opcode == Opcode.error.rawValue && error.status == ProtocolStatus.badFrame.rawValue)
        #expect(await socket.isClosedByServer())
        try await bystanderWorks(server)
        try await server.stop()
    }

    @Test func aRequestBeforeHelloIsRefusedAndClosed() async throws {
        let server = try await TestServer.start()
        let socket = try await RawSocket.connect(port: server.port)
        await socket.send(.ping, id: 1)
        let (header, response) = try await socket.readFrame()
        #expect(header.requestID == 1 && response.status == ProtocolStatus.handshakeRequired.rawValue)
        #expect(await socket.isClosedByServer())
        try await server.stop()
    }

    @Test func anUnsupportedVersionIsRefusedAndClosed() async throws {
        let server = try await TestServer.start()
        let socket = try await RawSocket.connect(port: server.port)
        await socket.send(.hello(Hello(minVersion: 2, maxVersion: 3, clientName: "future")), id: 1)
        let (header, response) = try await socket.readFrame()
        // The HELLO's own response (PROTOCOL.md §4), not a connection-level ERROR frame.
        #expect(header.opcode == Opcode.hello.rawValue && header.requestID == 1 && header.isResponse)
        #expect(response.status == ProtocolStatus.unsupportedVersion.rawValue)
        #expect(await socket.isClosedByServer())
        try await server.stop()
    }

    @Test func requestIDZeroAndARequestWithAStatusAreMalformed() async throws {
        let server = try await TestServer.start()
        let socket = try await RawSocket.connect(port: server.port)
        try await socket.hello()
        await socket.send(.ping, id: 0)
        let (zero, zeroError) = try await socket.readFrame()
        #expect(zero.opcode == Opcode.ping.rawValue && zeroError.status == ProtocolStatus.malformedFrame.rawValue)
        var frame = ByteBuffer()
        FrameHeader(opcode: Opcode.ping.rawValue, isResponse: false, status: 7, requestID: 9, bodyLength: 0).write(to: &frame)
        await socket.send(Array(frame.readableBytesView))
        let (statused, statusError) = try await socket.readFrame()
        #expect(statused.requestID == 9 && statusError.status == ProtocolStatus.malformedFrame.rawValue)
        await socket.send(.ping, id: 10)
        #expect(try await socket.readFrame().0.status == 0)
        try await server.stop()
    }

    @Test func aClientTricklingBytesIsClosedAtTheIdleTimeout() async throws {
        let server = try await TestServer.start { $0.idleTimeoutMilliseconds = 400 }
        try await server.client().setUpTeamPlan()
        let socket = try await RawSocket.connect(port: server.port)
        try await socket.hello()
        // A frame that announces a 100-byte body, whose body then comes a byte at a time,
        // 150 ms apart: bytes keep arriving (far more often than the idle timeout), but no
        // request is ever complete. The server must close it anyway; a server that counted
        // bytes as activity would let it trickle all 100.
        var head = ByteBuffer()
        FrameHeader(opcode: Opcode.check.rawValue, isResponse: false, status: 0, requestID: 2, bodyLength: 100).write(to: &head)
        await socket.send(Array(head.readableBytesView))
        var trickled = 0
        while trickled < 100, !socket.hasBytesToRead() {
            await socket.send([0])
            trickled += 1
            try await Task.sleep(for: .milliseconds(150))
        }
        #expect(trickled < 100, "the server let a frame trickle in for \(trickled) bytes")
        let (header, response) = try await socket.readFrame()
        #expect(header.opcode == Opcode.error.rawValue)
        #expect(response.status == ProtocolStatus.idleTimeout.rawValue)
        #expect(await socket.isClosedByServer())
        try await bystanderWorks(server)
        try await server.stop()
    }

    @Test func aClientThatNeverReadsIsHeldBackAndOthersKeepWorking() async throws {
        let server = try await TestServer.start { $0.maxInFlight = 64 }
        try await server.client().setUpTeamPlan()
        let socket = try await RawSocket.connect(port: server.port)
        try await socket.hello()
        // 200,000 pings (3.2 MB) without reading a single answer: the sends block (on a thread
        // of their own) once the server stops reading.
        let ping = Array(WireRequest.ping.frame(requestID: 7).bytes.readableBytesView)
        let stop = Atomic<Bool>(false)
        let writer = Task {
            var burst: [UInt8] = []
            for _ in 0..<1_000 { burst += ping }
            for _ in 0..<200 where !stop.load(ordering: .relaxed) { await socket.send(burst) }
        }
        try await Task.sleep(for: .milliseconds(500))
        try await bystanderWorks(server)
        // Wake the blocked send, let the writer finish, then close.
        stop.store(true, ordering: .relaxed)
        socket.interrupt()
        _ = await writer.result
        socket.shut()
        try await bystanderWorks(server)
        try await server.stop()
    }

    @Test func connectionsBeyondTheLimitAreToldSoAndClosed() async throws {
        let server = try await TestServer.start { $0.maxConnections = 2 }
        let first = try await server.client()
        let second = try await server.client()
        let third = try await RawSocket.connect(port: server.port)
        let (header, response) = try await third.readFrame()
        #expect(header.opcode == Opcode.error.rawValue && response.status == ProtocolStatus.tooManyConnections.rawValue)
        #expect(await third.isClosedByServer())
        try await first.ping()
        await first.close()
        await second.close()
        try await server.stop()
    }

    @Test(arguments: [ServerConfiguration.JournalModeSetting.async, .sync])
    func gracefulShutdownAnswersWhatWasAskedThenStops(journal: ServerConfiguration.JournalModeSetting) async throws {
        let server = try await TestServer.start { $0.journalMode = journal }
        let gate = try await server.client()
        try await gate.setUpTeamPlan()
        // Requests in flight while shutdown begins all get answers.
        let answers = try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<50 {
                group.addTask {
                    do {
                        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "drain-\(index)")
                        return true
                    } catch {
                        guard let failure = error as? TollgateError, case .refused = failure else { return false }
                        return true
                    }
                }
            }
            var answered = 0
            for try await ok in group where ok { answered += 1 }
            return answered
        }
        #expect(answers == 50)
        try await server.stop()
        #expect(server.server.readiness.problem == "shutting down")
        // The port is closed: a new connection is refused.
        await #expect(throws: TollgateError.self) { _ = try await TollgateClient.connect(.init(port: server.port, retries: 0)) }
        await gate.close()
    }
}
