import Foundation
import Synchronization
import Testing
import TollgateJournal
import TollgateLedger
import TollgateLedgerTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Journal files whose durability a test decides. They are real files in a temporary
/// directory, but `sync` only marks what was written as durable (no fdatasync: the test is the
/// disk), and a crash cuts every file back to what was synced plus a random part of what was
/// not: a torn write. Faults are switched on and off by the test, from any thread: a failed
/// write lets `partialPerMille` of its bytes through first (ENOSPC), a failed fsync is EIO, a
/// failed creation EMFILE, a failed cut-back EIO.
final class SimulatedDisk: JournalFiles, Sendable {
    struct Faults {
        var write = false
        var sync = false
        var create = false
        var truncate = false
    }

    private struct State {
        /// Synced and written sizes by path; kept after a file is closed.
        var sizes: [String: (synced: Int, written: Int)] = [:]
        var paths: [Int32: String] = [:]
        var faults = Faults()
        var partialPerMille = 500
    }

    private let state = Mutex(State())
    private let system = SystemJournalFiles()

    var faults: Faults {
        get { state.withLock { $0.faults } }
        set { state.withLock { $0.faults = newValue } }
    }

    var partialPerMille: Int {
        get { state.withLock { $0.partialPerMille } }
        set { state.withLock { $0.partialPerMille = newValue } }
    }

    func create(_ path: String) -> Int32 {
        if faults.create {
            errno = EMFILE
            return -1
        }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o600)
        if descriptor >= 0 {
            state.withLock {
                $0.paths[descriptor] = path
                $0.sizes[path] = (0, 0)
            }
        }
        return descriptor
    }

    func openForAppend(_ path: String) -> Int32 {
        let descriptor = open(path, O_WRONLY | O_APPEND)
        if descriptor >= 0 {
            let size = Self.size(of: path)
            state.withLock {
                $0.paths[descriptor] = path
                $0.sizes[path] = (size, size)
            }
        }
        return descriptor
    }

    func write(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
        let (path, faults, partial) = state.withLock { ($0.paths[descriptor], $0.faults, $0.partialPerMille) }
        guard let path else { return system.write(descriptor, bytes) }
        let through = faults.write ? bytes.count * partial / 1_000 : bytes.count
        let written = system.write(descriptor, UnsafeRawBufferPointer(rebasing: bytes.prefix(through)))
        if written > 0 { state.withLock { $0.sizes[path]?.written += written } }
        guard !faults.write else {
            errno = ENOSPC
            return -1
        }
        return written
    }

    func sync(_ descriptor: Int32) -> Int32 {
        state.withLock { state in
            guard let path = state.paths[descriptor] else { return 0 }
            if state.faults.sync {
                errno = EIO
                return -1
            }
            if let written = state.sizes[path]?.written { state.sizes[path]?.synced = written }
            return 0
        }
    }

    func truncate(_ descriptor: Int32, _ size: Int) -> Int32 {
        if faults.truncate {
            errno = EIO
            return -1
        }
        let result = ftruncate(descriptor, off_t(size))
        if result == 0 {
            state.withLock { state in
                if let path = state.paths[descriptor], let old = state.sizes[path] { state.sizes[path] = (min(old.synced, size), size) }
            }
        }
        return result
    }

    func close(_ descriptor: Int32) {
        _ = state.withLock { $0.paths.removeValue(forKey: descriptor) }
        _ = Glibc.close(descriptor)
    }

    /// Power lost: every file keeps what was synced and a random part of the rest.
    func crash(using rng: inout SeededGenerator) {
        var sizes = state.withLock { $0.sizes }
        for (path, size) in sizes.sorted(by: { $0.key < $1.key }) {
            let torn = size.written > size.synced ? Int.random(in: 0...(size.written - size.synced), using: &rng) : 0
            let kept = size.synced + torn
            _ = Glibc.truncate(path, off_t(kept))
            sizes[path] = (kept, kept)
        }
        state.withLock {
            $0.sizes = sizes
            $0.faults = Faults()
        }
    }

    static func size(of path: String) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    }
}

