import Foundation
import Testing

@testable import PalisadeBundle

/// Verification throughput against `sha256sum` on the same files, in the same run. Opt-in (writes ~1 GB):
/// `PALISADE_BUNDLE_BENCH_MB=1024 swift test --filter ThroughputBenchmark`.
@Suite("Throughput benchmark", .enabled(if: ProcessInfo.processInfo.environment["PALISADE_BUNDLE_BENCH_MB"] != nil))
struct ThroughputBenchmark {
  @Test func verifyVersusSha256sum() async throws {
    let megabytes = Int(ProcessInfo.processInfo.environment["PALISADE_BUNDLE_BENCH_MB"] ?? "") ?? 1024
    let temp = try TempDir("bench")
    let dir = try makeBundleDirectory(in: temp)
    // Four weight files (a typical sharded model); random-ish content.
    var block = [UInt8](repeating: 0, count: 1 << 20)
    for i in block.indices { block[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
    let shards = 4
    var paths: [String] = []
    for s in 0..<shards {
      let path = temp.sub("bundle/weights-\(s).bin")
      _ = FileManager.default.createFile(atPath: path, contents: nil)
      let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
      for m in 0..<(megabytes / shards) {
        block[0] = UInt8(truncatingIfNeeded: m)
        block[1] = UInt8(truncatingIfNeeded: s)
        try handle.write(contentsOf: block)
      }
      try handle.close()
      paths.append(path)
    }
    let key = TestKey()
    try await BundleSigner.sign(directory: dir, key: key.signing)
    let trust = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [.publicKey(key.publicKey)])])
    _ = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")  // warm the page cache

    let clock = ContinuousClock()
    let ours = try await clock.measure {
      _ = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    }
    let reference = try clock.measure {
      let p = Process()
      p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
      p.arguments = ["sha256sum"] + paths
      p.standardOutput = FileHandle.nullDevice
      try p.run()
      p.waitUntilExit()
    }
    let ratio = reference / ours
    print("bundle verify \(megabytes) MB: ours \(ours), sha256sum \(reference), speed ratio \(ratio)")
    #expect(ratio >= 0.9)
  }
}
