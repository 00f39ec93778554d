import Foundation
import NIOCore
import Synchronization
import Testing
import TollgateClient
import TollgateJournal
import TollgateLedger
import TollgateLedgerTestSupport
import TollgateServer
import TollgateWire

#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct DurabilityTests {
    @Test(arguments: [ServerConfiguration.JournalModeSetting.async, .sync])
    func stateAndIdempotencyKeysSurviveARestart(mode: ServerConfiguration.JournalModeSetting) async throws {
        let data = NSTemporaryDirectory() + "tollgate-restart-\(UUID().uuidString)"
        let first = try await TestServer.start { $0.dataDirectory = data; $0.journalMode = mode }
        let gate = try await first.client()
        try await gate.setUpTeamPlan(topUp: false)
        let reserved = try await gate.reserve(account: "acme", member: "ana", product: "ai.assistant", quantity: 1, key: "r-1")
        let spent = try await gate.spend(account: "acme", member: "ben", product: "ai.summary", quantity: 2, key: "s-1")
        // A batch's commands are journaled from their bodies as received, a check among them.
        let request = DecisionRequest(account: "acme", member: "cy", product: "ai.summary", quantity: 1)
        let items: [WireRequest] = [
            .command(.spend(Spend(request)), key: "b-1"), .check(request), .command(.reserve(Reserve(request, ttlMicroseconds: 600_000_000)), key: "b-2"),
        ]
        let batched = try await gate.batch(items)
        #expect(batched.map(\.response.status) == [0, 0, 0])
        let before = first.server.service.snapshot
        await gate.close()
        try await first.stop()

        let second = try await TestServer.start { $0.dataDirectory = data; $0.journalMode = mode }
        let again = try await second.client()
        #expect(try await again.balance(account: "acme").funds.pool == 400 - 12 - 14 - 7 - 7)
        // The whole ledger, replayed from the journal, is the one the first server had.
        #expect(sameAtOneInstant(second.server.service.snapshot, before))
        #expect(before.openHoldCount == 2)
        // Retried after the restart, the batch's commands answer as they did; the check decides again.
        let retried = try await again.batch(items)
        #expect(retried[0] == batched[0])
        #expect(retried[2] == batched[2])
        // The retry of a spend made before the restart gets the first answer back.
        #expect(try await again.spend(account: "acme", member: "ben", product: "ai.summary", quantity: 2, key: "s-1") == spent)
        // The hold made before the restart can still be committed.
        let committed = try await again.commit(account: "acme", hold: reserved.hold!, amount: .credits(5))
        #expect(committed.returned == 7)
        #expect(second.server.service.snapshot.invariantViolations().isEmpty)
        await again.close()
        try await second.stop()
    }
}

/// Runs the real tollgated binary, kills it with SIGKILL at random moments under load, and
/// checks after every restart what DESIGN.md promises. `TOLLGATE_CRASH_CYCLES=N` runs more.
@Suite(.serialized) struct CrashTests {
    static let binary = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build/debug/tollgated").path

    struct Process {
        let pid: pid_t

        static func start(data: String, port: Int, mode: String, arguments extra: [String] = [], environment extraEnvironment: [String: String] = [:]) throws
            -> Process
        {
            var pid: pid_t = 0
            let arguments = [CrashTests.binary, "--port", String(port), "--admin-port", "off", "--data-dir", data] + extra
            var environment = ProcessInfo.processInfo.environment.merging(extraEnvironment) { $1 }
            environment["TOLLGATE_JOURNAL_MODE"] = mode
            environment["TOLLGATE_JOURNAL_SEGMENT_BYTES"] = "65536"
            environment["TOLLGATE_LOG_LEVEL"] = "warning"
            let argv = arguments.map { strdup($0) } + [nil]
            let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
            // The server must not hold the test runner's output open if it outlives a test.
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            defer {
                argv.forEach { free($0) }
                envp.forEach { free($0) }
                posix_spawn_file_actions_destroy(&actions)
            }
            guard posix_spawn(&pid, CrashTests.binary, &actions, nil, argv, envp) == 0 else { throw ServerError("cannot start \(CrashTests.binary)") }
            return Process(pid: pid)
        }

