import Foundation
import Synchronization
import Testing
import TollgateJournal
import TollgateLedger
import TollgateLedgerTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The disk tier of idempotency keys on its own: runs written, read back, merged, expired,
/// limited, damaged and failing.
@Suite struct KeyArchiveTests {
    final class Clock: Sendable {
        private let value = Mutex<Int64>(1_000_000_000_000)
        var now: Instant { Instant(microsecondsSinceEpoch: value.withLock { $0 }) }
        func advance(_ microseconds: Int64) { value.withLock { $0 += microseconds } }
    }

    static let hour: Int64 = 3_600_000_000

    func keys(_ range: Range<Int>, decided: Instant, seed: UInt64 = 1) -> [ArchivedKey] {
        range.map { index in
            let digest = ArchivedKey.digest(account: "acct-\(index % 7)", key: "key-\(seed)-\(index)")
            let answer: Answer = index % 3 == 0
                ? .refused(Refusal(LedgerError(.insufficientFunds, level: .account, subject: "acct-\(index % 7)")))
                : .decision(Decision(hold: UInt64(index), cost: Int64(index), creditsPerUnit: 5, deadline: nil, headroom: Headroom(member: 5, funds: Int64(index) * 3)))
            return ArchivedKey(low: digest.low, high: digest.high, fingerprint: UInt64(index) &* 0x9E37_79B9, decidedAt: decided.adding(microseconds: Int64(index)), answer: answer)
        }
    }

    func directory() -> String { NSTemporaryDirectory() + "tollgate-keyarchive-\(UUID().uuidString)" }

    func settings(_ directory: String, batch: Int = 1_000) -> KeyArchive.Settings {
        var settings = KeyArchive.Settings(directory: directory, retentionMicroseconds: 24 * Self.hour)
        settings.batchKeys = batch
        settings.pendingMax = 100 * batch
        return settings
    }

