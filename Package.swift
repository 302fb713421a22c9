// swift-tools-version: 6.0
import Foundation
import PackageDescription

// Architecture, from the inside out:
//   ReferralCore    pure decisions: events and a clock in, decisions out (no IO, no Date())
//   CRabbitMQ/AMQP  librabbitmq behind a thread-confined Swift actor
//   CLibPQ/Postgres libpq behind a thread-confined Swift actor
//   ReferralStore   every SQL statement and the migrations
//   ReferralWorker  wires broker, store and core into the pipeline
//   referrald       the command line
let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

// The image's build context holds Package.swift, Package.resolved and Sources/ only
// (.dockerignore): SwiftPM refuses to load a package whose test targets have no folder, which
// failed `swift package resolve` in the Dockerfile. The tests are declared where they exist.
let testTargets: [Target] =
    FileManager.default.fileExists(atPath: Context.packageDirectory + "/Tests")
    ? [
        .testTarget(
            name: "ReferralCoreTests", dependencies: ["ReferralCore", "ReferralTestKit"],
            resources: [.copy("Fixtures")], swiftSettings: strict),
        // Broker-free unit tests, next to the module they test.
        .testTarget(
            name: "ReferralWorkerTests",
            dependencies: [
                "ReferralWorker", "ReferralCore",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "ReferralStoreTests", dependencies: ["ReferralStore", "ReferralCore"], swiftSettings: strict),
        // What needs no server: URL parsing and value encoding of the libpq driver.
        .testTarget(name: "PostgresTests", dependencies: ["Postgres"], swiftSettings: strict),
        // The AMQP module without a broker: its state machines, confirm bookkeeping and URLs.
        .testTarget(
            name: "AMQPTests",
            dependencies: ["AMQP", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        // Days and civil dates: the one calendar arithmetic of the core and the driver.
        .testTarget(name: "CivilTimeTests", dependencies: ["CivilTime"], swiftSettings: strict),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "ReferralWorker", "ReferralStore", "AMQP", "Postgres", "ReferralCore", "ReferralTestKit",
                "ReferralTestWorld",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                // A registry of its own for an in-process worker's metrics (ReferralMetricsTests).
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            // The legacy database dump is restored with psql from its path, not bundled.
            exclude: ["Fixtures"],
            swiftSettings: strict),
    ]
    : []

let package = Package(
    name: "referrald",
    // swift-configuration's API and the standard library's Synchronization are macOS 15 and later.
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "referrald", targets: ["referrald"]),
        .executable(name: "referrald-bench", targets: ["referrald-bench"]),
        .executable(name: "referrald-faults", targets: ["referrald-faults"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CRabbitMQ", path: "Sources/CRabbitMQ", pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]),
        .systemLibrary(
            name: "CLibPQ", path: "Sources/CLibPQ", pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]),
        // Proleptic Gregorian day arithmetic, shared by the core's times and PostgreSQL's.
        .target(name: "CivilTime", swiftSettings: strict),
        .target(name: "ReferralCore", dependencies: ["CivilTime"], swiftSettings: strict),
        .target(
            name: "AMQP",
            dependencies: ["CRabbitMQ", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .target(
            name: "Postgres",
            dependencies: ["CLibPQ", "CivilTime", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .target(
            name: "ReferralStore",
            dependencies: ["Postgres", "ReferralCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .target(
            name: "ReferralWorker",
            dependencies: [
                "ReferralCore", "ReferralStore", "AMQP",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "referrald",
            dependencies: [
                "ReferralWorker",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // What the tests, the benchmark and the fault suite share that needs no service (the
        // seeded generator): the pure core's tests depend on it and so link no service module.
        .target(name: "ReferralTestKit", swiftSettings: strict),
        // One isolated world on the real services (scratch database, broker names, observer
        // queue, the daemon as a child process), built the same way by the integration tests,
        // the benchmark and the fault suite.
        .target(
            name: "ReferralTestWorld",
            dependencies: [
                "AMQP", "Postgres", "ReferralStore", "ReferralWorker",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // Throughput benchmark: drives the real daemon against the local services (BENCHMARKS.md).
        .executableTarget(
            name: "referrald-bench",
            dependencies: [
                "ReferralWorker", "ReferralStore", "AMQP", "Postgres", "ReferralCore", "ReferralTestKit",
                "ReferralTestWorld",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        // Fault suite: kills, restarts and cuts the real services under load, with an oracle.
        .executableTarget(
            name: "referrald-faults",
            dependencies: [
                "ReferralWorker", "ReferralStore", "AMQP", "Postgres", "ReferralCore", "ReferralTestKit",
                "ReferralTestWorld",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
    ] + testTargets
)