        /// SIGKILL, and returns once the process is gone (reaped on a thread of its own).
        func kill9() async {
            kill(pid, SIGKILL)
            await OffPool.blocking("reap") {
                var status: Int32 = 0
                waitpid(pid, &status, 0)
            }
        }

        /// SIGTERM; the process is reaped by a thread of its own when it exits, so a `defer`
        /// can call this without waiting on the test pool.
        func terminate() {
            kill(pid, SIGTERM)
            let pid = pid
            Thread.detachNewThread {
                var status: Int32 = 0
                waitpid(pid, &status, 0)
            }
        }
    }

    /// The admin token a server without a credentials file writes to its data directory.
    static func adminToken(data: String) -> String {
        ((try? String(contentsOfFile: data + "/admin.token", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A client, once tollgated has come up (replayed its journal and opened the port): at most
    /// a minute, however slow the machine; as soon as it is up otherwise.
    static func connect(port: Int, data: String) async throws -> TollgateClient {
        for _ in 0..<2_400 {
            let token = adminToken(data: data)
            if let client = try? await TollgateClient.connect(.init(port: port, token: token, requestTimeoutMilliseconds: 2_000, retries: 0)) { return client }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw ServerError("tollgated did not come up on port \(port)")
    }

    struct Outcome {
        var acknowledged: [(key: String, member: String, answer: Decision)] = []
        var unanswered: [(key: String, member: String)] = []
    }

    /// Spends of 1 credit under unique keys from several clients until the process dies.
    static func load(port: Int, token: String, cycle: Int, clients: Int) async -> Outcome {
        await withTaskGroup(of: Outcome.self) { group in
            for client in 0..<clients {
                group.addTask {
                    var outcome = Outcome()
                    guard let gate = try? await TollgateClient.connect(.init(port: port, token: token, requestTimeoutMilliseconds: 1_000, retries: 0)) else {
                        return outcome
                    }
                    let member = "m\(client)"
                    for index in 0..<100_000 {
                        let key = "c\(cycle)-\(client)-\(index)"
                        do {
                            let decision = try await gate.spend(account: "acct", member: member, product: "p", quantity: 1, key: key)
                            outcome.acknowledged.append((key, member, decision))
                        } catch {
                            outcome.unanswered.append((key, member))
                            break
                        }
                    }
                    await gate.close()
                    return outcome
                }
            }
            var total = Outcome()
            for await outcome in group {
                total.acknowledged += outcome.acknowledged
                total.unanswered += outcome.unanswered
            }
            return total
        }
    }

    @Test(arguments: ["sync", "async"])
    func killNineUnderLoadLosesNothingAcknowledgedInSyncMode(mode: String) async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "build tollgated first")
        let cycles = Int(ProcessInfo.processInfo.environment["TOLLGATE_CRASH_CYCLES"] ?? "") ?? 20
        let data = NSTemporaryDirectory() + "tollgate-crash-\(UUID().uuidString)"
        let port = try freePort()
        var rng = SystemRandomNumberGenerator()
        let clients = 4
        var process = try Process.start(data: data, port: port, mode: mode)
        defer { process.terminate() }
        do {
            let setup = try await Self.connect(port: port, data: data)
            _ = try await setup.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch), key: "setup-rate")
            _ = try await setup.apply(.createAccount(CreateAccount(account: "acct")), key: "setup-account")
            _ = try await setup.apply(.addGrant(AddGrant(account: "acct", amount: 1_000_000_000, effectiveAt: .epoch)), key: "setup-grant")
            for client in 0..<clients { _ = try await setup.apply(.addMember(account: "acct", member: "m\(client)"), key: "setup-m\(client)") }
            await setup.close()
        }
        var everAcknowledged: [(key: String, member: String, answer: Decision)] = []
        var lostAnswers: [(key: String, member: String)] = []
        for cycle in 0..<cycles {
            async let outcome = Self.load(port: port, token: Self.adminToken(data: data), cycle: cycle, clients: clients)
            try await Task.sleep(for: .milliseconds(Int.random(in: 30...250, using: &rng)))
            await process.kill9()
            let result = await outcome
            everAcknowledged += result.acknowledged
            lostAnswers += result.unanswered

            process = try Process.start(data: data, port: port, mode: mode)
            let gate = try await Self.connect(port: port, data: data)
            let balance = try await gate.balance(account: "acct")
            let consumed = balance.levels.first { $0.level == .account }!.consumed
            // The ledger is whole: what the pool lost is exactly what was consumed.
            #expect(balance.funds.pool + consumed == 1_000_000_000, "cycle \(cycle)")
            if mode == "sync" {
                // Every acknowledged spend is kept: its retry returns the first answer.
                for spend in result.acknowledged.suffix(20) {
                    let retry = try await gate.spend(account: "acct", member: spend.member, product: "p", quantity: 1, key: spend.key)
                    #expect(retry == spend.answer, "cycle \(cycle): acknowledged \(spend.key) was lost")
                }
                #expect(consumed >= Int64(everAcknowledged.count), "cycle \(cycle): fewer credits consumed than acknowledged")
            }
            if mode == "async" {
                // Only a suffix may be missing: per client, once one acknowledged spend is gone,
                // every later one is gone too (the last flush interval was not written). The
                // probe reuses the key with other fields: a kept key answers with a conflict; a
                // lost one is simply spent again.
                for client in 0..<clients {
                    var missingSeen = false
                    for spend in result.acknowledged where spend.member == "m\(client)" {
                        var kept = false
                        do {
                            _ = try await gate.spend(account: "acct", member: spend.member, product: "p", quantity: 2, key: spend.key)
                        } catch {
                            guard case .refused(let refusal) = error, refusal.error.code == .idempotencyConflict else { throw error }
                            kept = true
                        }
                        if missingSeen { #expect(!kept, "cycle \(cycle): \(spend.key) was kept after an earlier spend was lost") }
                        if !kept { missingSeen = true }
                    }
                }
            }
            // A request whose answer was lost is retried with its key: applied exactly once.
            for lost in result.unanswered {
                _ = try await gate.spend(account: "acct", member: lost.member, product: "p", quantity: 1, key: lost.key)
            }
            await gate.close()
        }
        // In the end, with every lost answer retried, each key was charged exactly once (sync
        // mode; in async mode the probes above spend lost keys again by design).
        let gate = try await Self.connect(port: port, data: data)
        let consumed = try await gate.balance(account: "acct").levels.first { $0.level == .account }!.consumed
        let keys = Int64(everAcknowledged.count + lostAnswers.count)
        // The load was real: many spends were acknowledged, and kills cut some answers off.
        #expect(everAcknowledged.count > cycles * 10)
        print("crash test (\(mode)): \(cycles) kills, \(everAcknowledged.count) spends acknowledged, \(lostAnswers.count) answers lost and retried, \(consumed) credits consumed")
        if mode == "sync" {
            #expect(consumed == keys)
        }
        await gate.close()
        try? FileManager.default.removeItem(atPath: data)
    }
}

@Suite(.serialized) struct JournalCLITests {
    static let tollgate = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build/debug/tollgate").path

    /// The CLI's exit status and standard output (run, and waited for, on a thread of its own).
    func run(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let result = try await ChildProcess.run(Self.tollgate, arguments, separateErrors: true)
        return (result.status, result.output)
    }

    @Test func verifyDumpAndExportReadTheServersJournal() async throws {
        let data = NSTemporaryDirectory() + "tollgate-cli-\(UUID().uuidString)"
        let server = try await TestServer.start { $0.dataDirectory = data; $0.journalMode = .sync }
        let gate = try await server.client()
        try await gate.setUpTeamPlan(topUp: false)
        let hold = try await gate.reserve(account: "acme", member: "ana", product: "ai.assistant", quantity: 1)
        try await gate.commit(account: "acme", hold: hold.hold!, amount: .credits(9))
        _ = try await gate.spend(account: "acme", member: nil, product: "ai.summary", quantity: 2)
        // An auto-recharge, which the export lists for billing.
        _ = try await gate.apply(.setAutoRecharge(account: "acme", rule: AutoRecharge(below: 500, amount: 250, maxPerPeriod: 1)))
        await gate.close()
        try await server.stop()
        let journal = data + "/journal"

        let verify = try await run(["journal", "verify", journal])
        #expect(verify.status == 0)
        #expect(verify.output.hasPrefix("13 records in 1 segments; last sequence 13"))
        let dump = try await run(["journal", "dump", journal])
        #expect(dump.output.split(separator: "\n").count == 13)
        #expect(dump.output.contains("SPEND key="))
        let export = try await run(["journal", "export", journal])
        let lines = export.output.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines[0].hasPrefix(#"{"account":"acme","credits":9,"hold":1,"member":"ana","product":"ai.assistant","sequence":11,"time":""#))
        #expect(lines[0].contains(#""type":"consumption""#))
        #expect(lines[1].contains(#""credits":14"#) && lines[1].contains(#""hold":null"#) && lines[1].contains(#""member":null"#))
        // 400 − 9 − 14 = 377 is below 500: recharged at once by 250.
        #expect(lines[2].contains(#""type":"recharged""#) && lines[2].contains(#""amount":250"#) && lines[2].contains(#""balance":627"#))
        #expect(lines[2].contains(#""id":"tollgate-event-1""#))

        // A damaged journal is reported with its offset, and the exit status says so.
        let file = try FileManager.default.contentsOfDirectory(atPath: journal).first!
        var bytes = try Data(contentsOf: URL(fileURLWithPath: journal + "/" + file))
        bytes[40] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: journal + "/" + file))
        let damaged = try await run(["journal", "verify", journal])
        #expect(damaged.status == 1)
        #expect(damaged.output.contains("DAMAGED: journal damaged in") && damaged.output.contains("at byte 24"))
    }
}

/// The journal's file layer, made to fail on demand like a full disk.
final class FaultyFiles: JournalFiles, Sendable {
    private let failing = Mutex(false)
    private let stalled = Mutex(false)
    private let system = SystemJournalFiles()

