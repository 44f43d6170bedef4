import Foundation
import PalisadeKernels

/// Normalisation layers.
extension OperatorRegistry {
  static let normalizationOperators: [OperatorDefinition] = [
    OperatorDefinition("LayerNormalization") { (n) throws(RuntimeError) in try n.lowerLayerNormalization() },
    OperatorDefinition("BatchNormalization", imageSeparable: true) { (n) throws(RuntimeError) in
      try n.lowerBatchNormalization()
    },
  ]
}

extension NodeLowering {
  /// Normalised over the axes from `axis` on, scaled and shifted.
  func lowerLayerNormalization() throws(RuntimeError) -> Lowering {
    try noExtraOutputs(1)
    let x = try input(0)
    let scale = try input(1)
    try requireFloat(x)
    let axis = try normAxis(try node.int("axis", -1), x.shape.count)
    let rows = product(x.shape[..<axis])
    let cols = product(x.shape[axis...])
    guard scale.count == cols else {
      throw .shape("LayerNormalization scale has \(scale.count) elements, need \(cols)")
    }
    let hasBias = optionalInput(2) != nil
    if let b = optionalInput(2), b.count != cols { throw .shape("LayerNormalization bias has \(b.count) elements") }
    let eps = try node.float("epsilon", 1e-5)
    return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        layerNorm(
          ins[0].f(base), outs[0].f(base), rows: rows, cols: cols, gamma: UnsafePointer(ins[1].f(base)),
          beta: hasBias ? UnsafePointer(ins[2].f(base)) : nil, epsilon: eps)
      }
    }
  }

  /// Inference-mode batch normalisation as a per-channel multiply-add.
  func lowerBatchNormalization() throws(RuntimeError) -> Lowering {
    try noExtraOutputs(1)
    guard try node.int("training_mode", 0) == 0 else { throw RuntimeError(.unsupported, "training mode") }
    let x = try input(0)
    try requireFloat(x)
    guard x.shape.count >= 2 else { throw .shape("BatchNormalization needs rank >= 2") }
    let c = x.shape[1]
    var params: [HostTensor] = []
    for i in 1...4 {
      guard let t = constant(i), t.type == .float32, t.count == c else {
        throw RuntimeError(.unsupported, "BatchNormalization parameters must be constant [\(c)] tensors")
      }
      params.append(t)
    }
    let eps = try node.float("epsilon", 1e-5)
    let (sc, bi, mean, variance) = (
      params[0].floatValues, params[1].floatValues, params[2].floatValues, params[3].floatValues
    )
    var mul = [Float](repeating: 0, count: c)
    var add = [Float](repeating: 0, count: c)
    for i in 0..<c {
      mul[i] = sc[i] / (variance[i] + eps).squareRoot()
      add[i] = bi[i] - mean[i] * mul[i]
    }
    let batch = x.shape[0]
    let spatial = product(x.shape[2...])
    guard let affine = ChannelAffine(multipliers: mul, addends: add) else { throw .shape("BatchNormalization factors") }
    return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
      { base, pool in
        affine.apply(ins[0].f(base), outs[0].f(base), batch: batch, spatial: spatial, pool: pool)
      }
    }
  }
}
