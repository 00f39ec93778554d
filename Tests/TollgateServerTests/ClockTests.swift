import Foundation
import Synchronization
import Testing
import TollgateClient
import TollgateLedger
import TollgateServer

/// What time does when the wall clock goes backwards: it never goes back, and never stands
/// still either — it runs on at the real rate until the wall clock catches up.
@Suite(.serialized) struct ClockTests {
    func expectExpired(_ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("a hold past its TTL was committed")
        } catch {
            #expect((error as? TollgateError)?.status == LedgerError.Code.holdExpired.rawValue, "\(error)")
        }
    }

    @Test func aWallClockSteppedBackDoesNotStopHoldsExpiring() async throws {
        let back = Mutex<Int64>(0)
        let server = try await TestServer.start(clock: WallClock { wallClock().adding(microseconds: -back.withLock { $0 }) })
        let gate = try await server.client()
        try await gate.setUpTeamPlan()
        let hold = try await gate.reserve(account: "acme", member: "ana", product: "ai.preview", quantity: 1, ttlMilliseconds: 1_000)
        back.withLock { $0 = 3_000_000 }  // an NTP step back of 3 s
        try await Task.sleep(for: .milliseconds(1_500))
        await expectExpired { try await gate.commit(account: "acme", hold: hold.hold!) }
        await gate.close()
        try await server.stop()
    }

    /// A restart with the wall clock behind the journal (it ran with clockOffsetSeconds, or
    /// the clock stepped back while it was down): time goes on from the journal's last instant.
    @Test func aRestartBehindTheJournalDoesNotStopHoldsExpiring() async throws {
        let data = NSTemporaryDirectory() + "tollgate-clock-\(UUID().uuidString)"
        let ahead = try await TestServer.start { $0.dataDirectory = data; $0.journalMode = .sync; $0.clockOffsetSeconds = 5 }
        let setup = try await ahead.client()
        try await setup.setUpTeamPlan()
        await setup.close()
        try await ahead.stop()

        let server = try await TestServer.start { $0.dataDirectory = data; $0.journalMode = .sync }
        let gate = try await server.client()
        let hold = try await gate.reserve(account: "acme", member: "ana", product: "ai.preview", quantity: 1, ttlMilliseconds: 1_000)
        try await Task.sleep(for: .milliseconds(1_500))
        await expectExpired { try await gate.commit(account: "acme", hold: hold.hold!) }
        await gate.close()
        try await server.stop()
        try? FileManager.default.removeItem(atPath: data)
    }
}
