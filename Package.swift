// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "tollgate",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "TollgateLedger", targets: ["TollgateLedger"]),
        .library(name: "TollgateLedgerTestSupport", targets: ["TollgateLedgerTestSupport"]),
        .library(name: "TollgateWire", targets: ["TollgateWire"]),
        .executable(name: "tollgate-demo", targets: ["TollgateDemo"]),
        .executable(name: "tollgate-ledger-profile", targets: ["TollgateLedgerProfile"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        // The heart of Tollgate: balances, holds and the decision. No I/O; time is passed in.
        .target(
            name: "TollgateLedger",
            dependencies: [.product(name: "DequeModule", package: "swift-collections")]
        ),
        // The wire protocol of proto/PROTOCOL.md: frames, requests and responses. NIOCore only.
        .target(
            name: "TollgateWire",
            dependencies: ["TollgateLedger", .product(name: "NIOCore", package: "swift-nio")]
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
        .testTarget(
            name: "TollgateWireTests",
            dependencies: [
                "TollgateWire", "TollgateLedger", "TollgateLedgerTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
