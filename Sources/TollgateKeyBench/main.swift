import Foundation
import Synchronization
import TollgateJournal
import TollgateLedger
import TollgateLedgerTestSupport
import TollgateServer
import TollgateWire

#if canImport(Glibc)
import Glibc
#endif

// The idempotency keys' tiers at scale (bench/README.md, "Idempotency keys at production rates"):
//   swift build -c release --product tollgate-key-bench
//   .build/release/tollgate-key-bench --keys 50000000 --rate 2000 --retention-hours 24 --dir /var/tmp/keys
// Fills a disk tier with --keys keys as a server at --rate mutations a second would (time is
// the ledger's, compressed: nothing waits), then measures resident memory, disk bytes a key,
// the filters' cost and false positives, retries answered from each tier, and the decision
// path with the tier on and off.

var options: [String: String] = [:]
var argumentIndex = 1
let arguments = CommandLine.arguments
while argumentIndex + 1 < arguments.count, arguments[argumentIndex].hasPrefix("--") {
    options[String(arguments[argumentIndex].dropFirst(2))] = arguments[argumentIndex + 1]
    argumentIndex += 2
}
let keyCount = Int(options["keys"] ?? "") ?? 2_000_000
let rate = Int64(options["rate"] ?? "") ?? 2_000
let retentionHours = Int64(options["retention-hours"] ?? "") ?? 24
let directory = options["dir"] ?? NSTemporaryDirectory() + "tollgate-key-bench-\(getpid())"
let decisions = Int(options["decisions"] ?? "") ?? 400_000
let lookups = Int(options["lookups"] ?? "") ?? 20_000
let retention = retentionHours * 3_600_000_000

final class SimulatedClock: Sendable {
    private let value = Mutex<Int64>(1_800_000_000_000_000)
    var now: Instant { Instant(microsecondsSinceEpoch: value.withLock { $0 }) }
    func set(_ instant: Instant) { value.withLock { $0 = max($0, instant.microsecondsSinceEpoch) } }
}

func nanoseconds() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}

func mib(_ bytes: Int) -> String { String(format: "%.1f MiB", Double(bytes) / 1_048_576) }

func percentiles(_ samples: [UInt64]) -> String {
    let sorted = samples.sorted()
    func at(_ fraction: Double) -> String {
        let value = sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
        return value >= 10_000 ? String(format: "%.1f µs", Double(value) / 1_000) : "\(value) ns"
    }
    return "p50 \(at(0.5))  p99 \(at(0.99))  p99.9 \(at(0.999))  (n=\(sorted.count))"
}

// `--crc N`: CRC-32C over N-byte buffers (a journal record is about 100 bytes, a page of keys
// 8 KiB), with the CPU's instruction (if it has one) and with the tables, then exit.
if let size = options["crc"].flatMap({ Int($0) }) {
    let buffer = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    let rounds = max(1, 400_000_000 / max(1, size))
    func measure(_ label: String, _ checksum: (UnsafeRawBufferPointer) -> UInt32) {
        var sum: UInt32 = 0
        let began = nanoseconds()
        buffer.withUnsafeBytes { bytes in for _ in 0..<rounds { sum &+= checksum(bytes) } }
        let took = nanoseconds() - began
        print(String(format: "%@: %.1f ns a %d-byte buffer, %.0f MB/s (check %08x)", label, Double(took) / Double(rounds), size, Double(size * rounds) * 1e3 / Double(took), sum))
    }
    print("CRC-32C instruction available: \(CRC32C.usesHardware)")
    measure("CRC32C.checksum (what the journal uses)") { CRC32C.checksum($0) }
    measure("CRC32C.softwareChecksum (the tables)") { CRC32C.softwareChecksum($0) }
    exit(0)
}

let start = SimulatedClock()
let origin = start.now
/// Key `index` as the table would hand it on: decided at `rate` a second from the origin.
func archivedKey(_ index: Int) -> ArchivedKey {
    let decided = origin.adding(microseconds: Int64(index) * 1_000_000 / rate)
    let digest = ArchivedKey.digest(account: "account-\(index % 1_000)", key: "request-\(index)")
    let headroom = Headroom(member: Int64(index % 5_000), account: 90_000 - Int64(index % 90_000), funds: 1_000_000 - Int64(index % 1_000_000))
    let answer: Answer = index % 2 == 0
        ? .decision(Decision(hold: UInt64(index), cost: 60, creditsPerUnit: 12, deadline: decided.adding(microseconds: 30_000_000), headroom: headroom))
        : .decision(Decision(hold: nil, cost: 35, creditsPerUnit: 7, deadline: nil, headroom: headroom))
    return ArchivedKey(low: digest.low, high: digest.high, fingerprint: UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15, decidedAt: decided, answer: answer)
}

