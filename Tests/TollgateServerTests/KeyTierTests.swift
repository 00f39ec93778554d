import Foundation
import NIOCore
import Synchronization
import Testing
import TollgateClient
import TollgateJournal
import TollgateLedgerTestSupport
import TollgateLedger
import TollgateServer
import TollgateWire

extension RawSocket {
    /// One answer's header and body bytes, as the server sent them.
    func readRawFrame() async throws -> (FrameHeader, [UInt8]) {
        let headerBytes = await read(FrameHeader.size)
        guard headerBytes.count == FrameHeader.size, let header = try FrameHeader.peek(ByteBuffer(bytes: headerBytes)) else {
            throw ServerError("no frame (got \(headerBytes.count) bytes)")
        }
        return (header, await read(Int(header.bodyLength)))
    }
}

/// Idempotency keys beyond the in-memory table: kept on disk, found by retries across restarts.
@Suite(.serialized) struct KeyTierTests {
    func spend(_ key: String, quantity: Int64 = 1) -> WireRequest {
        .command(.spend(Spend(DecisionRequest(account: "acme", member: "ana", product: "ai.preview", quantity: quantity))), key: key)
    }

    func metric(_ server: TestServer, _ line: String) async throws -> Int {
        let text = try await RawHTTP.get(port: server.adminPort, path: "/metrics")
        for row in text.split(separator: "\n") where row.hasPrefix(line + " ") {
            return Int(Double(row.split(separator: " ").last ?? "") ?? -1)
        }
        return 0
    }

    @Test func aRetryAnsweredFromDiskIsTheOriginalBodyBeforeAndAfterARestart() async throws {
        let data = NSTemporaryDirectory() + "tollgate-keys-\(UUID().uuidString)"
        let configure: (inout ServerConfiguration) -> Void = {
            $0.dataDirectory = data
            $0.journalMode = .sync
            $0.checkpointIntervalSeconds = 0
            $0.limits.idempotencyKeysMax = 8
        }
        let server = try await TestServer.start(configure)
        let setup = try await server.client()
        try await setup.setUpTeamPlan()
        await setup.close()

        let socket = try await RawSocket.connect(port: server.port)
        try await socket.hello()
        var originals: [[UInt8]] = []
        for index in 0..<40 {
            await socket.send(spend("spend-\(index)"), id: UInt32(10 + index))
            let (header, body) = try await socket.readRawFrame()
            #expect(header.status == 0)
            originals.append(body)
        }
        // The table holds 8 keys; the rest went to the disk tier. A checkpoint writes them out.
        try await OffPool.blocking("checkpoint") { try server.server.writeCheckpoint() }
        let stats = try #require(server.server.service.archive?.statistics)
        #expect(stats.keysOnDisk >= 30, "\(stats)")
        #expect(stats.keysWaiting == 0)
        let pool = try await { () async throws -> Int64 in
            let client = try await server.client()
            defer { Task { await client.close() } }
            return try await client.balance(account: "acme").funds.pool
        }()

        for index in [0, 1, 17, 31, 39] {
            await socket.send(spend("spend-\(index)"), id: UInt32(100 + index))
            let (header, body) = try await socket.readRawFrame()
            #expect(header.status == 0)
            #expect(body == originals[index], "spend-\(index): the retry's body is the original's")
        }
        // The same key with other fields is a conflict, from disk as from memory.
        await socket.send(spend("spend-2", quantity: 2), id: 200)
        let (conflict, _) = try await socket.readRawFrame()
        #expect(conflict.status == UInt16(LedgerError.Code.idempotencyConflict.rawValue))
        await socket.send(spend("spend-39", quantity: 2), id: 201)
        let (recent, _) = try await socket.readRawFrame()
        #expect(recent.status == UInt16(LedgerError.Code.idempotencyConflict.rawValue))
        #expect(try await metric(server, "tollgate_idempotency_disk_reads_total{outcome=\"found\"}") >= 4)
        // More spends after the checkpoint: the table hands keys on again, and they are only in
        // memory (and the journal) when the server stops.
        for index in 40..<60 {
            await socket.send(spend("spend-\(index)"), id: UInt32(400 + index))
            let (header, body) = try await socket.readRawFrame()
            #expect(header.status == 0)
            originals.append(body)
        }
        socket.shut()
        try await server.stop()

        // After a restart the keys are still on disk, and retries still get the first answers.
        let restarted = try await TestServer.start(configure)
        let again = try await RawSocket.connect(port: restarted.port)
        try await again.hello()
        // From the runs on disk, from keys the replay handed on again, and from the table.
        for index in [0, 3, 20, 38, 41, 45, 51, 59] {
            await again.send(spend("spend-\(index)"), id: UInt32(300 + index))
            let (header, body) = try await again.readRawFrame()
            #expect(header.status == 0)
            #expect(body == originals[index], "spend-\(index) after the restart")
        }
        let client = try await restarted.client()
        #expect(try await client.balance(account: "acme").funds.pool == pool - 20 * 5, "no retry was charged")
        await client.close()
        again.shut()
        #expect(try await metric(restarted, "tollgate_idempotency_keys{tier=\"disk\"}") >= 30)
        try await restarted.stop()
    }