    func set(failing value: Bool) { failing.withLock { $0 = value } }
    /// An fsync in progress does not return until this is set back to false: a stalled disk.
    func set(stalled value: Bool) { stalled.withLock { $0 = value } }

    func write(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
        if failing.withLock({ $0 }) {
            errno = ENOSPC
            return -1
        }
        return system.write(descriptor, bytes)
    }

    func sync(_ descriptor: Int32) -> Int32 {
        while stalled.withLock({ $0 }) { usleep(1_000) }
        if failing.withLock({ $0 }) {
            errno = EIO
            return -1
        }
        return system.sync(descriptor)
    }
}

@Suite(.serialized) struct FaultTests {
    func pool(_ server: TestServer) throws -> Credits {
        try server.server.service.balance(account: "acme", member: nil).get().funds.pool
    }

    /// Waits for the journal to report the failure the test caused.
    func journalFailing(_ server: TestServer) async throws {
        for _ in 0..<3_000 where server.server.service.journal?.failureReason == nil {  // at most 30 s
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(server.server.service.journal?.failureReason != nil)
    }

    /// Waits until the journal has kept everything appended so far (async mode writes later).
    func journalCaughtUp(_ server: TestServer) async throws {
        let journal = try server.server.service.journal.required("a journal")
        for _ in 0..<3_000 where journal.durableSequence < journal.appendedSequence {  // at most 30 s
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(journal.durableSequence == journal.appendedSequence)
    }

    func isUnavailable(_ body: () async throws -> Void) async -> Bool {
        do {
            try await body()
            return false
        } catch {
            return (error as? TollgateError)?.status == ProtocolStatus.unavailable.rawValue
        }
    }

    @Test func aFailingDiskRefusesMutationsKeepsReadsAndRecovers() async throws {
        let data = NSTemporaryDirectory() + "tollgate-fault-\(UUID().uuidString)"
        let files = FaultyFiles()
        let server = try await TestServer.start(journalFiles: files) { $0.dataDirectory = data; $0.journalMode = .async }
        let gate = try await TollgateClient.connect(.init(port: server.port, retries: 0))
        try await gate.setUpTeamPlan(topUp: false)
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "before")
        try await journalCaughtUp(server)

        files.set(failing: true)
        // Acknowledged at once (async): the journal fails when it tries to write it.
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "during-1")
        try await journalFailing(server)
        // Further mutations are refused as unavailable, and not applied; reads still work.
        #expect(await isUnavailable { _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "during-2") })
        #expect(try await gate.balance(account: "acme").funds.pool == 390)
        let ready = try await RawHTTP.get(port: server.adminPort, path: "/readyz")
        #expect(ready.hasPrefix("HTTP/1.1 503") && ready.contains("journal failing"))
        #expect(try await RawHTTP.get(port: server.adminPort, path: "/metrics").contains("tollgate_journal_healthy 0"))

        files.set(failing: false)
        // The writer retries; once the disk works again, so do mutations.
        var resumed = false
        for _ in 0..<600 where !resumed {  // at most 30 s
            try await Task.sleep(for: .milliseconds(50))
            resumed = (try? await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "after")) != nil
        }
        #expect(resumed)
        #expect(try await gate.balance(account: "acme").funds.pool == 385)
        await gate.close()
        try await server.stop()

