import Benchmark
import TollgateLedger
import TollgateLedgerTestSupport

nonisolated(unsafe) var shared: LedgerWorkload?

func bench() -> LedgerWorkload {
    if let shared { return shared }
    let made = LedgerWorkload()
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