    @Test func keysWrittenToRunsReadBackExactlyAndSurviveReopening() async throws {
        try await OffPool.cpu {
            let clock = Clock()
            let path = directory()
            let archive = try KeyArchive(settings: settings(path), clock: { clock.now })
            let all = keys(0..<5_500, decided: clock.now)
            archive.add(all)
            // Waiting keys are found in memory.
            if case .found(let key) = archive.probe(low: all[7].low, high: all[7].high) { #expect(key == all[7]) } else { Issue.record("not waiting") }
            while archive.maintain() {}
            try archive.persist()
            #expect(archive.statistics.keysWaiting == 0)
            #expect(archive.statistics.keysOnDisk == 5_500)
            for key in all.shuffled().prefix(500) { #expect(try archive.read(low: key.low, high: key.high) == key) }
            // Keys never added: the filters rule nearly all out without a read.
            let strangers = keys(0..<10_000, decided: clock.now, seed: 99)
            var onDisk = 0
            for key in strangers {
                if case .onDisk = archive.probe(low: key.low, high: key.high) { onDisk += 1 }
                #expect(try archive.read(low: key.low, high: key.high) == nil)
            }
            #expect(onDisk < 100, "\(onDisk) of 10,000 unknown keys passed the filters")
            archive.stop()
            let reopened = try KeyArchive(settings: settings(path), clock: { clock.now })
            #expect(reopened.statistics.keysOnDisk == 5_500)
            for key in all.shuffled().prefix(500) { #expect(try reopened.read(low: key.low, high: key.high) == key) }
            #expect(Set(try reopened.allKeys()) == Set(all))
        }
    }

    @Test func runsAreMergedAndDeletedOnceExpired() async throws {
        try await OffPool.cpu {
            let clock = Clock()
            let archive = try KeyArchive(settings: settings(directory(), batch: 200), clock: { clock.now })
            let all = keys(0..<4_000, decided: clock.now)
            for start in stride(from: 0, to: 4_000, by: 200) {
                archive.add(Array(all[start..<start + 200]))
                while archive.maintain() {}
            }
            try archive.persist()
            while archive.maintain() {}
            let stats = archive.statistics
            #expect(stats.merges > 0)
            #expect(stats.runs < 20, "20 runs of 200 written, \(stats.runs) left after merging")
            #expect(stats.keysOnDisk == 4_000)
            for key in all.shuffled().prefix(300) { #expect(try archive.read(low: key.low, high: key.high) == key) }
            // Once every key is past the retention, the runs go.
            clock.advance(24 * Self.hour + 10_000)
            while archive.maintain() {}
            #expect(archive.statistics.runs == 0)
            #expect(archive.statistics.keysOnDisk == 0)
        }
    }

    @Test func duplicatesAreMergedIntoOne() async throws {
        try await OffPool.cpu {
            let clock = Clock()
            var settings = settings(directory(), batch: 100)
            settings.retentionMicroseconds = 8 * 1_000_000
            let archive = try KeyArchive(settings: settings, clock: { clock.now })
            let some = keys(0..<100, decided: clock.now)
            for _ in 0..<4 {
                archive.add(some)
                try archive.persist()
            }
            // Their window is closed once the clock has moved on past it: merged into one run.
            clock.advance(1_500_000)
            while archive.maintain() {}
            #expect(archive.statistics.runs == 1)
            #expect(archive.statistics.keysOnDisk == 100)
        }
    }

    @Test func aLimitForgetsTheKeysDecidedFirstAndSaysSo() async throws {
        try await OffPool.cpu {
            let clock = Clock()
            var limited = settings(directory(), batch: 500)
            limited.keysMax = 1_200
            let messages = Mutex<[String]>([])
            let archive = try KeyArchive(settings: limited, clock: { clock.now }) { message in messages.withLock { $0.append(message) } }
            let first = keys(0..<1_000, decided: clock.now)
            let second = keys(0..<1_000, decided: clock.now.adding(microseconds: Self.hour), seed: 2)
            archive.add(first)
            try archive.persist()
            archive.add(second)
            try archive.persist()
            while archive.maintain() {}
            let stats = archive.statistics
            #expect(stats.keysOnDisk <= 1_200)
            #expect(stats.forgottenEarly >= 800)
            #expect(stats.lastLimit == "keysMax")
            #expect(messages.withLock { $0.contains { $0.contains("keysMax") } })
            for key in second.prefix(100) { #expect(try archive.read(low: key.low, high: key.high) == key, "the newest keys are kept") }
        }
    }

    @Test func aDamagedRunIsSetAsideAndADamagedPageIsAnErrorNotACrash() async throws {
        try await OffPool.cpu {
            let clock = Clock()
            let path = directory()
            let archive = try KeyArchive(settings: settings(path, batch: 2_000), clock: { clock.now })
            let all = keys(0..<3_000, decided: clock.now)
            archive.add(Array(all[0..<1_500]))
            try archive.persist()
            archive.add(Array(all[1_500...]))
            try archive.persist()
            archive.stop()
            let runs = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".tgk") }.sorted()
            #expect(runs.count == 2)
            // The first run: a byte of its filter flipped. The second: a byte of its first page.
            for (name, offset) in [(runs[0], -100), (runs[1], 20)] {
                let file = path + "/" + name
                var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
                let index = offset < 0 ? bytes.count + offset : offset
                bytes[index] ^= 0xFF
                try Data(bytes).write(to: URL(fileURLWithPath: file))
            }
            let reopened = try KeyArchive(settings: settings(path), clock: { clock.now })
            #expect(reopened.statistics.damagedRuns == 1)
            #expect(reopened.statistics.runs == 1)
            #expect(FileManager.default.fileExists(atPath: path + "/" + runs[0] + ".damaged"))
            var failures = 0
            for key in all[1_500...] {
                do { _ = try reopened.read(low: key.low, high: key.high) } catch { failures += 1 }
            }
            #expect(failures > 0, "a damaged page is reported")
            #expect(reopened.statistics.readFailures == failures)
        }
    }

    /// Files whose writes fail while `failing` is set.
    final class FailingFiles: JournalFiles, Sendable {
        let failing = Mutex<Bool>(false)
        func write(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
            if failing.withLock({ $0 }) {
                errno = ENOSPC
                return -1
            }
            return SystemJournalFiles().write(descriptor, bytes)
        }
        func sync(_ descriptor: Int32) -> Int32 { SystemJournalFiles().sync(descriptor) }
    }

    /// Files that note, per descriptor, the most bytes written between two syncs.
    final class SyncCountingFiles: JournalFiles, Sendable {
        private let state = Mutex<(unsynced: [Int32: Int], most: Int, total: Int)>(([:], 0, 0))
        var mostUnsynced: Int { state.withLock { $0.most } }
        var totalWritten: Int { state.withLock { $0.total } }
        func write(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
            let written = SystemJournalFiles().write(descriptor, bytes)
            if written > 0 {
                state.withLock {
                    $0.unsynced[descriptor, default: 0] += written
                    $0.total += written
                    $0.most = max($0.most, $0.unsynced[descriptor]!)
                }
            }
            return written
        }
        func sync(_ descriptor: Int32) -> Int32 {
            state.withLock { $0.unsynced[descriptor] = 0 }
            return SystemJournalFiles().sync(descriptor)
        }
    }

    /// A run is synced as it is written, so that the journal's fdatasync on the same file
    /// system never waits behind many MiB of a run's dirty pages.
    @Test func aLargeRunIsSyncedAsItIsWritten() async throws {
        try await OffPool.cpu {
            let clock = Clock()
            let files = SyncCountingFiles()
            var countingSettings = settings(directory(), batch: 60_000)
            countingSettings.files = files
            let archive = try KeyArchive(settings: countingSettings, clock: { clock.now })
            let all = keys(0..<60_000, decided: clock.now)
            archive.add(all)
            _ = archive.maintain()
            try archive.persist()
            #expect(archive.statistics.keysOnDisk == all.count)
            #expect(files.totalWritten > 3 << 20, "the run is several MiB: \(files.totalWritten) bytes")
            // A page or the index and filter may cross the mark: at most a little past 1 MiB.
            #expect(files.mostUnsynced <= (1 << 20) + (256 << 10), "at most \(files.mostUnsynced) bytes written before a sync")
            for key in all.prefix(20) { #expect(try archive.read(low: key.low, high: key.high) == key) }
        }
    }

    @Test func aFailingDiskKeepsKeysWaitingAndFindableUntilItRecovers() async throws {
        try await OffPool.cpu {
            let clock = Clock()
            let files = FailingFiles()
            var failingSettings = settings(directory(), batch: 500)
            failingSettings.files = files
            let archive = try KeyArchive(settings: failingSettings, clock: { clock.now })
            let all = keys(0..<1_200, decided: clock.now)
            files.failing.withLock { $0 = true }
            archive.add(all)
            _ = archive.maintain()
            #expect(throws: (any Error).self) { try archive.persist() }
            #expect(archive.statistics.writeFailures >= 1)
            #expect(archive.statistics.keysOnDisk == 0)
            for key in all.prefix(50) { #expect(try archive.read(low: key.low, high: key.high) == key, "still waiting in memory") }
            #expect(try FileManager.default.contentsOfDirectory(atPath: failingSettings.directory).filter { $0.hasSuffix(".tmp") }.isEmpty)
            files.failing.withLock { $0 = false }
            try archive.persist()
            #expect(archive.statistics.keysOnDisk == 1_200)
            #expect(archive.statistics.keysWaiting == 0)
        }
    }
}
