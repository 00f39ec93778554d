import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing
import TollgateJournal
import TollgateLedger
import TollgateLedgerTestSupport
import TollgateWire

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "tollgate-journal-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Commands of every shape from a random ledger run, with their keys and instants.
func sampleRecords(_ count: Int, seed: UInt64 = 5) -> [LedgerDriver.Entry] {
    var driver = LedgerDriver()
    Fixtures.seedsExample(&driver)
    var rng = SeededGenerator(seed: seed)
    while driver.journal.count < count {
        let member = ["ana", "ben", "cy", "dee"].randomElement(using: &rng)!
        let request = DecisionRequest(account: "acme", member: member, product: Fixtures.summary, quantity: .random(in: 1...3, using: &rng))
        if let hold = driver.run(.reserve(Reserve(request, ttlMicroseconds: 60 * Microseconds.perSecond))).decision?.hold {
            driver.run(.commit(Commit(HoldReference(account: "acme", hold: hold), amount: .credits(.random(in: 0...10, using: &rng)))))
        }
        driver.advance(microseconds: .random(in: 0...5_000, using: &rng))
    }
    return Array(driver.journal.prefix(count))
}

extension Answer {
    var decision: Decision? {
        if case .decision(let decision) = self { return decision }
        return nil
    }
}

/// Writes entries in batches of `batch`, waiting for each to be durable, as group commits would.
/// It waits for fsyncs: on a thread of its own, not the test pool's.
func writeJournal(_ entries: [LedgerDriver.Entry], to directory: String, mode: JournalMode = .sync, segmentBytes: Int = 64 << 20, batch: Int = 20) async throws {
    try await OffPool.blocking("write-journal") { try writeJournalBlocking(entries, to: directory, mode: mode, segmentBytes: segmentBytes, batch: batch) }
}

private func writeJournalBlocking(_ entries: [LedgerDriver.Entry], to directory: String, mode: JournalMode, segmentBytes: Int, batch: Int) throws {
    let scan = try Journal.scan(directory: directory, repair: true) { _ in }
    let writer = try JournalWriter(directory: directory, mode: mode, after: scan, segmentBytes: segmentBytes)
    var index = 0
    while index < entries.count {
        var last: UInt64 = 0
        for entry in entries[index..<min(entries.count, index + batch)] { last = writer.append(entry.command, key: entry.key, instant: entry.at) }
        index += batch
        let done = DispatchSemaphore(value: 0)
        writer.whenDurable(last) { _ in done.signal() }
        done.wait()
    }
    writer.close()
}

func readAll(_ directory: String, repair: Bool = false) throws -> ([JournalRecord], JournalScan) {
    var records: [JournalRecord] = []
    let scan = try Journal.scan(directory: directory, repair: repair) { records.append($0) }
    return (records, scan)
}

@Suite struct JournalTests {
    @Test func recordsComeBackInOrderAcrossSegments() async throws {
        let directory = temporaryDirectory()
        let entries = sampleRecords(300)
        try await writeJournal(entries, to: directory, segmentBytes: 4_096)
        let (records, scan) = try readAll(directory)
        #expect(scan.segments.count > 3, "small segments rotate")
        #expect(scan.tornTail == nil)
        #expect(records.map(\.sequence) == Array(1...300))
        #expect(records.map(\.command) == entries.map(\.command))
        #expect(records.map(\.key) == entries.map(\.key))
        #expect(records.map(\.instant) == entries.map(\.at))
        // Appending after a restart continues the sequence and the chain.
        try await writeJournal(Array(entries.prefix(10)), to: directory, segmentBytes: 4_096)
        #expect(try readAll(directory).0.count == 310)
    }

    @Test func replayingTheJournalRebuildsTheLedger() async throws {
        let directory = temporaryDirectory()
        var driver = LedgerDriver()
        Fixtures.seedsExample(&driver)
        for step in 0..<200 {
            driver.run(.spend(Spend(DecisionRequest(account: "acme", member: "ana", product: Fixtures.preview, quantity: Int64(step % 3 + 1)))))
            driver.advance(microseconds: 1_000)
        }
        try await writeJournal(driver.journal, to: directory)
        var replayed = Ledger(startingAt: Fixtures.start)
        _ = try Journal.scan(directory: directory, repair: false) { record in
            _ = replayed.replay(record.command, key: record.key, at: record.instant)
        }
        #expect(replayed == driver.ledger)
    }