print("tollgate-key-bench: \(keyCount) keys at \(rate)/s (\(keyCount / Int(rate)) s of traffic), retention \(retentionHours) h, in \(directory)")
let baseline = residentBytes(trimmingFreedMemory: true)
let settings = KeyArchive.Settings(directory: directory, retentionMicroseconds: retention)
let archive = try KeyArchive(settings: settings, clock: { start.now }) { message in print("archive: \(message)") }

// 1. Fill, as evictions arrive: 4,096 at a time; the writer's work is timed apart.
var writerNanoseconds: UInt64 = 0
var writerCPU: Double = 0
func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}
let fillStarted = nanoseconds()
var chunk: [ArchivedKey] = []
chunk.reserveCapacity(4_096)
for index in 0..<keyCount {
    chunk.append(archivedKey(index))
    if chunk.count == 4_096 || index == keyCount - 1 {
        start.set(origin.adding(microseconds: Int64(index) * 1_000_000 / rate))
        archive.add(chunk)
        chunk.removeAll(keepingCapacity: true)
        if archive.statistics.keysWaiting >= settings.batchKeys {
            let before = nanoseconds()
            let cpuBefore = cpuSeconds()
            while archive.maintain() {}
            writerNanoseconds += nanoseconds() - before
            writerCPU += cpuSeconds() - cpuBefore
        }
    }
    if index > 0 && index % 10_000_000 == 0 {
        let stats = archive.statistics
        print("  \(index) keys: \(stats.runs) runs, \(stats.keysOnDisk) on disk, \(stats.merges) merges, \(String(format: "%.0f", Double(nanoseconds() - fillStarted) / 1e9)) s")
    }
}
do {
    let before = nanoseconds()
    let cpuBefore = cpuSeconds()
    try archive.persist()
    while archive.maintain() {}
    writerNanoseconds += nanoseconds() - before
    writerCPU += cpuSeconds() - cpuBefore
}
let filled = archive.statistics
let resident = residentBytes(trimmingFreedMemory: true) - baseline
print("")
print("filled in \(String(format: "%.1f", Double(nanoseconds() - fillStarted) / 1e9)) s; the writer (sort, write, fsync, merge) took \(String(format: "%.1f", Double(writerNanoseconds) / 1e9)) s wall, \(String(format: "%.1f", writerCPU)) s CPU")
print("  writer per key: \(String(format: "%.2f", Double(writerNanoseconds) / Double(keyCount) / 1_000)) µs wall, \(String(format: "%.2f", writerCPU * 1e6 / Double(keyCount))) µs CPU -> one core sustains \(Int(Double(keyCount) / max(writerCPU, 1e-9))) keys/s")
print("  runs \(filled.runs), merges \(filled.merges), keys on disk \(filled.keysOnDisk), forgotten early \(filled.forgottenEarly)")
print("  disk: \(filled.diskBytes) bytes = \(String(format: "%.1f", Double(filled.diskBytes) / Double(max(1, filled.keysOnDisk)))) bytes a key")
print("  memory: resident growth \(mib(resident)) = \(String(format: "%.2f", Double(resident) / Double(max(1, filled.keysOnDisk)))) bytes a key on disk (filters and page indexes: \(mib(filled.memoryBytes)))")

// 2. The filters: what telling a new key from the disk tier costs, and how often they are wrong.
var onDisk = 0
let strangers = (0..<1_000_000).map { ArchivedKey.digest(account: "account-\($0 % 1_000)", key: "never-\($0)") }
let probeStarted = nanoseconds()
for digest in strangers {
    if case .onDisk = archive.probe(low: digest.low, high: digest.high) { onDisk += 1 }
}
let probeNanoseconds = nanoseconds() - probeStarted
print("")
print("filters: a key never seen costs \(probeNanoseconds / UInt64(strangers.count)) ns to rule out against \(filled.runs) runs; \(onDisk) of \(strangers.count) (\(String(format: "%.3f", Double(onDisk) * 100 / Double(strangers.count)))%) would be read from disk")

