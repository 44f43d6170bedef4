// swift-tools-version:6.1
import PackageDescription

// One target per concern (see docs/architecture.md). The `palisade` executable is a thin shell over PalisadeCLI.
let strict: [SwiftSetting] = [
  .enableUpcomingFeature("ExistentialAny"),
  .enableUpcomingFeature("InternalImportsByDefault"),
]

// The kernels are compiled for x86-64-v3 (AVX2, FMA, BMI2); Swift's -target-cpu takes LLVM CPU names, and
// haswell is that level. An older CPU is refused at start by PalisadeCPUCheck (built without these flags).
// The check tests the build machine, so cross-compiling from x86-64 to arm64 needs this removed.
#if arch(x86_64)
let kernelFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
#else
let kernelFlags: [SwiftSetting] = []
#endif

let package = Package(
  name: "Palisade",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "palisade", targets: ["palisade"])
  ],
  // Exact versions: Package.resolved cannot be committed on these machines (their mirror has its own commit ids), so
  // these pins are the record of what a release is built from. Transitive packages are pinned in
  // deploy/release/pins.json, which `make release` and the test suite check against the resolved graph.
  dependencies: [
    .package(url: "https://github.com/grpc/grpc-swift-2.git", exact: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", exact: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
    .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
    .package(url: "https://github.com/apple/swift-nio.git", exact: "2.101.3"),
    .package(url: "https://github.com/apple/swift-nio-ssl.git", exact: "2.37.6"),
    .package(url: "https://github.com/apple/swift-nio-http2.git", exact: "1.46.0"),
    .package(url: "https://github.com/apple/swift-crypto.git", exact: "4.5.2"),
    .package(url: "https://github.com/apple/swift-certificates.git", exact: "1.21.1"),
    .package(url: "https://github.com/apple/swift-asn1.git", exact: "1.7.4"),
    .package(url: "https://github.com/apple/swift-argument-parser.git", exact: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log.git", exact: "1.16.2"),
    .package(url: "https://github.com/apple/swift-metrics.git", exact: "2.13.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus.git", exact: "2.4.1"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", exact: "2.13.0"),
    .package(url: "https://github.com/jpsim/Yams.git", exact: "6.2.2"),
    .package(url: "https://github.com/apple/swift-collections.git", exact: "1.6.0"),
    // Tracing (off by default): the API, and swift-otel's OTLP/gRPC exporter only (no HTTP client in the build).
    .package(url: "https://github.com/apple/swift-distributed-tracing.git", exact: "1.7.3"),
    .package(url: "https://github.com/swift-otel/swift-otel.git", exact: "1.6.0", traits: ["OTLPGRPC"]),
  ],
  targets: [
    // Generated protocol code (proto/ -> scripts/generate-protos.sh). Never edited by hand.
    .target(
      name: "PalisadeProto",
      dependencies: [
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ]
    ),
    // Errors, tensors, datatypes and the servable-model seam shared by every stage. No networking, no gRPC.
    .target(name: "PalisadeCore", swiftSettings: strict),
    // Tensors to and from their Open Inference Protocol wire form (typed contents, raw contents, BYTES framing).
    .target(name: "PalisadeWire", dependencies: ["PalisadeCore", "PalisadeProto"], swiftSettings: strict),
    // Strict YAML reading: typed values, unknown keys refused, errors that name the key path and line.
    .target(name: "PalisadeYAML", dependencies: [.product(name: "Yams", package: "Yams")], swiftSettings: strict),
    // Small things every process needs: the JSON and text log handlers, log escaping, hex, and the egress sidecar's
    // report format (shared by the sidecar that writes it and the server that reads it).
    .target(
      name: "PalisadeSupport", dependencies: [.product(name: "Logging", package: "swift-log")], swiftSettings: strict),
    // Out-of-distribution scoring against a bundle's reference statistics, and building those statistics from a
    // sample (`palisade bundle stats`): one scorer for the server and the publisher's tool.
    .target(name: "PalisadeScreening", dependencies: ["PalisadeCore"], swiftSettings: strict),
    // Caller identity: SPIFFE IDs, certificate thumbprints, client-certificate verification policy.
    .target(
      name: "PalisadeIdentity",
      dependencies: [
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
        .product(name: "Crypto", package: "swift-crypto"),
      ],
      swiftSettings: strict
    ),
    // Authorisation policy as code: rules, decisions, rate limits.
    .target(
      name: "PalisadePolicy",
      dependencies: [
        "PalisadeIdentity", "PalisadeYAML", "PalisadeSupport", .product(name: "Crypto", package: "swift-crypto"),
      ],
      swiftSettings: strict
    ),
    // SIMD compute kernels and the worker pool. Standard library only.
    .target(name: "PalisadeKernels", swiftSettings: strict + kernelFlags),
    // CPU feature check, deliberately built without the kernel flags so that it runs on the CPUs it refuses.
    .target(name: "PalisadeCPUCheck", swiftSettings: strict),
    // Generated from proto/onnx.proto (scripts/generate-onnx-proto.sh). Never edited by hand.
    .target(name: "PalisadeONNXProto", dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")]),
    // The ONNX model runtime: loading, planning and executing graphs on the kernels.
    .target(
      name: "PalisadeRuntime",
      dependencies: [
        "PalisadeCore", "PalisadeKernels", "PalisadeONNXProto", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ],
      swiftSettings: strict + kernelFlags
    ),
    // libzstd, for packed bundles.
    .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
    // The TCG software stack (ESAPI, TCTI loader, marshalling), for the TPM.
    .systemLibrary(name: "CTSS2", pkgConfig: "tss2-esys", providers: [.apt(["libtss2-dev"])]),
    // TPM 2.0: PCRs, the attestation key, quotes, EK certificate, credential activation (ESAPI), and the TPM wire
    // structures a verifier parses in pure Swift.
    .target(
      name: "PalisadeTPM",
      dependencies: [
        "CTSS2", .product(name: "Crypto", package: "swift-crypto"), .product(name: "_CryptoExtras", package: "swift-crypto"),
      ],
      swiftSettings: strict
    ),
    // Signed model bundles: OMS signatures, trust policy, manifest, rollback state, .tar.zst packing.
    .target(
      name: "PalisadeBundle",
      dependencies: [
        "CZstd", "PalisadeIdentity",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ],
      swiftSettings: strict
    ),
    // The tamper-evident audit log: RFC 6962 Merkle tree, framed segments, signed-note checkpoints, verifier.
    .target(name: "PalisadeAudit", dependencies: [.product(name: "Crypto", package: "swift-crypto")], swiftSettings: strict),
    // The gRPC server transport on swift-nio: TLS 1.3 only, client certificates verified, identity bound once per
    // connection, HTTP/2 and message limits, the gRPC protocol, and the fast path for unary inference.
    .target(
      name: "PalisadeTransport",
      dependencies: [
        "PalisadeIdentity", "PalisadeSupport",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "NIOTLS", package: "swift-nio"),
        .product(name: "NIOHTTP2", package: "swift-nio-http2"),
        .product(name: "NIOHPACK", package: "swift-nio-http2"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strict
    ),
    // The server: config, RPC services, the request pipeline, metrics, admin HTTP, lifecycle.
    .target(
      name: "PalisadeServer",
      dependencies: [
        "PalisadeProto", "PalisadeCore", "PalisadeWire", "PalisadeIdentity", "PalisadeTransport", "PalisadeYAML",
        "PalisadePolicy", "PalisadeBundle", "PalisadeAudit", "PalisadeOutbound", "PalisadeScreening", "PalisadeSupport",
        "PalisadeTPM",
        // The extraction monitor's projection and distances run on the kernels (AVX2/FMA; this target is not
        // compiled with the kernel flags).
        "PalisadeKernels",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "DequeModule", package: "swift-collections"),
        .product(name: "Tracing", package: "swift-distributed-tracing"),
        .product(name: "OTel", package: "swift-otel"),
      ],
      swiftSettings: strict
    ),
    // The egress sidecar (`palisade egress`): an inspecting forward proxy, the only way out. Knows nothing of the server.
    .target(
      name: "PalisadeEgress",
      dependencies: [
        "PalisadeYAML", "PalisadeSupport",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
      ],
      swiftSettings: strict
    ),
    // The server's own outbound HTTP: only ever through the egress proxy, queued and retried, never direct.
    .target(
      name: "PalisadeOutbound",
      dependencies: [
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ],
      swiftSettings: strict
    ),
    // A client for operators, the demo and tests (`palisade call`), and the appraiser of attestation evidence.
    .target(
      name: "PalisadeClient",
      dependencies: [
        "PalisadeProto", "PalisadeCore", "PalisadeWire",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        "PalisadeIdentity", "PalisadeYAML", "PalisadeTPM",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ],
      swiftSettings: strict
    ),
    // The subcommands that do not run the server (call, token, policy, bundle, quarantine, attest, audit, egress).
    // Deliberately without PalisadeServer: the layering test keeps it so.
    .target(
      name: "PalisadeTools",
      dependencies: [
        "PalisadeClient", "PalisadeCore", "PalisadeProto", "PalisadeYAML", "PalisadeIdentity", "PalisadePolicy",
        "PalisadeBundle", "PalisadeRuntime", "PalisadeScreening", "PalisadeAudit", "PalisadeEgress", "PalisadeSupport",
        "PalisadeTPM",
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strict
    ),
    // The root command and `serve`. The executable only calls into this.
    .target(
      name: "PalisadeCLI",
      dependencies: [
        "PalisadeServer", "PalisadeTools", "PalisadeSupport", "PalisadeYAML", "PalisadeIdentity", "PalisadeRuntime",
        "PalisadeCPUCheck",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strict
    ),
    .executableTarget(
      name: "palisade",
      dependencies: [
        "PalisadeCLI", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
      ],
      swiftSettings: strict
    ),

    // The fuzz targets' bodies (one per parser that sees outside bytes), shared by the libFuzzer driver (Fuzz/Driver,
    // declared only when PALISADE_FUZZ=1) and the corpus replay test in `make test`. See Fuzz/README.md.
    .target(
      name: "PalisadeFuzzTargets",
      dependencies: [
        "PalisadeAudit", "PalisadeBundle", "PalisadeCore", "PalisadeEgress", "PalisadeIdentity", "PalisadePolicy",
        "PalisadeProto", "PalisadeRuntime", "PalisadeServer", "PalisadeTPM", "PalisadeWire",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOEmbedded", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ],
      swiftSettings: strict
    ),
    .testTarget(name: "PalisadeFuzzReplayTests", dependencies: ["PalisadeFuzzTargets"]),

    // Test-only helpers: an in-process PKI, test models, a server on loopback.
    .target(
      name: "PalisadeTestSupport",
      dependencies: [
        "PalisadeCore", "PalisadeServer", "PalisadeIdentity", "PalisadeBundle", "PalisadeRuntime",
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
      ],
      path: "Tests/PalisadeTestSupport"
    ),
    // Benchmarks: the serving benchmark's server and load generator (Benchmarks/serving.sh).
    .executableTarget(
      name: "serving-bench",
      dependencies: [
        "PalisadeServer", "PalisadeClient", "PalisadeCore", "PalisadeProto", "PalisadeTestSupport", "PalisadeIdentity",
        "PalisadePolicy", "PalisadeRuntime", "PalisadeAudit", "PalisadeScreening",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ],
      path: "Benchmarks/ServingBench"
    ),
    .executableTarget(
      name: "kernel-bench", dependencies: ["PalisadeKernels", "PalisadeCPUCheck"], path: "Benchmarks/kernels/KernelBench",
      swiftSettings: strict + kernelFlags),
    .executableTarget(
      name: "runtime-bench", dependencies: ["PalisadeRuntime", "PalisadeCore", "PalisadeKernels"],
      path: "Benchmarks/runtime/RuntimeBench", swiftSettings: strict + kernelFlags),
    .executableTarget(
      name: "audit-bench", dependencies: ["PalisadeAudit"], path: "Benchmarks/audit/AuditBench", swiftSettings: strict),
    .executableTarget(
      name: "egress-bench",
      dependencies: [
        "PalisadeEgress", "PalisadeOutbound",
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Logging", package: "swift-log"),
      ],
      path: "Benchmarks/egress/EgressBench"),
    .testTarget(
      name: "PalisadeEgressTests",
      dependencies: [
        "PalisadeEgress", "PalisadeOutbound", "PalisadeTestSupport", "PalisadeYAML", "PalisadeSupport",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Crypto", package: "swift-crypto"),
      ]
    ),
    // The layering rules (docs/architecture.md) over Package.swift and the sources' imports. No dependencies.
    .testTarget(name: "PalisadeLayeringTests"),
    .testTarget(name: "PalisadeCoreTests", dependencies: ["PalisadeCore"]),
    .testTarget(
      name: "PalisadeTPMTests",
      dependencies: [
        "PalisadeTPM", "PalisadeTestSupport",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
      ]
    ),
    .testTarget(name: "PalisadeAuditTests", dependencies: ["PalisadeAudit", .product(name: "Crypto", package: "swift-crypto")]),
    .testTarget(
      name: "PalisadeRuntimeTests",
      dependencies: [
        "PalisadeRuntime", "PalisadeCore", "PalisadeKernels", "PalisadeONNXProto",
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ]),
    .testTarget(
      name: "PalisadeKernelsTests", dependencies: ["PalisadeKernels", "PalisadeCPUCheck"], swiftSettings: strict),
    .testTarget(
      name: "PalisadeBundleTests",
      dependencies: [
        "PalisadeBundle", "PalisadeIdentity", "CZstd",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ]
    ),
    .testTarget(name: "PalisadePolicyTests", dependencies: ["PalisadePolicy", "PalisadeIdentity", "PalisadeYAML"]),
    .testTarget(name: "PalisadeWireTests", dependencies: ["PalisadeWire", "PalisadeCore", "PalisadeProto"]),
    .testTarget(name: "PalisadeYAMLTests", dependencies: ["PalisadeYAML"]),
    .testTarget(
      name: "PalisadeTransportTests",
      dependencies: [
        "PalisadeTransport", "PalisadeIdentity", "PalisadeTestSupport", .product(name: "X509", package: "swift-certificates"),
        .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
        .product(name: "NIOHTTP2", package: "swift-nio-http2"),
      ]
    ),
    .testTarget(
      name: "PalisadeOutboundTests",
      dependencies: [
        "PalisadeOutbound",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ]
    ),
    .testTarget(name: "PalisadeClientTests", dependencies: ["PalisadeClient", "PalisadeProto"]),
    .testTarget(
      name: "PalisadeIdentityTests",
      dependencies: [
        "PalisadeIdentity", "PalisadeTestSupport",
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ]
    ),
    .testTarget(
      name: "PalisadeServerTests",
      dependencies: [
        "PalisadeServer", "PalisadeClient", "PalisadeCore", "PalisadeProto", "PalisadeTransport", "PalisadeWire",
        "PalisadeIdentity", "PalisadeTestSupport", "PalisadeYAML", "PalisadeAudit", "PalisadeOutbound",
        "PalisadeScreening", "PalisadeSupport", "PalisadeTPM",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ]
    ),
  ],
  swiftLanguageModes: [.v6]
)

// The libFuzzer driver has no `main` of its own (libFuzzer's comes with -sanitize=fuzzer), so it exists only for
// the fuzz build (Fuzz/run.sh): PALISADE_FUZZ=1 swift build -c release --scratch-path .build-fuzz
//   -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library --product palisade-fuzz
if Context.environment["PALISADE_FUZZ"] == "1" {
  package.products.append(.executable(name: "palisade-fuzz", targets: ["palisade-fuzz"]))
  package.targets.append(
    .executableTarget(name: "palisade-fuzz", dependencies: ["PalisadeFuzzTargets"], path: "Fuzz/Driver"))
}

// Zero warnings, kept there: every target of ours (not the generated protobuf code, not the system libraries)
// treats warnings as errors, in every build, so a warning cannot land (issue 17; docs/architecture.md).
for target in package.targets where target.type != .system && !["PalisadeProto", "PalisadeONNXProto"].contains(target.name) {
  target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-warnings-as-errors"])]
}
