import Testing
@testable import TollgateLedger
import TollgateLedgerTestSupport

@Suite struct SnapshotTests {
    @Test(arguments: 0..<12)
    func aSnapshotRestoresAnEqualLedgerThatBehavesTheSame(seed: Int) async throws {
        // Random runs of hundreds of steps: on a thread of their own, not the test pool's.
        let found = try await OffPool.cpu("snapshot-\(seed)") { () throws -> [String] in
            var found: [String] = []
            var run = RandomRun(seed: UInt64(500 + seed))
            for _ in 0..<400 { run.step() }
            let original = run.driver.ledger
            let restored = try Ledger(snapshot: original.snapshot())
            if restored != original { found.append("the restored ledger differs from the original") }
            found += restored.invariantViolations()
            // Both go on the same way: the same commands (retries included) give the same answers.
            var left = original
            var right = restored
            var more = RandomRun(seed: UInt64(900 + seed))
            for _ in 0..<300 { more.step() }
            for entry in more.driver.journal.suffix(200) {
                let at = entry.at.adding(microseconds: 1_000_000)
                let (a, b) = (left.apply(entry.command, key: entry.key, at: at), right.apply(entry.command, key: entry.key, at: at))
                if a != b { found.append("\(entry.command): \(a) from the original, \(b) from the restored") }
            }
            for entry in run.driver.journal.suffix(50) {
                let (a, b) = (left.apply(entry.command, key: entry.key, at: left.clock), right.apply(entry.command, key: entry.key, at: right.clock))
                if a != b { found.append("retry \(entry.command): \(a) from the original, \(b) from the restored") }
            }
            if left != right { found.append("the two ledgers differ after the same commands") }
            return found
        }
        #expect(found.isEmpty, "\(found.prefix(5))")
    }

    @Test func aLargeLedgerRoundTrips() async throws {
        let equal = try await OffPool.cpu { () throws -> Bool in
            let ledger = Fixtures.large(accounts: 2_000, membersPerAccount: 5)
            return try Ledger(snapshot: ledger.snapshot()) == ledger
        }
        #expect(equal)
    }

    /// Checkpoints written before subscriptions ("TGL1": no subscription section) still load.
    @Test func aVersionOneSnapshotStillLoads() throws {
        var driver = LedgerDriver()
        Fixtures.seedsExample(&driver)
        // Past the keys' retention, so the table is empty: version 1 kept expiries, not decision
        // instants (the test below covers that difference).
        driver.ledger.advance(to: driver.now.adding(microseconds: driver.ledger.limits.idempotencyRetentionMicroseconds + 1))
        #expect(driver.ledger.idempotencyKeyCount == 0)
        // Version 5's records: version 6 added window caps and open-hold bounds to them.
        let bytes = driver.ledger.snapshot(asVersion: 5)
        // The version-2 section of a ledger without subscriptions, alerts or recharges: no
        // subscriptions, none issued, no alerts, no recharges, the next event 1, none
        // recharged (48 bytes); an unused ledger-wide burn window (an empty list, 8 bytes);
        // empty burn tables for accounts and members, no plans (40 bytes); and version 5's
        // list of families moved out, empty (8 bytes).
        let section = 48 + 8 + 40 + 8
        var head = [UInt8](repeating: 0, count: 48)
        head[39] = 1
        #expect(Array(bytes.suffix(section).prefix(48)) == head)
        #expect(Array(bytes.suffix(48)) == [UInt8](repeating: 0, count: 48))
        let versionOne = [0x54, 0x47, 0x4C, 0x31] + Array(bytes.dropFirst(4).dropLast(section))
        #expect(try Ledger(snapshot: versionOne) == driver.ledger)
    }

