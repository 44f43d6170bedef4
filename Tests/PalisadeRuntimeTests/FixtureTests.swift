import Foundation
import PalisadeCore
import PalisadeKernels
import Testing
@testable import PalisadeRuntime

@Suite("Reference models vs onnxruntime")
struct FixtureTests {
  static let modelNames = [
    "mlp_digits.onnx", "mlp_torch.onnx", "mlp_torch_ext.onnx", "cnn_torch.onnx", "encoder_torch.onnx", "glue_ops.onnx",
  ]

  @Test("outputs match onnxruntime within 1e-4 rel / 1e-5 abs", arguments: modelNames)
  func matchesOnnxruntime(_ name: String) throws {
    let manifest = try Fixtures.manifest()
    let entry = try #require(manifest.models.first { $0.model == name })
    let model = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent(name))
    for c in entry.cases {
      let inputs = try c.inputs.map(Fixtures.tensor)
      let expected = try c.outputs.map(Fixtures.tensor)
      for pool in [nil, WorkerPool.shared] {
        let outputs = try model.predict(inputs, pool: pool)
        #expect(outputs.map(\.name) == expected.map(\.name))
        for (ours, ref) in zip(outputs, expected) {
          let problem = Fixtures.compare(ours, ref)
          #expect(problem == nil, "\(name) batch \(c.batch): \(problem ?? "")")
        }
      }
    }
  }
}