    /// One busy account fills every tier; no one's mutation is refused: the keys decided
    /// first are forgotten early instead, and /metrics says which limit was reached.
    @Test func fullTiersRefuseNoOneAndSaySo() async throws {
        let server = try await TestServer.start {
            $0.journalMode = .async
            $0.checkpointIntervalSeconds = 0
            $0.limits.idempotencyKeysMax = 50
            $0.idempotencyDiskKeysMax = 1_000
        }
        let gate = try await server.client()
        try await gate.setUpTeamPlan()
        _ = try await gate.apply(.addGrant(AddGrant(account: "acme", amount: 100_000, effectiveAt: .epoch)))
        _ = try await gate.apply(.createAccount(CreateAccount(account: "quiet")))
        for round in 0..<3 {
            for index in 0..<500 {
                _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "busy-\(round)-\(index)")
            }
            // A checkpoint writes the waiting keys to disk, as the writer would with full batches.
            try await OffPool.blocking("checkpoint") { try server.server.writeCheckpoint() }
        }
        // Another account's mutation, with the tiers past their limits, is decided.
        let grant = try await gate.apply(.addGrant(AddGrant(account: "quiet", amount: 10, effectiveAt: .epoch)))
        #expect(!grant.isRefused)
        // The merging thread keeps the limit within a fraction of a second; a busy machine
        // may delay it, so the wait is long and ends as soon as the limit shows.
        var reached = 0
        for _ in 0..<600 {
            reached = try await metric(server, "tollgate_idempotency_limit_reached{limit=\"keysMax\"}")
            if reached == 1 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(reached == 1)
        #expect(try await metric(server, "tollgate_idempotency_keys_forgotten_early") > 0)
        #expect(try await metric(server, "tollgate_idempotency_keys{tier=\"disk\"}") <= 1_000)
        #expect(try await metric(server, "tollgate_requests_total{operation=\"spend\",outcome=\"limitReached\"}") == 0)
        // The newest keys are still known.
        let before = try await gate.balance(account: "acme").funds.pool
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "busy-2-499")
        #expect(try await gate.balance(account: "acme").funds.pool == before, "a recent key is a retry")
        await gate.close()
        try await server.stop()
    }

    @Test func aKeyPastItsRetentionIsANewRequestFromEitherTier() async throws {
        let data = NSTemporaryDirectory() + "tollgate-keys-\(UUID().uuidString)"
        let offset = ManagedAtomicInstant()
        let server = try await TestServer.start(clock: WallClock { offset.now() }) {
            $0.dataDirectory = data
            $0.journalMode = .sync
            $0.checkpointIntervalSeconds = 0
            $0.limits.idempotencyKeysMax = 4
            $0.limits.idempotencyRetentionMicroseconds = 3_600_000_000
        }
        let gate = try await server.client()
        try await gate.setUpTeamPlan()
        for index in 0..<20 { _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "old-\(index)") }
        try await OffPool.blocking("checkpoint") { try server.server.writeCheckpoint() }
        let before = try await gate.balance(account: "acme").funds.pool
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "old-0")
        #expect(try await gate.balance(account: "acme").funds.pool == before, "within the retention: a retry")
        offset.advance(microseconds: 3_600_000_001)
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "old-0")
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "old-19")
        #expect(try await gate.balance(account: "acme").funds.pool == before - 10, "past the retention: new requests (5 credits each)")
        await gate.close()
        try await server.stop()
    }
}

/// A wall clock tests can move forward.
final class ManagedAtomicInstant: Sendable {
    private let extra = Mutex<Int64>(0)
    func now() -> Instant { wallClock().adding(microseconds: extra.withLock { $0 }) }
    func advance(microseconds: Int64) { extra.withLock { $0 += microseconds } }
}