/// A deterministic simulation of ledger + journal + checkpoints, in the manner of
/// TigerBeetle's VOPR: a seed drives commands (with retries), clock steps both ways, failed
/// and torn writes, failed fsyncs and cut-backs, segments that cannot be created, checkpoints
/// (some interrupted), pruning and crashes at any point. After every crash it recovers as
/// tollgated does and checks that every acknowledged mutation is there, that replay equals the
/// live state at the position recovered, and that the ledger's invariants hold. The writer has
/// no thread here: the seed alone decides when it writes, so a failing seed reproduces the run.
///
///     TOLLGATE_SIM_SEEDS=64 TOLLGATE_SIM_STEPS=100000 swift test --filter SimulationTests
///     TOLLGATE_SIM_SEED=1234 swift test --filter SimulationTests    # one seed, to reproduce
struct Simulation {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let seed: UInt64
    var rng: SeededGenerator
    let directory: String
    let disk = SimulatedDisk()
    var limits = LedgerLimits()
    var wall: Instant = Fixtures.start
    var ledger: Ledger
    var writer: JournalWriter
    /// Every record appended, in order: sequence n is `entries[n - 1]`.
    var entries: [LedgerDriver.Entry] = []
    /// The highest sequence a client was told is kept.
    var acknowledged: UInt64 = 0
    /// A ledger replayed through `baseCount` records, to replay the rest from at a crash.
    var base: Ledger
    var baseCount = 0
    var holds: [HoldID] = []
    /// Recent requests that were applied, with their sequence, for clients to retry.
    var sent: [(command: Command, key: String, sequence: Int)] = []
    var keyCounter = 0
    var stats = (steps: 0, commands: 0, crashes: 0, checkpoints: 0, faults: 0, recordsRecovered: 0)

    init(seed: UInt64) throws {
        self.seed = seed
        rng = SeededGenerator(seed: seed)
        directory = temporaryDirectory()
        limits.idempotencyKeysMax = [1_000_000, 64, 8][Int(seed % 3)]
        ledger = Ledger(limits: limits, startingAt: Fixtures.start)
        base = ledger
        writer = try JournalWriter(
            directory: directory, mode: .sync, after: try Journal.scan(directory: directory, repair: true) { _ in }, segmentBytes: 4_096, files: disk,
            thread: false)
    }

    func fail(_ what: String) -> Failure {
        Failure(description: "seed \(seed), step \(stats.steps): \(what)")
    }

    mutating func key() -> String {
        keyCounter += 1
        return "s\(seed)-\(keyCounter)"
    }

    mutating func apply(_ command: Command, key: String) {
        // The server refuses mutations while the journal reports a failure.
        guard writer.failureReason == nil else { return }
        let applied = ledger.applyRecording(command, key: key, at: wall)
        _ = ledger.takeEvents()
        stats.commands += 1
        if case .decision(let decision) = applied.answer, let hold = decision.hold { holds.append(hold) }
        guard applied.changedState else { return }
        let sequence = writer.append(command, key: key, instant: applied.instant)
        entries.append(LedgerDriver.Entry(command: command, key: key, at: applied.instant))
        guard sequence == UInt64(entries.count) else { fatalError("the writer numbered a record \(sequence), expected \(entries.count)") }
        sent.append((command, key, entries.count))
        if sent.count > 200 { sent.removeFirst(100) }
    }

    mutating func setUp() {
        apply(.setRate(product: "p", creditsPerUnit: 3, effectiveAt: wall), key: key())
        apply(.createAccount(CreateAccount(account: "acme", overage: .overdraft(limit: 50))), key: key())
        for member in ["ana", "ben", "cy"] { apply(.addMember(account: "acme", member: member), key: key()) }
        apply(.addGrant(AddGrant(account: "acme", amount: 5_000, effectiveAt: wall)), key: key())
        flush()
    }

