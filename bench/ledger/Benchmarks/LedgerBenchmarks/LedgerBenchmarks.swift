import Benchmark
import TollgateLedger
import TollgateLedgerTestSupport

nonisolated(unsafe) var workloads: [Int: LedgerWorkload] = [:]

/// The large ledger of the issue (100,000 accounts, 1,000,000 members) and a small one that
/// fits in cache (100 accounts, 1,000 members): the difference is the cost of cache misses.
func workload(accounts: Int) -> LedgerWorkload {
    if let existing = workloads[accounts] { return existing }
    let made = LedgerWorkload(accounts: accounts)
    workloads[accounts] = made
    return made
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 20,
        scalingFactor: .kilo,
        maxDuration: .seconds(5),
        maxIterations: 2_000
    )

    for (accounts, label) in [(100_000, "1M members"), (100, "1k members")] {
        Benchmark("reserve+commit (pair), \(label)", closure: { benchmark in
            let state = workload(accounts: accounts)
            for _ in benchmark.scaledIterations { state.reserveAndCommit() }
        }, setup: { _ = workload(accounts: accounts) })

        Benchmark("spend, \(label)", closure: { benchmark in
            let state = workload(accounts: accounts)
            for _ in benchmark.scaledIterations { state.spend() }
        }, setup: { _ = workload(accounts: accounts) })

        Benchmark("check, \(label)", closure: { benchmark in
            let state = workload(accounts: accounts)
            for _ in benchmark.scaledIterations { state.check() }
        }, setup: { _ = workload(accounts: accounts) })
    }
}
