import Foundation
import PalisadeRuntime
let dir = URL(fileURLWithPath: CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "Tests/Fixtures")
for name in ["mlp_digits.onnx", "mlp_torch.onnx", "cnn_torch.onnx", "encoder_torch.onnx"] {
  do {
    let m = try ONNXModel.load(contentsOf: dir.appendingPathComponent(name))
    let p = try m.plan(for: m.inputs.map { $0.dims.map { if case .fixed(let n) = $0 { n } else { 1 } } })
    print(name, "arena", p.arenaBytes, "steps", p.stepCount)
    for l in p.stepLabels { print("  ", l) }
    print("  specs", m.inputSpecs, m.outputSpecs)
  } catch { print(name, error) }
}