    /// Checkpoints of version 3 ("TGL3") kept no groups with a hold: a group counted what its
    /// members held. Read, each open hold counts against its member's groups at the time.
    @Test func aVersionThreeSnapshotsHoldsCountAgainstTheirMembersGroups() throws {
        var driver = LedgerDriver()
        Fixtures.seedsExample(&driver)
        driver.setUp(.setRate(product: "v3", creditsPerUnit: 1, effectiveAt: driver.now))
        driver.setUp(.createAccount(CreateAccount(account: "old")))
        driver.setUp(.addGrant(AddGrant(account: "old", amount: 100, effectiveAt: driver.now)))
        driver.setUp(.addMember(account: "old", member: "m"))
        driver.setUp(.createGroup(account: "old", group: "g"))
        driver.setUp(.addToGroup(account: "old", group: "g", member: "m"))
        let answer = driver.run(.reserve(Reserve(DecisionRequest(account: "old", member: "m", product: "v3", quantity: 7), ttlMicroseconds: 60 * Microseconds.perSecond)))
        let hold = try #require(answer.decision?.hold)
        let bytes = driver.ledger.snapshot(asVersion: 3)
        #expect(Array(bytes.prefix(4)) == [0x54, 0x47, 0x4C, 0x33])
        var loaded = try Ledger(snapshot: bytes)
        #expect(loaded == driver.ledger)
        #expect(loaded.invariantViolations().isEmpty)
        _ = loaded.applyRecording(.commit(Commit(HoldReference(account: "old", hold: hold), amount: .held, isFinal: true)), key: "c", at: driver.now)
        #expect(loaded.groupUsage(account: "old", group: "g", at: driver.now)?.consumed == 7)
    }

    /// Checkpoints of version 2 ("TGL2") carried each key's expiry; version 3 carries the
    /// instant it was decided. A version-2 checkpoint's keys are read as decided a retention
    /// before their expiry, so they are forgotten when they would have been.
    @Test func aVersionTwoSnapshotsKeysAreReadAsDecidedARetentionBeforeTheirExpiry() throws {
        var driver = LedgerDriver()
        Fixtures.seedsExample(&driver)
        let ledger = driver.ledger
        let bytes = ledger.snapshot(asVersion: 5)
        #expect(Array(bytes.prefix(4)) == [0x54, 0x47, 0x4C, 0x35])
        #expect(Array(ledger.snapshot().prefix(4)) == [0x54, 0x47, 0x4C, 0x36])
        #expect(ledger.openHoldCount == 0, "the relabelled bytes below hold no hold, whose groups version 2 lacked")
        // The same bytes read as version 2 (without version 5's empty list of families moved
        // out): every decision instant is taken as an expiry.
        #expect(Array(bytes.suffix(8)) == [UInt8](repeating: 0, count: 8))
        let versionTwo = [0x54, 0x47, 0x4C, 0x32] + Array(bytes.dropFirst(4).dropLast(8))
        let loaded = try Ledger(snapshot: versionTwo)
        let retention = ledger.limits.idempotencyRetentionMicroseconds
        #expect(!ledger.rememberedKeys.isEmpty)
        #expect(loaded.rememberedKeys.map { $0.decidedAt.adding(microseconds: retention) } == ledger.rememberedKeys.map(\.decidedAt))
        #expect(loaded.rememberedKeys.map(\.answer) == ledger.rememberedKeys.map(\.answer))
    }

    @Test func damagedSnapshotsAreRefused() throws {
        var driver = LedgerDriver()
        Fixtures.seedsExample(&driver)
        let bytes = driver.ledger.snapshot()
        #expect(throws: SnapshotError.self) { _ = try Ledger(snapshot: Array(bytes.dropLast(3))) }
        #expect(throws: SnapshotError.self) { _ = try Ledger(snapshot: bytes + [0]) }
        #expect(throws: SnapshotError.self) { _ = try Ledger(snapshot: [0x54, 0x47, 0x4C, 0x39] + bytes.dropFirst(4)) }
        var rng = SeededGenerator(seed: 4)
        for _ in 0..<300 {
            var mutated = bytes
            mutated[Int.random(in: 0..<mutated.count, using: &rng)] ^= 0xFF
            // A flipped byte either fails to read or reads as some ledger; never a crash.
            _ = try? Ledger(snapshot: mutated)
        }
    }
}
