import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOPosix
import Testing
import TollgateClient
import TollgateLedger
import TollgateServer
import TollgateWire

@Suite(.serialized) struct ServerTests {
    @Test func theTeamPlanOverTheWire() async throws {
        let server = try await TestServer.start()
        let gate = try await server.client()
        try await gate.setUpTeamPlan(topUp: false)
        let reserved = try await gate.reserve(account: "acme", member: "ana", product: "ai.assistant", quantity: 1)
        #expect(reserved.cost == 12 && reserved.hold != nil)
        let committed = try await gate.commit(account: "acme", hold: reserved.hold!, amount: .credits(10))
        #expect(committed.committed == 10 && committed.returned == 2)
        var spends = 0
        while true {
            do {
                _ = try await gate.spend(account: "acme", member: "ben", product: "ai.summary", quantity: 10)
                spends += 1
            } catch {
                guard case .refused(let refusal) = error else { throw error }
                #expect(refusal.error.code == .insufficientFunds)
                #expect(refusal.headroom?.funds == 390 - 70 * Int64(spends))
                break
            }
        }
        #expect(spends == 5)
        let balance = try await gate.balance(account: "acme")
        #expect(balance.funds.pool == 40)
        await gate.close()
        try await server.stop()
    }

    @Test func aRetryWithTheSameKeyGetsTheSameHold() async throws {
        let server = try await TestServer.start()
        let gate = try await server.client()
        try await gate.setUpTeamPlan()
        let first = try await gate.reserve(account: "acme", member: "ana", product: "ai.assistant", quantity: 2, key: "agent-step-9")
        let retry = try await gate.reserve(account: "acme", member: "ana", product: "ai.assistant", quantity: 2, key: "agent-step-9")
        #expect(first == retry)
        #expect(try await gate.balance(account: "acme").funds.pool == 1_400 - 24)
        await #expect(throws: TollgateError.self) {
            _ = try await gate.reserve(account: "acme", member: "ana", product: "ai.assistant", quantity: 3, key: "agent-step-9")
        }
        await gate.close()
        try await server.stop()
    }

    @Test func manyClientsRacingOnOnePoolNeverOverspendOrLoseAnAnswer() async throws {
        let server = try await TestServer.start()
        let setup = try await server.client()
        try await setup.setUpTeamPlan(topUp: false)
        let clients = 16
        let attempts = 40
        let results = try await withThrowingTaskGroup(of: (allowed: Int, refused: Int, committed: Int64).self) { group in
            for index in 0..<clients {
                group.addTask {
                    let gate = try await server.client(connections: 2)
                    var allowed = 0
                    var refused = 0
                    var committed: Int64 = 0
                    for attempt in 0..<attempts {
                        do {
                            let decision = try await gate.reserve(account: "acme", member: ["ana", "ben", "cy", "dee"][index % 4], product: "ai.preview", quantity: 1)
                            allowed += 1
                            let result = try await gate.commit(account: "acme", hold: decision.hold!, amount: .credits(attempt % 2 == 0 ? 5 : 3))
                            committed += result.committed
                        } catch {
                            guard let failure = error as? TollgateError, case .refused(let refusal) = failure else { throw error }
                            #expect(refusal.error.code == .insufficientFunds)
                            refused += 1
                        }
                    }
                    await gate.close()
                    return (allowed, refused, committed)
                }
            }
            var totals = (allowed: 0, refused: 0, committed: Int64(0))
            for try await result in group {
                totals.allowed += result.allowed
                totals.refused += result.refused
                totals.committed += result.committed
            }
            return totals
        }
        // Every request got exactly one answer, and the pool was never overspent.
        #expect(results.allowed + results.refused == clients * attempts)
        #expect(results.committed <= 400)
        let balance = try await setup.balance(account: "acme")
        #expect(balance.funds.pool == 400 - results.committed)
        #expect(server.server.service.snapshot.invariantViolations().isEmpty)
        await setup.close()
        try await server.stop()
    }

    @Test func batchesCarryManyDecisions() async throws {
        let server = try await TestServer.start()
        let gate = try await server.client()
        try await gate.setUpTeamPlan(topUp: false)
        let request = DecisionRequest(account: "acme", member: "ana", product: "ai.assistant", quantity: 1)
        let items: [WireRequest] = (0..<40).map { .command(.spend(Spend(request)), key: "batch-\($0)") }
        let answers = try await gate.batch(items)
        #expect(answers.count == 40)
        let allowed = answers.filter { if case .answer(.decision) = $0.response { true } else { false } }.count
        #expect(allowed == 33)
        #expect(answers.last?.response.status == LedgerError.Code.insufficientFunds.rawValue)
        await gate.close()
        try await server.stop()
    }

    @Test func theAdminPortAnswersHealthReadinessAndMetrics() async throws {
        let server = try await TestServer.start()
        let gate = try await server.client()
        try await gate.ping()
        func get(_ path: String) async throws -> String {
            let socket = try await RawSocket.connect(port: server.adminPort)
            await socket.send(Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8))
            var text = ""
            while true {
                let chunk = await socket.read(4_096)
                if chunk.isEmpty { break }
                text += String(decoding: chunk, as: UTF8.self)
            }
            return text
        }
        #expect(try await get("/healthz").hasPrefix("HTTP/1.1 200"))
        #expect(try await get("/readyz").contains("ready"))
        let metrics = try await get("/metrics")
        // Every opcode's `ok` series exists from the start; the ping above counted in this one.
        let pings = metrics.split(separator: "\n").first { $0.hasPrefix("tollgate_requests_total{operation=\"ping\",outcome=\"ok\"} ") }
        #expect(pings.flatMap { Double($0.split(separator: " ").last ?? "") }.map { $0 >= 1 } == true)
        #expect(metrics.contains("tollgate_requests_total{operation=\"reserve\",outcome=\"ok\"}"))
        #expect(metrics.contains("tollgate_request_duration_seconds_bucket"))
        #expect(metrics.contains("tollgate_open_holds"))
        #expect(metrics.contains("tollgate_connections"))
        #expect(try await get("/nothing").hasPrefix("HTTP/1.1 404"))
        await gate.close()
        try await server.stop()
    }
}