        // The acknowledged spend was written once the disk returned; the refused one never was.
        let restarted = try await TestServer.start { $0.dataDirectory = data; $0.journalMode = .sync }
        #expect(try pool(restarted) == 385)
        try await restarted.stop()
    }

    /// `sync`: an answer leaves only once what it shows is on disk. While the disk fails, the
    /// spend already applied waits (it is neither acknowledged nor refused), and `unavailable`
    /// means nothing was changed — not in memory, not written later.
    @Test func inSyncModeNothingIsAcknowledgedOrShownBeforeItIsKept() async throws {
        let data = NSTemporaryDirectory() + "tollgate-fault-\(UUID().uuidString)"
        let files = FaultyFiles()
        let server = try await TestServer.start(journalFiles: files) { $0.dataDirectory = data; $0.journalMode = .sync }
        let gate = try await TollgateClient.connect(.init(port: server.port, requestTimeoutMilliseconds: 120_000, retries: 0))
        try await gate.setUpTeamPlan(topUp: false)
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "before")
        // An alert the next spend sets off: its event is shown to no one before the spend is kept.
        _ = try await gate.apply(.setAlert(account: "acme", rule: AlertRule(id: "low", threshold: .credits(392))))
        let listener = try await TollgateClient.connect(.init(port: server.port, retries: 0))
        let (_, stream) = try await listener.subscribe(account: "acme")
        let heard = Mutex<[UInt64]>([])
        let listening = Task {
            for await event in stream {
                heard.withLock { $0.append(event.sequence) }
                break
            }
        }