    @Test func recoveryFromEveryTruncationOffsetYieldsAValidPrefix() async throws {
        let source = temporaryDirectory()
        let entries = sampleRecords(25)
        try await writeJournal(entries, to: source)
        let file = Journal.segmentFiles(in: source)[0]
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        // Where each record ends, so the expected prefix is known for every cut.
        var boundaries: [Int] = []
        _ = try Journal.scan(directory: source, repair: false) { _ in }
        var offset = SegmentHeader.size
        bytes.withUnsafeBytes { raw in
            while case .success(let read) = JournalRecord.read(raw, at: offset) {
                offset += read.size
                boundaries.append(offset)
            }
        }
        #expect(boundaries.count == 25)
        // A thousand journals written, repaired and read: on a thread of their own.
        let ends = boundaries
        let found = try await OffPool.cpu("truncations") { () throws -> [String] in
            var found: [String] = []
            for cut in 0...bytes.count {
                let directory = temporaryDirectory()
                let path = directory + "/" + (file as NSString).lastPathComponent
                try bytes.prefix(cut).write(to: URL(fileURLWithPath: path))
                let (records, scan) = try readAll(directory, repair: true)
                let complete = ends.filter { $0 <= cut }.count
                if records.count != complete { found.append("cut at \(cut): \(records.count) records, expected \(complete)") }
                if records.map(\.command) != entries.prefix(complete).map(\.command) { found.append("cut at \(cut): other records than written") }
                let atBoundary = cut == SegmentHeader.size || ends.contains(cut)
                if (scan.tornTail == nil) != atBoundary { found.append("cut at \(cut): torn tail \(String(describing: scan.tornTail))") }
                // After repair the journal is clean and can be appended to.
                if try readAll(directory).1.tornTail != nil { found.append("cut at \(cut): still torn after repair") }
                try? FileManager.default.removeItem(atPath: directory)
            }
            return found
        }
        #expect(found.isEmpty, "\(found.prefix(5))")
    }

    @Test func randomBitFlipsAreDetected() async throws {
        let source = temporaryDirectory()
        try await writeJournal(sampleRecords(40), to: source)
        let file = Journal.segmentFiles(in: source)[0]
        let original = try Data(contentsOf: URL(fileURLWithPath: file))
        let (clean, _) = try readAll(source)
        let found = try await OffPool.cpu("bit-flips") { () throws -> [String] in
            var found: [String] = []
            var rng = SeededGenerator(seed: 99)
            for _ in 0..<500 {
                var bytes = original
                let position = Int.random(in: 0..<bytes.count, using: &rng)
                bytes[position] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
                let directory = temporaryDirectory()
                try bytes.write(to: URL(fileURLWithPath: directory + "/" + (file as NSString).lastPathComponent))
                do {
                    let (records, scan) = try readAll(directory)
                    // Not thrown: then the damage was at the end and reported as a torn tail, and
                    // no record after it was accepted.
                    if scan.tornTail == nil { found.append("flip at \(position) went unnoticed") }
                    if records.count >= clean.count || records != Array(clean.prefix(records.count)) {
                        found.append("flip at \(position): records past the damage were accepted")
                    }
                } catch let damage as JournalDamage {
                    if !(damage.offset <= position || damage.offset == 0) { found.append("flip at \(position) reported at \(damage.offset)") }
                }
                try? FileManager.default.removeItem(atPath: directory)
            }
            return found
        }
        #expect(found.isEmpty, "\(found.prefix(5))")
    }