// 3. Retries answered from each tier.
func retries(_ label: String) throws {
    var generator = SystemRandomNumberGenerator()
    var samples: [UInt64] = []
    for _ in 0..<lookups {
        let index = Int.random(in: 0..<keyCount, using: &generator)
        let expected = archivedKey(index)
        let before = nanoseconds()
        let found = try archive.read(low: expected.low, high: expected.high)
        samples.append(nanoseconds() - before)
        guard found == expected else { fatalError("key \(index) read back as \(String(describing: found))") }
    }
    print("retry from disk (\(label)): \(percentiles(samples))")
}
print("")
try retries("page cache warm")
// Cold: the runs' pages dropped from the page cache first.
for name in try FileManager.default.contentsOfDirectory(atPath: directory) where name.hasSuffix(".tgk") {
    let descriptor = open(directory + "/" + name, O_RDONLY)
    if descriptor >= 0 {
        posix_fadvise(descriptor, 0, 0, POSIX_FADV_DONTNEED)
        close(descriptor)
    }
}
try retries("pages dropped from the page cache with POSIX_FADV_DONTNEED")
do {
    let waiting = (keyCount..<(keyCount + 1_000)).map(archivedKey)
    archive.add(waiting)
    var samples: [UInt64] = []
    for key in waiting {
        let before = nanoseconds()
        let probe = archive.probe(low: key.low, high: key.high)
        samples.append(nanoseconds() - before)
        guard case .found(let found) = probe, found == key else { fatalError("a waiting key was not found") }
    }
    print("retry from the waiting batch (memory): \(percentiles(samples))")
}

// 4. The decision path through LedgerService, with the disk tier on (this archive) and off.
func makeService(archive: KeyArchive?) -> LedgerService {
    var configuration = ServerConfiguration()
    configuration.recentActivityKept = 0
    let service = LedgerService(configuration: configuration, clock: { start.now })
    var ledger = Ledger(limits: configuration.limits, startingAt: start.now)
    ledger.apply(.createAccount(CreateAccount(account: "bench")), key: "setup-1", at: start.now)
    ledger.apply(.addGrant(AddGrant(account: "bench", amount: 1_000_000_000_000, effectiveAt: .epoch)), key: "setup-2", at: start.now)
    ledger.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch), key: "setup-3", at: start.now)
    service.restore(ledger, journal: nil, archive: archive)
    service.reserveIdempotencyIndex()
    return service
}
let on = makeService(archive: archive)
let off = makeService(archive: nil)
archive.start()
func spend(_ key: String) -> WireRequest { .command(.spend(Spend(DecisionRequest(account: "bench", member: nil, product: "p", quantity: 1))), key: key) }
func decide(_ service: LedgerService, _ request: WireRequest) -> LedgerService.Handled {
    if let archive = service.archive {
        let (keys, checked) = service.keysToRead(request, archive: archive)
        return service.handle(request, read: keys.map { ReadKey(low: $0.low, high: $0.high, key: try? archive.read(low: $0.low, high: $0.high)) }, runsChecked: checked)
    }
    return service.handle(request)
}
var onSamples: [UInt64] = []
var offSamples: [UInt64] = []
let rounds = 8
var onTotal: UInt64 = 0
var offTotal: UInt64 = 0
for round in 0..<rounds {
    for (service, label) in [(on, "on"), (off, "off")] {
        let roundStarted = nanoseconds()
        for index in 0..<(decisions / rounds) {
            let request = spend("decision-\(round)-\(index)")
            let before = nanoseconds()
            let handled = decide(service, request)
            let took = nanoseconds() - before
            if label == "on" { onSamples.append(took) } else { offSamples.append(took) }
            if case .error = handled.response { fatalError("a decision failed: \(handled.response)") }
        }
        if label == "on" { onTotal += nanoseconds() - roundStarted } else { offTotal += nanoseconds() - roundStarted }
    }
}
print("")
print("decision path (LedgerService, new keys, one thread; the disk tier's writer on its own thread):")
print("  disk tier on : \(onTotal / UInt64(decisions)) ns a decision on average; \(percentiles(onSamples))")
print("  disk tier off: \(offTotal / UInt64(decisions)) ns a decision on average; \(percentiles(offSamples))")
print("  ratio on/off (means): \(String(format: "%.2f", Double(onTotal) / Double(offTotal)))")
do {
    var samples: [UInt64] = []
    for index in 0..<lookups {
        let request = spend("decision-\(rounds - 1)-\(decisions / rounds - 1 - index % 1_000)")
        let before = nanoseconds()
        _ = decide(on, request)
        samples.append(nanoseconds() - before)
    }
    print("retry from the in-memory table (through LedgerService): \(percentiles(samples))")
}
archive.stop()
let final = archive.statistics
print("")
print("after the decisions: \(final.runs) runs, \(final.keysOnDisk) keys on disk, \(final.keysWaiting) waiting, forgotten early \(final.forgottenEarly), write failures \(final.writeFailures)")
if options["keep"] == nil {
    try? FileManager.default.removeItem(atPath: directory)
}
