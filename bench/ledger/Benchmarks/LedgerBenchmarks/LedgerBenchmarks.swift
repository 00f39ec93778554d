import Benchmark
import TollgateLedger
import TollgateLedgerTestSupport

/// One ledger of 100,000 accounts × 10 members (1,000,000 members), shared by the
/// benchmarks and mutated in place across iterations. Each operation advances the ledger's
/// clock by one microsecond, so idempotency keys, resolved holds and hold deadlines (retention
/// and TTL of 50 ms of ledger time) are forgotten at the rate they are made: the tables reach a
/// steady size during warm-up and the measured operations find them full, as a long-running
/// server would.
final class LedgerBench: @unchecked Sendable {
    static let accountCount = 100_000
    static let membersPerAccount = 10
    static let retentionMicroseconds: Int64 = 50_000
    static let keyCount = 1 << 20

    var ledger: Ledger
    var now: Instant
    var operation = 0
    let accounts: [String]
    let members: [String]
    let keys: [String]

    init() {
        var limits = LedgerLimits()
        limits.idempotencyRetentionMicroseconds = Self.retentionMicroseconds
        limits.resolvedHoldsRetentionMicroseconds = Self.retentionMicroseconds
        ledger = Fixtures.large(accounts: Self.accountCount, membersPerAccount: Self.membersPerAccount, limits: limits)
        now = ledger.clock
        accounts = (0..<Self.accountCount).map { "a\($0)" }
        members = (0..<Self.membersPerAccount).map { "m\($0)" }
        keys = (0..<Self.keyCount).map { "op-\($0)" }
        precondition(ledger.memberCount == Self.accountCount * Self.membersPerAccount)
    }

    /// The next request: accounts in a stride that defeats the cache, members round robin.
    @inline(__always)
    func nextRequest() -> DecisionRequest {
        operation &+= 1
        let account = accounts[(operation &* 7_919) % Self.accountCount]
        return DecisionRequest(account: account, member: members[operation % Self.membersPerAccount], product: "p", quantity: 1)
    }

    @inline(__always)
    func nextKey() -> String {
        now = now.adding(microseconds: 1)
        return keys[operation & (Self.keyCount - 1)]
    }

    func reserveAndCommit() {
        let request = nextRequest()
        let reserved = ledger.apply(.reserve(Reserve(request, ttlMicroseconds: Self.retentionMicroseconds)), key: nextKey(), at: now)
        guard case .decision(let decision) = reserved, let hold = decision.hold else { preconditionFailure("reserve refused: \(reserved)") }
        operation &+= 1
        let committed = ledger.apply(.commit(Commit(HoldReference(account: request.account, hold: hold))), key: nextKey(), at: now)
        guard case .committed = committed else { preconditionFailure("commit refused: \(committed)") }
    }

    func spend() {
        let request = nextRequest()
        let answer = ledger.apply(.spend(Spend(request)), key: nextKey(), at: now)
        guard case .decision = answer else { preconditionFailure("spend refused: \(answer)") }
    }

    func check() {
        let request = nextRequest()
        now = now.adding(microseconds: 1)
        let answer = ledger.check(request, at: now)
        guard case .decision = answer else { preconditionFailure("check refused: \(answer)") }
    }
}

nonisolated(unsafe) var shared: LedgerBench?

func bench() -> LedgerBench {
    if let shared { return shared }
    let made = LedgerBench()
    shared = made
    return made
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal, .instructions],
        warmupIterations: 20,
        scalingFactor: .kilo,
        maxDuration: .seconds(5),
        maxIterations: 2_000
    )

    Benchmark("reserve+commit (pair)", closure: { benchmark in
        let state = bench()
        for _ in benchmark.scaledIterations { state.reserveAndCommit() }
    }, setup: { _ = bench() })

    Benchmark("spend", closure: { benchmark in
        let state = bench()
        for _ in benchmark.scaledIterations { state.spend() }
    }, setup: { _ = bench() })

    Benchmark("check", closure: { benchmark in
        let state = bench()
        for _ in benchmark.scaledIterations { state.check() }
    }, setup: { _ = bench() })
}