    /// A checkpoint whose length field is damaged, even to a value no `Int` holds (the top bit
    /// flipped), is passed over, never a trap at start-up.
    @Test func aCheckpointWithADamagedLengthIsPassedOver() throws {
        let directory = temporaryDirectory()
        var driver = LedgerDriver()
        Fixtures.seedsExample(&driver)
        let path = try Checkpoint.write(driver.ledger.snapshot(), at: Checkpoint.Position(sequence: 7, checksum: 1), in: directory)
        #expect(Checkpoint.read(path, limits: LedgerLimits()) != nil)
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        // The length is the eight bytes after magic, version, flags, sequence and checksum; the
        // sequence (8…15) and the record checksum (16…19) are covered by the header checksum.
        for (offset, flip) in [(20, UInt8(0x80)), (20, 0xFF), (27, 0x01), (24, 0x40), (8, 0x80), (15, 0x01), (16, 0x01), (19, 0x80), (6, 0x01)] {
            var damaged = original
            damaged[offset] ^= flip
            try damaged.write(to: URL(fileURLWithPath: path))
            #expect(Checkpoint.read(path, limits: LedgerLimits()) == nil, "length byte \(offset) ^ \(flip)")
            #expect(Checkpoint.newest(in: directory, limits: LedgerLimits()) == nil)
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// One limit for records, when writing and when reading: a command as large as the largest
    /// frame a server accepts (a PROVISION of 60,000 members, about 2.6 MB) is written and read
    /// back, as the last record and followed by others.
    @Test func aRecordAsLargeAsTheLargestFrameComesBack() async throws {
        let directory = temporaryDirectory()
        let members = (0..<60_000).map { "member-\(String(repeating: "x", count: 30))-\($0)" }
        let big = LedgerDriver.Entry(
            command: .provision(Provision(account: "big", plan: "team", members: members)), key: "provision-big", at: Fixtures.start)
        let small = sampleRecords(3)
        try await writeJournal([big], to: directory)
        #expect(try readAll(directory).0.map(\.command) == [big.command])
        try await writeJournal(small, to: directory)
        let (records, scan) = try readAll(directory)
        #expect(scan.tornTail == nil)
        #expect(records.map(\.command) == [big.command] + small.map(\.command))
        try? FileManager.default.removeItem(atPath: directory)
    }

    @Test func damageBeforeTheTailRefusesWithTheFileAndOffset() async throws {
        let directory = temporaryDirectory()
        try await writeJournal(sampleRecords(30), to: directory)
        let file = Journal.segmentFiles(in: directory)[0]
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        let target = SegmentHeader.size + 40
        bytes[target] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: file))
        do {
            _ = try readAll(directory, repair: true)
            Issue.record("damage in the middle was accepted")
        } catch let damage as JournalDamage {
            #expect(damage.file == file)
            #expect(damage.offset == SegmentHeader.size)
        }
        // Nothing was truncated by the failed attempt.
        #expect(try Data(contentsOf: URL(fileURLWithPath: file)).count == bytes.count)
    }

    /// The server journals a command from its request body as received. For the encoding the
    /// clients write, the record is byte for byte the one encoded from the command; a body the
    /// decoder reads the same way but spells otherwise (an overage value that `deny` ignores)
    /// is kept as it came and reads back as the same command.
    @Test func aRecordWrittenFromTheReceivedBodyIsTheEncodedOne() throws {
        for entry in sampleRecords(200) {
            var body = ByteBuffer()
            WireRequest.command(entry.command, key: entry.key).encodeBody(into: &body)
            let record = JournalRecord(sequence: 7, instant: entry.at, key: entry.key, command: entry.command)
            var encoded = ByteBuffer()
            var passed = ByteBuffer()
            let checksum = record.write(to: &encoded, previousChecksum: 99)
            #expect(record.write(to: &passed, previousChecksum: 99, body: body) == checksum)
            #expect(encoded == passed)
        }
        let command = Command.setOverage(account: "acme", policy: .deny)
        var body = ByteBuffer()
        WireRequest.command(command, key: "k-1").encodeBody(into: &body)
        // The overage value, the body's last 8 bytes: 0 for deny as encoded, anything as read.
        body.setInteger(Int64(12_345), at: body.writerIndex - 8)
        #expect(try WireRequest.decode(opcode: Opcode.setOverage.rawValue, body: body) == .command(command, key: "k-1"))
        var bytes = ByteBuffer()
        JournalRecord(sequence: 1, instant: Fixtures.start, key: "k-1", command: command).write(to: &bytes, previousChecksum: 0, body: body)
        let read = bytes.withUnsafeReadableBytes { JournalRecord.read($0, at: 0) }
        guard case .success(let back) = read else {
            Issue.record("the record did not read back: \(read)")
            return
        }
        #expect(back.record.command == command)
        #expect(back.record.key == "k-1")
        #expect(back.size == bytes.readableBytes)
    }

