import Foundation
import PalisadeKernels

/// Operators that reinterpret their input's buffer (no copy).
extension OperatorRegistry {
  static let viewOperators: [OperatorDefinition] = [
    OperatorDefinition("Identity") { (n) throws(RuntimeError) in try n.lowerIdentity() },
    OperatorDefinition("Dropout", opaqueAttributes: true) { (n) throws(RuntimeError) in try n.lowerDropout() },
    OperatorDefinition("Reshape") { (n) throws(RuntimeError) in try n.lowerReshape() },
    OperatorDefinition("Flatten") { (n) throws(RuntimeError) in try n.lowerFlatten() },
    OperatorDefinition("Squeeze") { (n) throws(RuntimeError) in try n.lowerSqueeze() },
    OperatorDefinition("Unsqueeze") { (n) throws(RuntimeError) in try n.lowerUnsqueeze() },
  ]
}

extension NodeLowering {
  /// The input itself.
  func lowerIdentity() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    return .view(outputs: [x], input: 0, byteOffset: 0)
  }

  /// Inference-mode dropout: the input itself (no mask output).
  func lowerDropout() throws(RuntimeError) -> Lowering {
    try noExtraOutputs(1)
    return .view(outputs: [try input(0)], input: 0, byteOffset: 0)
  }

  /// A new shape from a constant shape input (0 copies a dimension, -1 infers one).
  func lowerReshape() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    guard let target = try constInts(1, "shape") else { throw .graph("missing shape") }
    let allowZero = try node.int("allowzero", 0) != 0
    var shape: [Int] = []
    var inferred = -1
    for (i, d) in target.enumerated() {
      if d == 0 && !allowZero {
        guard i < x.shape.count else { throw .shape("Reshape copies dimension \(i) of rank-\(x.shape.count) input") }
        shape.append(x.shape[i])
      } else if d == -1 {
        guard inferred < 0 else { throw .shape("Reshape with more than one -1") }
        inferred = i
        shape.append(1)
      } else {
        guard d >= 0 else { throw .shape("Reshape to negative dimension \(d)") }
        shape.append(d)
      }
    }
    if inferred >= 0 {
      let known = try checkedCount(shape, limit: Int.max, what: "Reshape")
      guard known > 0, x.count % known == 0 else { throw .shape("cannot reshape \(x.shape) to \(target)") }
      shape[inferred] = x.count / known
    }
    let out = try ctx.value(x.type, shape)
    guard out.count == x.count else { throw .shape("cannot reshape \(x.shape) (\(x.count) elements) to \(target)") }
    return .view(outputs: [out], input: 0, byteOffset: 0)
  }

  /// The input as 2-D, split at `axis`.
  func lowerFlatten() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    let axis = try normAxis(try node.int("axis", 1), x.shape.count + 1)
    let out = try ctx.value(x.type, [product(x.shape[..<axis]), product(x.shape[axis...])])
    return .view(outputs: [out], input: 0, byteOffset: 0)
  }

  /// Size-1 dimensions removed (attribute axes before opset 13, input after).
  func lowerSqueeze() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    let axes = opset >= 13 ? try constInts(1, "axes") : try node.ints("axes")
    var keep = [Bool](repeating: true, count: x.shape.count)
    if let axes {
      for a in axes {
        let n = try normAxis(a, x.shape.count)
        guard x.shape[n] == 1 else { throw .shape("Squeeze of dimension \(n) of size \(x.shape[n])") }
        keep[n] = false
      }
    } else {
      for (i, d) in x.shape.enumerated() where d == 1 { keep[i] = false }
    }
    let shape = x.shape.enumerated().filter { keep[$0.offset] }.map(\.element)
    return .view(outputs: [try ctx.value(x.type, shape)], input: 0, byteOffset: 0)
  }

  /// Size-1 dimensions inserted (attribute axes before opset 13, input after).
  func lowerUnsqueeze() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    guard let axes = opset >= 13 ? try constInts(1, "axes") : try node.ints("axes") else {
      throw .malformed("Unsqueeze without axes")
    }
    let rank = x.shape.count + axes.count
    var ones = Set<Int>()
    for a in axes {
      let n = try normAxis(a, rank)
      guard ones.insert(n).inserted else { throw .shape("repeated Unsqueeze axis") }
    }
    var shape: [Int] = []
    var j = 0
    for i in 0..<rank {
      if ones.contains(i) {
        shape.append(1)
      } else {
        shape.append(x.shape[j])
        j += 1
      }
    }
    return .view(outputs: [try ctx.value(x.type, shape)], input: 0, byteOffset: 0)
  }
}