@Suite(.serialized) struct ClientTests {
    @Test func aDroppedConnectionIsRetriedWithTheSameKeyAndNeverChargesTwice() async throws {
        let server = try await TestServer.start()
        let gate = try await server.client()
        try await gate.setUpTeamPlan(topUp: false)
        let first = try await gate.spend(account: "acme", member: "ana", product: "ai.assistant", quantity: 1, key: "tool-call-1")
        await server.server.dropConnections()
        // The client reconnects and sends the same key again: the first answer comes back.
        let again = try await gate.spend(account: "acme", member: "ana", product: "ai.assistant", quantity: 1, key: "tool-call-1")
        #expect(again == first)
        let next = try await gate.spend(account: "acme", member: "ana", product: "ai.assistant", quantity: 1, key: "tool-call-2")
        #expect(next.headroom.funds == 400 - 24)
        #expect(try await gate.balance(account: "acme").funds.pool == 400 - 24)
        await gate.close()
        try await server.stop()
    }

    @Test func aServerThatNeverAnswersIsATimeout() async throws {
        // A listening socket that accepts connections (in its backlog) and never says a word.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        listen(listener, 8)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        let port = Int(UInt16(bigEndian: address.sin_port))
        let started = ContinuousClock.now
        await #expect(throws: TollgateError.timeout) {
            _ = try await TollgateClient.connect(.init(port: port, connectTimeoutMilliseconds: 300, retries: 0))
        }
        // A timeout, not a hang: the bound is far above the 300 ms asked for, so a busy machine
        // cannot trip it, and far below forever.
        #expect(ContinuousClock.now - started < .seconds(30))
    }

    @Test func refusalsCarryTheStatusTable() async throws {
        let server = try await TestServer.start()
        let gate = try await server.client()
        do {
            _ = try await gate.balance(account: "nobody")
            Issue.record("balance of an unknown account succeeded")
        } catch {
            #expect(error.status == LedgerError.Code.unknownAccount.rawValue)
            #expect(!error.isRetriable)
        }
        await gate.close()
        try await server.stop()
    }
}