        files.set(failing: true)
        let answered = Mutex(false)
        let waiting = Task {
            defer { answered.withLock { $0 = true } }
            return try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "during-1")
        }
        try await journalFailing(server)
        let other = try await TollgateClient.connect(.init(port: server.port, retries: 0))
        #expect(await isUnavailable { _ = try await other.spend(account: "acme", member: "ben", product: "ai.preview", quantity: 1, key: "during-2") })
        // In memory: the first spend is applied (it waits for the disk), the refused one is not.
        #expect(try pool(server) == 390)
        // A read would show the spend that is not kept yet: it waits as well.
        let read = Task { try await other.balance(account: "acme").funds.pool }
        #expect(!answered.withLock { $0 })
        #expect(heard.withLock { $0 }.isEmpty)  // nor is its alert

        files.set(failing: false)
        #expect(try await waiting.value.cost == 5)
        #expect(try await read.value == 390)
        for _ in 0..<3_000 where heard.withLock({ $0 }).isEmpty { try await Task.sleep(for: .milliseconds(10)) }  // at most 30 s
        listening.cancel()
        #expect(heard.withLock { $0 } == [1])
        await listener.close()
        // The refused spend, retried with its key, is charged now, and once.
        _ = try await other.spend(account: "acme", member: "ben", product: "ai.preview", quantity: 1, key: "during-2")
        _ = try await other.spend(account: "acme", member: "ben", product: "ai.preview", quantity: 1, key: "during-2")
        #expect(try await other.balance(account: "acme").funds.pool == 385)
        await gate.close()
        await other.close()
        try await server.stop()

        let restarted = try await TestServer.start { $0.dataDirectory = data; $0.journalMode = .sync }
        #expect(try pool(restarted) == 385)
        try await restarted.stop()
    }

    /// A checkpoint never includes a record the journal has not kept: while the disk fails
    /// with a spend applied in memory, it is postponed, and none is written.
    @Test func noCheckpointIncludesWhatTheJournalHasNotKept() async throws {
        let data = NSTemporaryDirectory() + "tollgate-fault-\(UUID().uuidString)"
        let files = FaultyFiles()
        let server = try await TestServer.start(journalFiles: files) {
            $0.dataDirectory = data
            $0.journalMode = .async
            $0.checkpointIntervalSeconds = 0
        }
        let gate = try await server.client(retries: 0)
        try await gate.setUpTeamPlan(topUp: false)
        try await journalCaughtUp(server)
        files.set(failing: true)
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "unkept")
        try await journalFailing(server)
        let postponed = await OffPool.blocking("checkpoint") { () -> Bool in
            do {
                try server.server.writeCheckpoint(waitingForTheJournalMilliseconds: 200)
                return false
            } catch {
                return "\(error)".contains("checkpoint postponed")
            }
        }
        #expect(postponed)
        #expect(Checkpoint.files(in: data + "/journal").isEmpty)
        files.set(failing: false)
        // Once the journal has kept it, the checkpoint goes ahead.
        try await OffPool.blocking("checkpoint") { try server.server.writeCheckpoint() }
        #expect(Checkpoint.files(in: data + "/journal").count == 1)
        await gate.close()
        try await server.stop()
    }

    /// Answers waiting for the journal count toward the in-flight limit: with the disk
    /// stalled in `sync` mode and maxInFlight 4, eight pipelined spends wait and the rest are
    /// told `tooManyInFlight` at once, instead of all queueing.
    @Test func answersWaitingForTheJournalCountTowardTheInFlightLimit() async throws {
        let files = FaultyFiles()
        let server = try await TestServer.start(journalFiles: files) {
            $0.journalMode = .sync
            $0.maxInFlight = 4
        }
        let gate = try await server.client()
        try await gate.setUpTeamPlan()
        await gate.close()
        let raw = try await RawSocket.connect(port: server.port, receiveTimeoutMilliseconds: 60_000)
        try await raw.hello()
        files.set(stalled: true)
        let spend = Spend(DecisionRequest(account: "acme", member: "ana", product: "ai.preview", quantity: 1))
        for index in 0..<30 { await raw.send(.command(.spend(spend), key: "pipelined-\(index)"), id: UInt32(100 + index)) }
        // The 22 beyond the limit are refused without waiting for the disk.
        var refused: Set<UInt32> = []
        for _ in 0..<22 {
            let (header, _) = try await raw.readFrame()
            if header.status == ProtocolStatus.tooManyInFlight.rawValue { refused.insert(header.requestID) }
        }
        #expect(refused == Set((108..<130).map(UInt32.init)))
        files.set(stalled: false)
        // The eight that waited are answered once the disk moves.
        var answered: Set<UInt32> = []
        for _ in 0..<8 {
            let (header, _) = try await raw.readFrame()
            if header.status == 0 { answered.insert(header.requestID) }
        }
        #expect(answered == Set((100..<108).map(UInt32.init)))
        await raw.shut()
        try await server.stop()
    }

    /// `async`: while an fsync stalls past the window, answers to mutations wait for it (so a
    /// crash then could not lose more than the window of acknowledged changes); reads do not.
    @Test func aStalledDiskHoldsAsyncAcknowledgementsPastTheWindow() async throws {
        let files = FaultyFiles()
        let server = try await TestServer.start(journalFiles: files) {
            $0.journalMode = .async
            $0.journalFlushIntervalMilliseconds = 10
            $0.journalAsyncWindowMilliseconds = 100
        }
        let gate = try await server.client(requestTimeoutMilliseconds: 120_000, retries: 0)
        try await gate.setUpTeamPlan(topUp: false)
        try await journalCaughtUp(server)
        files.set(stalled: true)
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "first")
        // Past the window: the stalled batch (holding "first") is older than 100 ms.
        let journal = try server.server.service.journal.required("a journal")
        for _ in 0..<3_000 where journal.lagNanoseconds(now: NIODeadline.now().uptimeNanoseconds) <= 150_000_000 {
            try await Task.sleep(for: .milliseconds(10))
        }
        let answered = Mutex(false)
        let held = Task {
            defer { answered.withLock { $0 = true } }
            return try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "second")
        }
        // Once the second spend is applied in memory (its answer held), a read shows it at once.
        for _ in 0..<3_000 where try pool(server) != 390 { try await Task.sleep(for: .milliseconds(10)) }
        let reader = try await server.client(retries: 0)
        #expect(try await reader.balance(account: "acme").funds.pool == 390)  // a read is not held
        #expect(!answered.withLock { $0 })
        files.set(stalled: false)
        #expect(try await held.value.cost == 5)
        await gate.close()
        await reader.close()
        try await server.stop()
    }
}

