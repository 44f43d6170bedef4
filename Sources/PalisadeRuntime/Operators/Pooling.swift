import Foundation
import PalisadeKernels

/// 2-D and global pooling.
extension OperatorRegistry {
  static let poolingOperators: [OperatorDefinition] = [
    OperatorDefinition("MaxPool", imageSeparable: true) { (n) throws(RuntimeError) in try n.lowerPool() },
    OperatorDefinition("AveragePool", imageSeparable: true) { (n) throws(RuntimeError) in try n.lowerPool() },
    OperatorDefinition("GlobalAveragePool", imageSeparable: true) { (n) throws(RuntimeError) in try n.lowerGlobalPool()
    },
    OperatorDefinition("GlobalMaxPool", imageSeparable: true) { (n) throws(RuntimeError) in try n.lowerGlobalPool() },
  ]
}

extension NodeLowering {
  /// 2-D max / average pooling.
  func lowerPool() throws(RuntimeError) -> Lowering {
    try noExtraOutputs(1)
    let x = try input(0)
    try requireFloat(x)
    guard x.shape.count == 4 else {
      throw RuntimeError(.unsupported, "\(node.opType) on rank \(x.shape.count) (2-D only)")
    }
    guard let kernel = try node.ints("kernel_shape"), kernel.count == 2 else { throw .shape("pool kernel_shape") }
    let strides = try node.ints("strides") ?? [1, 1]
    let dilations = try node.ints("dilations") ?? [1, 1]
    var pads = try node.ints("pads") ?? [0, 0, 0, 0]
    guard strides.count == 2, dilations.count == 2, pads.count == 4 else { throw .shape("pool attribute lengths") }
    pads = try autoPads(
      node, input: Array(x.shape[2...]), kernel: kernel, strides: strides, dilations: dilations, pads: pads)
    let params: Pool2DParams
    do {
      params = try Pool2DParams(
        batch: x.shape[0], channels: x.shape[1], inHeight: x.shape[2], inWidth: x.shape[3], kernelHeight: kernel[0],
        kernelWidth: kernel[1], strideH: strides[0], strideW: strides[1], padTop: pads[0], padLeft: pads[1],
        padBottom: pads[2], padRight: pads[3], dilationH: dilations[0], dilationW: dilations[1],
        ceilMode: try node.int("ceil_mode", 0) != 0
      ).validated()
    } catch { throw kernelError(error) }
    let out = try ctx.value(.float32, [x.shape[0], x.shape[1], params.outHeight, params.outWidth])
    let isMax = node.opType == "MaxPool"
    let includePad = try node.int("count_include_pad", 0) != 0
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, pool in
        pool2d(
          params, input: ins[0].f(base), output: outs[0].f(base), max: isMax, countIncludePad: includePad, pool: pool)
      }
    }
  }

  /// Average / maximum over all spatial positions.
  func lowerGlobalPool() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    try requireFloat(x)
    guard x.shape.count >= 3 else { throw .shape("\(node.opType) needs rank >= 3") }
    let planes = x.shape[0] * x.shape[1]
    let spatial = product(x.shape[2...])
    let out = try ctx.value(.float32, [x.shape[0], x.shape[1]] + [Int](repeating: 1, count: x.shape.count - 2))
    let isMax = node.opType == "GlobalMaxPool"
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        if isMax {
          let (s, o) = (ins[0].f(base), outs[0].f(base))
          for p in 0..<planes {
            var m = -Float.infinity
            for j in 0..<spatial { m = max(m, s[p * spatial + j]) }
            o[p] = m
          }
        } else {
          globalAveragePool(ins[0].f(base), output: outs[0].f(base), planes: planes, spatial: spatial)
        }
      }
    }
  }
}
