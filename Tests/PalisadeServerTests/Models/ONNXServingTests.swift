import Foundation
import PalisadeBundle
import PalisadeProto
import PalisadeTestSupport
import Testing

/// A real ONNX model (scikit-learn's digits MLP from the fixtures) as a signed bundle, served over mTLS and
/// compared with onnxruntime's outputs.
@Suite struct ONNXServingTests {
  /// Signed by `palisade` and by the OpenSSF `model_signing` CLI: the server loads and serves both.
  @Test(arguments: ["palisade", "model_signing"])
  func signedDigitsBundleServesOnnxruntimeResults(signer: String) async throws {
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    let dir = pki.path("models/digits/1")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let fixtures = "\(repositoryRoot)/Tests/Fixtures"
    try FileManager.default.copyItem(atPath: "\(fixtures)/mlp_digits.onnx", toPath: "\(dir)/mlp_digits.onnx")
    let manifest = BundleManifest(
      name: "digits", version: 1, created: Date().addingTimeInterval(-60), expires: Date().addingTimeInterval(3600),
      modelFile: "mlp_digits.onnx",
      inputs: [
        .init(
          name: "input", datatype: .fp32, shape: [-1, 64],
          featureRange: .init(min: Array(repeating: 0, count: 64), max: Array(repeating: 1, count: 64)))
      ],
      outputs: [
        .init(name: "label", datatype: .int64, shape: [-1]),
        .init(name: "probabilities", datatype: .fp32, shape: [-1, 10]),
      ],
      maxBatch: 64)
    try Data(try manifest.encodedJSON()).write(to: URL(fileURLWithPath: "\(dir)/manifest.json"))
    let keyPath = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    if signer == "palisade" {
      _ = try await BundleSigner.sign(directory: dir, key: .p256(factory.key))
    } else {
      let privatePath = try pki.write("publisher.key", factory.key.pemRepresentation, mode: 0o600)
      let tool = URL(fileURLWithPath: InteropTests.python).deletingLastPathComponent().appendingPathComponent(
        "model_signing"
      ).path
      let r = try await ProcessTests.run(
        tool, ["sign", "key", dir, "--private_key", privatePath, "--signature", "\(dir)/model.sig"],
        timeout: .seconds(120))
      #expect(r.status == 0, "\(r.stderr)")
    }
    let server = try await TestServer.start(pki: pki, models: []) {
      $0.models.directories = [pki.path("models")]
      $0.models.stateFile = pki.path("state.json")
      $0.models.trust = [.init(models: "digits", publicKeys: [keyPath])]
    }
    for _ in 0..<200 where !server.runtime.repository.isReady(name: "digits", version: "") {
      try await Task.sleep(for: .milliseconds(50))
    }
    #expect(server.runtime.repository.isReady(name: "digits", version: "1"), "\(server.runtime.repository.index())")
    let input = try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/mlp_digits.b32.input.bin"))
    let labels = try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/mlp_digits.b32.label.bin"))
    let probabilities = try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/mlp_digits.b32.probabilities.bin"))
    let client = try goodClient(server)
    let response = try await withClient(server, client) { c in
      try await c.modelInfer(
        .with {
          $0.modelName = "digits"
          $0.inputs = [
            .with {
              $0.name = "input"
              $0.datatype = "FP32"
              $0.shape = [32, 64]
            }
          ]
          $0.rawInputContents = [input]
        })
    }
    #expect(response.outputs.map(\.name) == ["label", "probabilities"])
    #expect(response.rawOutputContents[0] == labels)
    let ours = response.rawOutputContents[1].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    let reference = probabilities.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    #expect(ours.count == reference.count)
    for (a, b) in zip(ours, reference) {
      #expect(abs(a - b) <= 1e-5 + 1e-4 * abs(b))
    }
    // The manifest's contract is enforced before compute: range, finiteness, max_batch.
    func refused(_ values: [Float], rows: Int64) async -> String? {
      await rpcError {
        _ = try await withClient(server, client) { c in
          try await c.modelInfer(
            .with {
              $0.modelName = "digits"
              $0.inputs = [
                .with {
                  $0.name = "input"
                  $0.datatype = "FP32"
                  $0.shape = [rows, 64]
                }
              ]
              $0.rawInputContents = [values.withUnsafeBytes { Data($0) }]
            })
        }
      }.map { "\($0.code): \($0.message)" }
    }
    var outside = Array(repeating: Float(0.5), count: 64)
    outside[7] = 2
    #expect(await refused(outside, rows: 1)?.contains("feature 7 is outside its declared range") == true)
    outside[7] = .nan
    #expect(await refused(outside, rows: 1)?.contains("NaN or infinite") == true)
    #expect(await refused(Array(repeating: 0.5, count: 65 * 64), rows: 65)?.contains("max_batch 64") == true)
    try await server.stop()
  }
}
