import Foundation
import PalisadeKernels

/// 2-D convolution.
extension OperatorRegistry {
  static let convolutionOperators: [OperatorDefinition] = [
    OperatorDefinition("Conv", imageSeparable: true) { (n) throws(RuntimeError) in try n.lowerConv() }
  ]
}

extension NodeLowering {
  /// 2-D convolution (groups, strides, dilations, pads, auto_pad) with a fused activation and batch normalisation.
  func lowerConv() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    let w = try input(1)
    try requireFloat(x)
    try requireFloat(w)
    guard x.shape.count == 4, w.shape.count == 4 else {
      throw RuntimeError(.unsupported, "Conv on rank \(x.shape.count) (2-D convolution only)")
    }
    let group = try node.int("group", 1)
    let strides = try node.ints("strides") ?? [1, 1]
    let dilations = try node.ints("dilations") ?? [1, 1]
    var pads = try node.ints("pads") ?? [0, 0, 0, 0]
    if let ks = try node.ints("kernel_shape"), ks != Array(w.shape[2...]) {
      throw .shape("Conv kernel_shape \(ks) vs weights \(w.shape)")
    }
    guard strides.count == 2, dilations.count == 2, pads.count == 4 else { throw .shape("Conv attribute lengths") }
    pads = try autoPads(
      node, input: Array(x.shape[2...]), kernel: Array(w.shape[2...]), strides: strides,
      dilations: dilations, pads: pads)
    // `group` comes from the file: checked before it is multiplied.
    let (groupedChannels, groupOverflow) = w.shape[1].multipliedReportingOverflow(by: group)
    guard group >= 1, !groupOverflow, groupedChannels == x.shape[1] else {
      throw .shape("Conv weights \(w.shape) vs input \(x.shape), group \(group)")
    }
    let hasBias = optionalInput(2) != nil
    if let b = optionalInput(2), b.count != w.shape[0] { throw .shape("Conv bias has \(b.count) elements") }
    let params: Conv2DParams
    do {
      params = try Conv2DParams(
        batch: x.shape[0], inChannels: x.shape[1], inHeight: x.shape[2], inWidth: x.shape[3],
        outChannels: w.shape[0], kernelHeight: w.shape[2], kernelWidth: w.shape[3], strideH: strides[0],
        strideW: strides[1], padTop: pads[0], padLeft: pads[1], padBottom: pads[2], padRight: pads[3],
        dilationH: dilations[0], dilationW: dilations[1], groups: group
      ).validated()
    } catch { throw kernelError(error) }
    let out = try ctx.value(.float32, [x.shape[0], w.shape[0], params.outHeight, params.outWidth])
    let act = try fusedActivation()
    // A fused BatchNormalization after the activation (Fusion): y = act(conv) * mul[c] + add[c].
    var post: ChannelAffine? = nil
    if let m = node.attributes["_post_mul"], let a = node.attributes["_post_add"] {
      guard case .floats(let mul) = m, case .floats(let add) = a, mul.count == w.shape[0],
        let affine = ChannelAffine(multipliers: mul, addends: add)
      else {
        throw .malformed("\(node.label): fused batch normalisation does not match the output channels")
      }
      post = affine
    }
    // Kernel choice, transposed constant weights and workspace size are settled here, once per plan.
    let conv: PreparedConv2D
    do {
      if let wc = constant(1) {
        conv = try PreparedConv2D(params, activation: act, constantWeight: wc.floatPointer, post: post)
        withExtendedLifetime(wc) {}
      } else {
        conv = try PreparedConv2D(params, activation: act, post: post)
      }
    } catch { throw kernelError(error) }
    let scratch = try checkedCount([conv.workspaceCount, 4], limit: ctx.limits.maxArenaBytes, what: "Conv workspace")
    return .compute(outputs: [out], scratchBytes: scratch) { ins, outs, ws in
      { base, pool in
        conv.run(
          input: ins[0].f(base), weight: ins[1].f(base), bias: hasBias ? UnsafePointer(ins[2].f(base)) : nil,
          output: outs[0].f(base), workspace: scratch > 0 ? ws.f(base) : nil, pool: pool)
      }
    }
  }
}

/// Resolves `auto_pad` into explicit pads (top, left, bottom, right).
func autoPads(
  _ node: GraphNode, input: [Int], kernel: [Int], strides: [Int], dilations: [Int], pads: [Int]
) throws(RuntimeError) -> [Int] {
  switch try node.string("auto_pad", "NOTSET") {
  case "NOTSET": return pads
  case "VALID": return [0, 0, 0, 0]
  case let mode where mode == "SAME_UPPER" || mode == "SAME_LOWER":
    var out = [0, 0, 0, 0]
    for d in 0..<2 {
      guard strides[d] >= 1, dilations[d] >= 1, kernel[d] >= 1, input[d] >= 0 else {
        throw .shape("invalid kernel geometry")
      }
      // Strides, dilations and kernel sizes come from the file (up to 2^48 each): every product is checked.
      let o = input[d] / strides[d] + (input[d] % strides[d] != 0 ? 1 : 0)
      let (covered, o1) = max(0, o - 1).multipliedReportingOverflow(by: strides[d])
      let (extent, o2) = (kernel[d] - 1).multipliedReportingOverflow(by: dilations[d])
      let (sum, o3) = covered.addingReportingOverflow(extent)
      guard !o1, !o2, !o3, sum < Int.max - 1 else { throw .limit("\(node.label): padding geometry overflows") }
      let total = max(0, sum + 1 - input[d])
      let small = total / 2
      out[d] = mode == "SAME_UPPER" ? small : total - small
      out[d + 2] = total - out[d]
    }
    return out
  default:
    throw RuntimeError(.unsupported, "auto_pad mode")
  }
}