@Suite(.serialized) struct CheckpointTests {
    func run(_ server: TestServer, keyPrefix: String, count: Int) async throws {
        let gate = try await server.client()
        for index in 0..<count {
            _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "\(keyPrefix)-\(index)")
        }
        await gate.close()
    }

    @Test func recoveryIsTheCheckpointPlusTheJournalAfterIt() async throws {
        let data = NSTemporaryDirectory() + "tollgate-checkpoint-\(UUID().uuidString)"
        let configure: (inout ServerConfiguration) -> Void = {
            $0.dataDirectory = data
            $0.journalMode = .sync
            $0.checkpointIntervalSeconds = 0
            $0.journalSegmentBytes = 4_096
            $0.journalRetentionHours = 0
        }
        let first = try await TestServer.start(configure)
        let setup = try await first.client()
        try await setup.setUpTeamPlan()
        await setup.close()
        try await run(first, keyPrefix: "a", count: 150)
        try first.server.writeCheckpoint()
        try await run(first, keyPrefix: "b", count: 40)
        let before = first.server.service.snapshot
        try await first.stop()
        let journal = data + "/journal"
        #expect(Checkpoint.files(in: journal).count == 1)
        // Segments wholly inside the checkpoint were deleted (retention 0 h).
        let remaining = Journal.segmentFiles(in: journal)
        #expect(!remaining.isEmpty && !remaining[0].hasSuffix(SegmentHeader.fileName(firstSequence: 1)))

        let second = try await TestServer.start(configure)
        #expect(sameAtOneInstant(second.server.service.snapshot, before))
        // Keys from before the checkpoint are still known.
        let gate = try await second.client()
        let pool = try await gate.balance(account: "acme").funds.pool
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "a-3")
        #expect(try await gate.balance(account: "acme").funds.pool == pool)
        await gate.close()
        try await second.stop()
    }

    /// Damage in the snapshot (-5: near its end), in the sequence the header names (15) or in
    /// the record checksum it recorded (16): each is seen, and the full journal is used.
    @Test(arguments: [-5, 15, 16])
    func aDamagedCheckpointIsPassedOverForTheFullJournal(offset: Int) async throws {
        let data = NSTemporaryDirectory() + "tollgate-checkpoint-\(UUID().uuidString)"
        let configure: (inout ServerConfiguration) -> Void = {
            $0.dataDirectory = data
            $0.journalMode = .sync
            $0.checkpointIntervalSeconds = 0
        }
        let first = try await TestServer.start(configure)
        let setup = try await first.client()
        try await setup.setUpTeamPlan()
        await setup.close()
        try await run(first, keyPrefix: "a", count: 20)
        try first.server.writeCheckpoint()
        let pool = first.server.service.snapshot.creditTotals().available
        try await first.stop()
        let file = Checkpoint.files(in: data + "/journal")[0]
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes[offset < 0 ? bytes.count + offset : offset] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: file))
        let second = try await TestServer.start(configure)
        #expect(second.server.service.snapshot.creditTotals().available == pool)
        try await second.stop()
    }
}

