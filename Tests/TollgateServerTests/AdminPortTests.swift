import Foundation
import Testing
import TollgateLedgerTestSupport
import TollgateServer

/// The admin HTTP port has limits of its own: a connection count apart from the gate's, and a
/// timeout for requests that never finish and connections left idle.
@Suite(.serialized) struct AdminPortTests {
    /// One keep-alive GET /healthz on an open connection, read until its body ("ok") is in.
    func healthz(on socket: RawSocket) async -> String {
        await socket.send(Array("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8))
        var answer = ""
        while !answer.contains("ok\n") {
            let chunk = await socket.readSome(4_096)
            if chunk.isEmpty { break }
            answer += String(decoding: chunk, as: UTF8.self)
        }
        return answer
    }

    @Test func theAdminPortRefusesConnectionsPastItsLimit() async throws {
        let server = try await TestServer.start {
            $0.adminMaxConnections = 3
            $0.adminRequestTimeoutMilliseconds = 600_000
        }
        // Three connections hold every place: each is answered once (so it has surely been
        // admitted), then starts a request it never finishes.
        var stuck: [RawSocket] = []
        for _ in 0..<3 {
            let socket = try await RawSocket.connect(port: server.adminPort, receiveTimeoutMilliseconds: 60_000)
            #expect(await healthz(on: socket).hasPrefix("HTTP/1.1 200"))
            await socket.send(Array("GET /healthz HTTP/1.1\r\nHost: localhost\r\n".utf8))
            stuck.append(socket)
        }
        let refused = try await RawHTTP.request(port: server.adminPort, path: "/healthz")
        #expect(refused.status == 503 && refused.body.contains("too many admin connections"))
        // The gate is not affected.
        let gate = try await server.client()
        try await gate.ping()
        // A place freed is a place taken again.
        await stuck.removeLast().shut()
        var status = 0
        for _ in 0..<300 where status != 200 {  // at most 30 s
            status = try await RawHTTP.request(port: server.adminPort, path: "/healthz").status
            if status != 200 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(status == 200)
        for socket in stuck { await socket.shut() }
        await gate.close()
        try await server.stop()
    }

    @Test func unfinishedAndIdleAdminConnectionsAreClosed() async throws {
        let server = try await TestServer.start { $0.adminRequestTimeoutMilliseconds = 300 }
        let unfinished = try await RawSocket.connect(port: server.adminPort, receiveTimeoutMilliseconds: 60_000)
        await unfinished.send(Array("GET /healthz HTTP/1.1\r\nHost: local".utf8))
        #expect(await unfinished.isClosedByServer())
        await unfinished.shut()
        // Kept alive after an answer, then idle.
        let idle = try await RawSocket.connect(port: server.adminPort, receiveTimeoutMilliseconds: 60_000)
        #expect(await healthz(on: idle).hasPrefix("HTTP/1.1 200"))
        #expect(await idle.isClosedByServer())
        await idle.shut()
        try await server.stop()
    }
}