    mutating func command() {
        let member = ["ana", "ben", "cy"].randomElement(using: &rng)!
        let request = DecisionRequest(account: "acme", member: member, product: "p", quantity: .random(in: 1...4, using: &rng))
        switch Int.random(in: 0..<100, using: &rng) {
        case 0..<30:
            apply(.spend(Spend(request)), key: key())
        case 30..<55:
            apply(.reserve(Reserve(request, ttlMicroseconds: .random(in: 1...30, using: &rng) * Microseconds.perSecond)), key: key())
        case 55..<75:
            guard let hold = holds.randomElement(using: &rng) else { return }
            let amount: Commit.Amount = Bool.random(using: &rng) ? .held : .credits(.random(in: 0...15, using: &rng))
            apply(.commit(Commit(HoldReference(account: "acme", hold: hold), amount: amount)), key: key())
        case 75..<82:
            guard let hold = holds.randomElement(using: &rng) else { return }
            apply(.release(HoldReference(account: "acme", hold: hold)), key: key())
        case 82..<88:
            apply(.addGrant(AddGrant(account: "acme", amount: .random(in: 1...300, using: &rng), effectiveAt: wall)), key: key())
        case 88..<92:
            apply(.setMemberCap(account: "acme", member: member, limit: Bool.random(using: &rng) ? nil : .random(in: 50...2_000, using: &rng)), key: key())
        default:
            // A client retrying an earlier request with its key: never applied twice.
            guard let earlier = sent.randomElement(using: &rng) else { return }
            apply(earlier.command, key: earlier.key)
        }
    }

    /// The writer's round: on success everything appended is kept, and acknowledged.
    mutating func flush() {
        if writer.flushPending(), writer.failureReason == nil {
            acknowledged = max(acknowledged, writer.durableSequence)
        }
        if disk.faults.write || disk.faults.sync || disk.faults.create || disk.faults.truncate {
            // A fault lasts a few rounds.
            if Int.random(in: 0..<3, using: &rng) == 0 { disk.faults = SimulatedDisk.Faults() }
        }
    }

