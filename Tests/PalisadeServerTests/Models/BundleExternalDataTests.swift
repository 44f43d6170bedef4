import Foundation
import Logging
import PalisadeBundle
import PalisadeCore
import PalisadeRuntime
import PalisadeServer
import PalisadeTestSupport
import Testing

/// A signed bundle whose model keeps its weights in ONNX external data (`mlp_torch_ext.onnx` + `.onnx.data`),
/// loaded through the real `BundleLoader` and `ONNXModelRuntime`.
@Suite struct BundleExternalDataTests {
  static let fixtures = "\(repositoryRoot)/Tests/Fixtures"
  static let modelFile = "mlp_torch_ext.onnx"
  static let dataFile = "mlp_torch_ext.onnx.data"

  /// A temporary tree: `models/mlp/1/` signed by `factory`, plus the state file and the unpack directory.
  struct Sandbox {
    let root: String
    let factory = TestBundleFactory()
    var bundle: String { "\(root)/models/mlp/1" }

    init() async throws {
      root =
        FileManager.default.temporaryDirectory.appendingPathComponent("palisade-ext-bundle-\(UUID().uuidString)").path
      let bundle = "\(root)/models/mlp/1"
      try FileManager.default.createDirectory(atPath: bundle, withIntermediateDirectories: true)
      try FileManager.default.createDirectory(atPath: "\(root)/unpack", withIntermediateDirectories: true)
      for name in [BundleExternalDataTests.modelFile, BundleExternalDataTests.dataFile] {
        try FileManager.default.copyItem(
          atPath: "\(BundleExternalDataTests.fixtures)/\(name)", toPath: "\(bundle)/\(name)")
      }
      let manifest = BundleManifest(
        name: "mlp", version: 1, created: Date().addingTimeInterval(-60), expires: Date().addingTimeInterval(3600),
        modelFile: BundleExternalDataTests.modelFile, inputs: [.init(name: "input", datatype: .fp32, shape: [-1, 64])],
        outputs: [.init(name: "output", datatype: .fp32, shape: [-1, 10])], maxBatch: 64)
      try Data(try manifest.encodedJSON()).write(to: URL(fileURLWithPath: "\(bundle)/manifest.json"))
      _ = try await BundleSigner.sign(directory: bundle, key: .p256(factory.key))
    }

    func remove() { try? FileManager.default.removeItem(atPath: root) }

    func loader(
      repository: ModelRepository, integrity: IntegrityMonitor? = nil,
      afterVerification: (@Sendable (String) async throws -> Void)? = nil
    ) throws -> BundleLoader {
      let trust = TrustPolicy(rules: [.init(modelPattern: "mlp", signers: [try .publicKey(pem: factory.publicKeyPEM)])])
      return try BundleLoader(
        settings: .init(
          directories: ["\(root)/models"], trust: trust, stateFile: "\(root)/state.json",
          unpackDirectory: "\(root)/unpack"),
        runtimes: [ONNXModelRuntime()], repository: repository, logger: Logger(label: "test"), integrity: integrity,
        afterVerificationForTesting: afterVerification)
    }
  }

  static func integrityMonitor(_ repository: ModelRepository) -> IntegrityMonitor {
    let metrics = ServerMetrics()
    let logger = Logger(label: "test")
    return IntegrityMonitor(
      interval: .seconds(3600), repository: repository, metrics: metrics,
      auditor: Auditor(log: nil, metrics: metrics, logger: logger),
      logger: logger)
  }