@Suite(.serialized) struct PointInTimeTests {
    @Test func balancesAsTheyWereFromCheckpointsAndTheJournal() async throws {
        let data = NSTemporaryDirectory() + "tollgate-history-\(UUID().uuidString)"
        let server = try await TestServer.start { $0.dataDirectory = data; $0.journalMode = .sync; $0.checkpointIntervalSeconds = 0 }
        let gate = try await server.client()
        try await gate.setUpTeamPlan(topUp: false)
        func spend(_ times: Int) async throws {
            for _ in 0..<times { _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1) }
        }
        func pause() async throws -> Instant {
            try await Task.sleep(for: .milliseconds(20))
            let instant = wallClock()
            try await Task.sleep(for: .milliseconds(20))
            return instant
        }
        try await spend(4)
        let first = try await pause()
        try await spend(6)
        try server.server.writeCheckpoint()
        let second = try await pause()
        try await spend(2)

        #expect(try await gate.balance(account: "acme", at: first).funds.pool == 380)
        #expect(try await gate.balance(account: "acme", at: second).funds.pool == 350)
        let member = try await gate.balance(account: "acme", member: "ana", at: first)
        #expect(member.levels.first?.consumed == 20)
        #expect(try await gate.balance(account: "acme").funds.pool == 340)
        // Before the account existed.
        do {
            _ = try await gate.balance(account: "acme", at: Instant(microsecondsSinceEpoch: 0))
            Issue.record("a balance before the account existed")
        } catch {
            #expect(error.status == LedgerError.Code.unknownAccount.rawValue)
        }
        await gate.close()
        try await server.stop()
    }
}

