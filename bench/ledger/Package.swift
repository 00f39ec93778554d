// swift-tools-version: 6.1
// Microbenchmarks of the ledger (ordo-one/benchmark). Run from this directory:
//   swift package --disable-sandbox benchmark
// It is a package of its own so the root package and CI never build the benchmark tooling.
import PackageDescription

import struct Foundation.URL

// A path dependency's identity is its folder's name, which depends on where the repository
// was cloned; read it instead of assuming it.
let rootIdentity = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "tollgate-ledger-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: "../.."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "LedgerBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TollgateLedger", package: rootIdentity),
                .product(name: "TollgateLedgerTestSupport", package: rootIdentity),
            ],
            path: "Benchmarks/LedgerBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ]
)