    mutating func checkpoint() throws {
        // As tollgated does: only of a state whose every record is kept.
        flush()
        guard writer.failureReason == nil, writer.durableSequence == UInt64(entries.count) else { return }
        var copy = ledger
        _ = copy.takeEvents()
        try Checkpoint.write(copy.snapshot(), at: writer.durablePosition, in: directory)
        stats.checkpoints += 1
        if Int.random(in: 0..<2, using: &rng) == 0 {
            Checkpoint.prune(directory: directory, retentionSeconds: 0)
            let leftovers = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".tmp") }
            guard leftovers.isEmpty else { throw fail("an interrupted checkpoint's file was left after pruning: \(leftovers)") }
        }
    }

    mutating func crash() throws {
        stats.crashes += 1
        writer.abandon()
        if Int.random(in: 0..<4, using: &rng) == 0 {
            // Killed while writing a checkpoint: its temporary file is left behind.
            let junk = [UInt8](repeating: 0xAB, count: .random(in: 1...500, using: &rng))
            _ = FileManager.default.createFile(atPath: directory + "/" + Checkpoint.fileName(UInt64(entries.count + 1)) + ".tmp", contents: Data(junk))
        }
        disk.crash(using: &rng)
        try recover()
    }

    /// Recovery as tollgated does it, then the checks.
    mutating func recover() throws {
        let checkpoint = Checkpoint.newest(in: directory, limits: limits)
        var recovered = checkpoint?.ledger ?? Ledger(limits: limits, startingAt: Fixtures.start)
        var unchanged: [UInt64] = []
        let scan = try Journal.scan(directory: directory, repair: true, after: checkpoint?.position) { record in
            if !recovered.replay(record.command, key: record.key, at: record.instant).changedState { unchanged.append(record.sequence) }
        }
        _ = recovered.takeEvents()
        let position = Int(scan.lastSequence)
        guard scan.lastSequence >= acknowledged else {
            throw fail("acknowledged through \(acknowledged), but recovery found only \(scan.lastSequence)")
        }
        guard position <= entries.count, position >= baseCount else {
            throw fail("recovery found \(position) records; \(entries.count) were appended, \(baseCount) kept before")
        }
        guard unchanged.isEmpty else { throw fail("records \(unchanged) changed nothing on replay") }
        var expected = base
        for entry in entries[baseCount..<position] { _ = expected.replay(entry.command, key: entry.key, at: entry.at) }
        _ = expected.takeEvents()
        var left = recovered
        var right = expected
        let end = max(left.clock, right.clock, wall)
        left.advance(to: end)
        right.advance(to: end)
        _ = left.takeEvents()
        _ = right.takeEvents()
        guard left == right else { throw fail("the recovered ledger differs from the journal's first \(position) records replayed") }
        let violations = recovered.invariantViolations()
        guard violations.isEmpty else { throw fail("invariants: \(violations.prefix(3))") }
        stats.recordsRecovered += position - baseCount
        entries.removeSubrange(position...)
        sent.removeAll { $0.sequence > position }
        ledger = recovered
        base = recovered
        baseCount = position
        acknowledged = scan.lastSequence
        writer = try JournalWriter(directory: directory, mode: .sync, after: scan, segmentBytes: 4_096, files: disk, thread: false)
    }

    mutating func step() throws {
        stats.steps += 1
        switch Int.random(in: 0..<1_000, using: &rng) {
        case 0..<600: command()
        case 600..<800: flush()
        case 800..<900: wall = wall.adding(microseconds: .random(in: 0...3_000_000, using: &rng))
        case 900..<920: wall = wall.adding(microseconds: -.random(in: 1...5_000_000, using: &rng))  // a clock stepped back
        case 920..<950:
            stats.faults += 1
            switch Int.random(in: 0..<4, using: &rng) {
            case 0: disk.faults.write = true
            case 1: disk.faults.sync = true
            case 2: disk.faults.create = true
            default: disk.faults.truncate = true; disk.faults.write = true
            }
            disk.partialPerMille = .random(in: 0...1_000, using: &rng)
        case 950..<965: try checkpoint()
        case 965..<975: try crash()
        default: wall = wall.adding(microseconds: .random(in: 0...60_000_000, using: &rng))
        }
    }

    mutating func run(steps: Int) throws {
        do {
            setUp()
            for _ in 0..<steps { try step() }
            try crash()
        } catch let failure as Failure {
            throw failure
        } catch {
            throw fail("\(error)")  // a recovery that refused: the journal or a checkpoint was left damaged
        }
        writer.close()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite struct SimulationTests {
    static var environment: [String: String] { ProcessInfo.processInfo.environment }

    static var seeds: [UInt64] {
        if let one = environment["TOLLGATE_SIM_SEED"].flatMap(UInt64.init) { return [one] }
        let count = environment["TOLLGATE_SIM_SEEDS"].flatMap(Int.init) ?? 12
        return (1...UInt64(count)).map { $0 &* 0x9E37_79B9 }
    }

    static var steps: Int { environment["TOLLGATE_SIM_STEPS"].flatMap(Int.init) ?? 4_000 }

    /// Every seed in turn, on a thread of its own (it is CPU and file work).
    @Test func crashesAndFailingDisksNeverLoseAnAcknowledgedChange() async throws {
        let report = try await OffPool.cpu("simulation") { () throws -> [String] in
            var lines: [String] = []
            for seed in Self.seeds {
                var simulation = try Simulation(seed: seed)
                try simulation.run(steps: Self.steps)
                let s = simulation.stats
                lines.append(
                    "seed \(seed): \(s.steps) steps, \(s.commands) commands, \(s.crashes) crashes, \(s.checkpoints) checkpoints, \(s.faults) faults, \(s.recordsRecovered) records recovered")
            }
            return lines
        }
        for line in report { print(line) }
        #expect(report.count == Self.seeds.count)
    }
}