  /// Runs the b32 fixture through the served model and compares with onnxruntime's outputs.
  static func servesSignedOutputs(_ repository: ModelRepository) async throws -> Bool {
    let model = try repository.resolve(name: "mlp", version: "")
    let input = Array(try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/mlp_torch_ext.b32.input.bin")))
    let expected = try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/mlp_torch_ext.b32.output.bin"))
      .withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    let x = try Tensor(name: "input", datatype: .fp32, shape: [32, 64], storage: .fixed(input))
    let out = try await model.infer(InferenceRequest(inputs: [x]))
    guard let got = out.first?.values(as: Float.self), got.count == expected.count else { return false }
    return zip(got, expected).allSatisfy { abs($0 - $1) <= 1e-5 + 1e-4 * abs($1) }
  }

  /// The external-data file is replaced on disk right after the bundle verified and before the runtime loads it:
  /// the served model still computes with the signed weights, because the runtime only ever sees the bytes that
  /// were hashed. (Before the fix the runtime re-opened the file by path and served the replacement's weights
  /// while attestation kept reporting the signed digests.)
  @Test func externalDataSwappedAfterVerificationNeverReachesTheRuntime() async throws {
    let sandbox = try await Sandbox()
    defer { sandbox.remove() }
    let swapped = [UInt8](
      repeating: 0,
      count: try FileManager.default.attributesOfItem(atPath: "\(sandbox.bundle)/\(Self.dataFile)")[.size] as? Int ?? 0)
    let bundle = sandbox.bundle
    let repository = ModelRepository()
    let loader = try sandbox.loader(repository: repository) { directory in
      #expect(directory == bundle)
      // What an attacker with write access to the models volume does: write a replacement, rename it over.
      let temp = "\(directory)/.swap"
      try Data(swapped).write(to: URL(fileURLWithPath: temp))
      try FileManager.default.removeItem(atPath: "\(directory)/\(Self.dataFile)")
      try FileManager.default.moveItem(atPath: temp, toPath: "\(directory)/\(Self.dataFile)")
    }
    try await loader.load(name: "mlp")
    #expect(repository.isReady(name: "mlp", version: "1"))
    // The swap happened on disk...
    #expect(Array(try Data(contentsOf: URL(fileURLWithPath: "\(bundle)/\(Self.dataFile)"))) == swapped)
    // ...but what is served is what was signed.
    #expect(try await Self.servesSignedOutputs(repository))
  }

  /// The same bundle packed: unpacked signature-first, served with the signed weights.
  @Test func packedExternalDataBundleServesTheSignedWeights() async throws {
    let sandbox = try await Sandbox()
    defer { sandbox.remove() }
    try BundlePacker.pack(directory: sandbox.bundle, to: "\(sandbox.root)/models/mlp/1.tar.zst")
    try FileManager.default.removeItem(atPath: sandbox.bundle)
    let repository = ModelRepository()
    try await sandbox.loader(repository: repository).load(name: "mlp")
    #expect(try await Self.servesSignedOutputs(repository))
    // The unpack directory is cleaned up.
    #expect(try FileManager.default.contentsOfDirectory(atPath: "\(sandbox.root)/unpack").isEmpty)
  }

  /// Every verified file is under the runtime integrity check, external data included: a byte flipped in the
  /// external-data pages takes the model out.
  @Test func integrityMonitorCoversExternalData() async throws {
    let sandbox = try await Sandbox()
    defer { sandbox.remove() }
    let repository = ModelRepository()
    let integrity = Self.integrityMonitor(repository)
    try await sandbox.loader(repository: repository, integrity: integrity).load(name: "mlp")
    #expect(Set(integrity.trackedFiles(model: "mlp")) == [Self.modelFile, Self.dataFile, "manifest.json"])
    #expect(await integrity.checkNow().isEmpty, "intact pages pass")
    #expect(try await Self.servesSignedOutputs(repository))

    integrity.corruptForTesting(model: "mlp", file: Self.dataFile, offset: 1000)
    #expect(await integrity.checkNow() == ["mlp"])
    #expect(!repository.isReady(name: "mlp", version: "1"))
    let entry = repository.index().first { $0.name == "mlp" }
    #expect(entry?.reason.contains("integrity check failed: \(Self.dataFile)") == true, "\(String(describing: entry))")
  }
}