@Suite(.serialized) struct StartupProgressTests {
    /// Start-up says what it loads and replays, with counts and rates: here reported every 1,024
    /// records (production: every second).
    @Test func replayAndCheckpointLoadingAreLoggedWithCountsAndRates() async throws {
        let data = NSTemporaryDirectory() + "tollgate-progress-\(UUID().uuidString)"
        let configure: (inout ServerConfiguration) -> Void = {
            $0.dataDirectory = data
            $0.checkpointIntervalSeconds = 0
        }
        let first = try await TestServer.start(configure)
        let client = try await first.client()
        try await client.setUpTeamPlan()
        _ = try await client.apply(.addGrant(AddGrant(account: "acme", amount: 1_000_000, effectiveAt: Instant(microsecondsSinceEpoch: 0))))
        try first.server.writeCheckpoint()
        for index in 0..<2_500 {
            _ = try await client.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1, key: "p-\(index)")
        }
        await client.close()
        try await first.stop()

        let log = CollectedLog()
        let second = try await TestServer.start(logger: log.logger) {
            configure(&$0)
            $0.progressIntervalMilliseconds = 0
        }
        try await second.stop()
        let lines = log.text.split(separator: "\n")
        let loading = try #require(lines.first { $0.contains("loading a checkpoint") })
        #expect(loading.contains("bytes="))
        let loaded = try #require(lines.first { $0.contains("loaded a checkpoint") })
        #expect(loaded.contains("accounts=1") && loaded.contains("megabytesPerSecond="))
        let replaying = lines.filter { $0.contains("replaying the journal") }
        #expect(replaying.count == 2)
        #expect(replaying.first?.contains("records=1024") == true && replaying.last?.contains("records=2048") == true)
        #expect(replaying.allSatisfy { $0.contains("recordsPerSecond=") })
        let recovered = try #require(lines.first { $0.contains("recovered from the journal") })
        #expect(recovered.contains("records=2500") && recovered.contains("recordsPerSecond="))
    }
}

/// Whether two ledgers are the same once both stand at the later of their clocks: a server
/// recovered from the journal has moved its clock on, which changes nothing it decides.
func sameAtOneInstant(_ first: Ledger, _ second: Ledger) -> Bool {
    var first = first
    var second = second
    let end = max(first.clock, second.clock)
    first.advance(to: end)
    second.advance(to: end)
    return first == second
}
