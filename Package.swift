// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "tollgate",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "TollgateLedger", targets: ["TollgateLedger"]),
        .library(name: "TollgateLedgerTestSupport", targets: ["TollgateLedgerTestSupport"]),
        .library(name: "TollgateWire", targets: ["TollgateWire"]),
        .library(name: "TollgateClient", targets: ["TollgateClient"]),
        .library(name: "TollgateJournal", targets: ["TollgateJournal"]),
        .executable(name: "tollgated", targets: ["tollgated"]),
        .executable(name: "tollgate", targets: ["tollgate"]),
        .executable(name: "tollgate-ledger-profile", targets: ["TollgateLedgerProfile"]),
        .executable(name: "tollgate-decision-bench", targets: ["TollgateDecisionBench"]),
        .executable(name: "tollgate-key-bench", targets: ["TollgateKeyBench"]),
        .executable(name: "tollgate-tls-bench", targets: ["TollgateTLSBench"]),
        .executable(name: "tollgate-load", targets: ["TollgateLoad"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        // The heart of Tollgate: balances, holds and the decision. No I/O; time is passed in.
        .target(name: "TollgateLedger"),
        // The wire protocol of proto/PROTOCOL.md: frames, requests and responses. NIOCore only.
        .target(
            name: "TollgateWire",
            dependencies: ["TollgateLedger", .product(name: "NIOCore", package: "swift-nio")]
        ),
        // CRC-32C with the CPU's instruction where it has one (x86-64 SSE 4.2).
        .target(name: "CTollgateCRC"),
        // The journal: records, segments, the writer thread and recovery.
        .target(
            name: "TollgateJournal",
            dependencies: ["TollgateLedger", "TollgateWire", "CTollgateCRC", .product(name: "NIOCore", package: "swift-nio")]
        ),
        // Beyond one node: etcd's v3 API through its JSON gateway, leader election with
        // fencing and each shard's replicated journal (docs/CLUSTER.md).
        .target(
            name: "TollgateCluster",
            dependencies: [
                "TollgateJournal",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // tollgated's insides: connections, the shared ledger, the admin port, shutdown.
        .target(
            name: "TollgateServer",
            dependencies: [
                "TollgateLedger", "TollgateWire", "TollgateJournal", "TollgateCluster", "TollgateClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // The Swift client library.
        .target(
            name: "TollgateClient",
            dependencies: [
                "TollgateLedger", "TollgateWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // Fixtures, a seeded random generator and the invariant checker, shared by the
        // tests and the benchmarks.
        .target(
            name: "TollgateLedgerTestSupport",
            dependencies: ["TollgateLedger"]
        ),
        .executableTarget(
            name: "tollgated",
            dependencies: [
                "TollgateServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(
            name: "tollgate",
            dependencies: [
                "TollgateClient", "TollgateLedger", "TollgateWire", "TollgateJournal", "TollgateServer", "TollgateCluster",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // Runs the benchmark workload alone, for a profiler.
        .executableTarget(
            name: "TollgateLedgerProfile",
            dependencies: ["TollgateLedgerTestSupport"]
        ),
        // Where decisions run: measured by driving the real server both ways.
        .executableTarget(
            name: "TollgateDecisionBench",
            dependencies: [
                "TollgateServer", "TollgateClient", "TollgateLedger", "TollgateWire", "TollgateJournal",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The idempotency keys' tiers at scale: memory, disk, the decision path and retries.
        .executableTarget(
            name: "TollgateKeyBench",
            dependencies: ["TollgateServer", "TollgateLedger", "TollgateLedgerTestSupport", "TollgateWire", "TollgateJournal"]
        ),
        // What TLS costs: handshakes per second, and latency with and without it.
        .executableTarget(
            name: "TollgateTLSBench",
            dependencies: [
                "TollgateServer", "TollgateClient", "TollgateLedger", "TollgateWire",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The load generator of bench/: open-loop at a fixed rate, or closed-loop for saturation.
        .executableTarget(
            name: "TollgateLoad",
            dependencies: [
                "TollgateClient", "TollgateLedger", "TollgateWire", "TollgateCluster",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .testTarget(
            name: "TollgateLedgerTests",
            dependencies: ["TollgateLedger", "TollgateLedgerTestSupport"]
        ),
        .testTarget(
            name: "TollgateServerTests",
            dependencies: [
                // The executables themselves: the crash test runs and kills tollgated, and the
                // journal tests run the tollgate CLI.
                "tollgated", "tollgate",
                "TollgateServer", "TollgateClient", "TollgateWire", "TollgateLedger", "TollgateLedgerTestSupport", "TollgateJournal",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The load generator's pacing and measuring, driven with chosen instants.
        .testTarget(
            name: "TollgateLoadTests",
            dependencies: [
                "TollgateLoad",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .testTarget(
            name: "TollgateJournalTests",
            dependencies: ["TollgateJournal", "TollgateLedger", "TollgateLedgerTestSupport", "TollgateWire", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")]
        ),
        // Against real etcd members that the tests start and stop (skipped when etcd is not
        // installed, unless TOLLGATE_REQUIRE_ETCD=1, as in .ci/run).
        .testTarget(
            name: "TollgateClusterTests",
            dependencies: [
                // tollgated itself: the cluster's tests run real nodes and kill them.
                "tollgated",
                "TollgateCluster", "TollgateJournal", "TollgateLedger", "TollgateClient", "TollgateWire", "TollgateLedgerTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
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