    @Test func crc32cMatchesTheStandardCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([]) == 0)
        let check = Array("123456789".utf8)
        #expect(check.withUnsafeBytes { CRC32C.softwareChecksum($0) } == 0xE306_9283)
    }

    /// The instruction and the tables agree on every length, alignment and seed (where the CPU
    /// has no instruction both calls are the tables, and this checks nothing new).
    @Test func crc32cInHardwareMatchesTheTables() {
        var generator = SeededGenerator(seed: 32)
        let bytes = (0..<4_200).map { _ in UInt8.random(in: 0...255, using: &generator) }
        var mismatches: [String] = []
        bytes.withUnsafeBytes { buffer in
            for length in [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 255, 1_000, 4_096, 4_100] {
                for offset in [0, 1, 3, 5, 7] where offset + length <= buffer.count {
                    let slice = UnsafeRawBufferPointer(rebasing: buffer[offset..<(offset + length)])
                    for seed: UInt32 in [0, 0xFFFF_FFFF, 0x1234_5678] where CRC32C.checksum(slice, seed: seed) != CRC32C.softwareChecksum(slice, seed: seed) {
                        mismatches.append("length \(length) offset \(offset) seed \(seed)")
                    }
                }
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(5))")
    }
}

/// Sync mode's answers: the waiters a batch covers on one event loop are told on that loop,
/// in the order they waited.
@Suite struct DurableOnLoopTests {
    struct Told: Sendable, Equatable {
        var sequence: UInt64
        var onLoop: Bool
        var kept: Bool
    }

    @Test func waitersAreToldOnTheirLoopInOrder() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let entries = sampleRecords(60)
        let told: [Told] = try await OffPool.blocking {
            let writer = try JournalWriter(directory: directory, mode: .sync, after: try Journal.scan(directory: directory, repair: true) { _ in })
            let seen = Mutex<[Told]>([])
            let all = DispatchSemaphore(value: 0)
            for (index, entry) in entries.enumerated() {
                let sequence = writer.append(entry.command, key: entry.key, instant: entry.at)
                writer.whenDurable(sequence, on: loop) { result in
                    let kept: Bool
                    if case .success = result { kept = true } else { kept = false }
                    let count = seen.withLock {
                        $0.append(Told(sequence: sequence, onLoop: loop.inEventLoop, kept: kept))
                        return $0.count
                    }
                    if count == entries.count { all.signal() }
                }
                if index % 7 == 0 { usleep(200) }  // several batches
            }
            guard all.wait(timeout: .now() + 30) == .success else { return [] }
            // A record already on disk, asked about from off the loop: told on the loop.
            let late = DispatchSemaphore(value: 0)
            writer.whenDurable(UInt64(entries.count), on: loop) { result in
                let kept: Bool
                if case .success = result { kept = true } else { kept = false }
                seen.withLock { $0.append(Told(sequence: 0, onLoop: loop.inEventLoop, kept: kept)) }
                late.signal()
            }
            _ = late.wait(timeout: .now() + 30)
            writer.close()
            return seen.withLock { $0 }
        }
        try await group.shutdownGracefully()
        try #require(told.count == entries.count + 1, "every waiter is told")
        #expect(told.dropLast().map(\.sequence) == Array(1...UInt64(entries.count)), "in the order they waited")
        #expect(told.allSatisfy { $0.onLoop && $0.kept })
    }
}
