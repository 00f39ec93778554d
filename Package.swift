// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "tollgate",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "TollgateLedger", targets: ["TollgateLedger"]),
        .library(name: "TollgateLedgerTestSupport", targets: ["TollgateLedgerTestSupport"]),
        .executable(name: "tollgate-demo", targets: ["TollgateDemo"]),
        .executable(name: "tollgate-ledger-profile", targets: ["TollgateLedgerProfile"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
    ],
    targets: [
        // The heart of Tollgate: balances, holds and the decision. No I/O; time is passed in.
        .target(
            name: "TollgateLedger",
            dependencies: [.product(name: "DequeModule", package: "swift-collections")]
        ),
        // Fixtures, a seeded random generator and the invariant checker, shared by the
        // tests and the benchmarks.
        .target(
            name: "TollgateLedgerTestSupport",
            dependencies: ["TollgateLedger"]
        ),
        .executableTarget(
            name: "TollgateDemo",
            dependencies: ["TollgateLedger", "TollgateLedgerTestSupport"]
        ),
        // Runs the benchmark workload alone, for a profiler.
        .executableTarget(
            name: "TollgateLedgerProfile",
            dependencies: ["TollgateLedgerTestSupport"]
        ),
        .testTarget(
            name: "TollgateLedgerTests",
            dependencies: ["TollgateLedger", "TollgateLedgerTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
