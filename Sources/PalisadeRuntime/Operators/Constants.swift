import Foundation
import PalisadeKernels

/// Values known at plan time: constants and shapes (folded, never run).
extension OperatorRegistry {
  static let constantOperators: [OperatorDefinition] = [
    OperatorDefinition("Constant", attributeProblem: constantAttributeProblem) { (n) throws(RuntimeError) in
      try n.lowerConstant()
    },
    OperatorDefinition("Shape") { (n) throws(RuntimeError) in try n.lowerShape() },
    OperatorDefinition("ConstantOfShape", attributeProblem: constantOfShapeAttributeProblem) {
      (n) throws(RuntimeError) in try n.lowerConstantOfShape()
    },
    OperatorDefinition("Range") { (n) throws(RuntimeError) in try n.lowerRange() },
  ]
}

extension NodeLowering {
  /// The value attribute as a constant.
  func lowerConstant() throws(RuntimeError) -> Lowering {
    for (key, value) in node.attributes {
      switch (key, value) {
      case ("value", .tensor(let t)): return .constant([t])
      case ("value_float", .float(let f)): return .constant([.floats([f], shape: [])])
      case ("value_floats", .floats(let f)): return .constant([.floats(f, shape: [f.count])])
      case ("value_int", .int(let i)): return .constant([.int64s([i], shape: [])])
      case ("value_ints", .ints(let i)): return .constant([.int64s(i, shape: [i.count])])
      default: continue
      }
    }
    throw .malformed("Constant without a supported value attribute")
  }

  /// The input's dimensions (optionally a start..<end range of them).
  func lowerShape() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    let r = x.shape.count
    var start = try node.int("start", 0)
    var end = try node.int("end", r)
    start = start < 0 ? max(0, start + r) : min(start, r)
    end = end < 0 ? max(0, end + r) : min(end, r)
    let dims = start < end ? Array(x.shape[start..<end]) : []
    return .constant([.int64s(dims.map { Int64($0) }, shape: [dims.count])])
  }

  /// A tensor of a constant shape filled with one value.
  func lowerConstantOfShape() throws(RuntimeError) -> Lowering {
    guard let shape = try constInts(0, "shape") else { throw .graph("missing shape") }
    var value = HostTensor.floats([0], shape: [1])
    if case .tensor(let t)? = node.attributes["value"] { value = t }
    let out = try ctx.value(value.type, shape)
    let t = HostTensor(type: value.type, shape: shape)
    let es = value.type.size
    for i in 0..<out.count { (t.storage.raw + i * es).copyMemory(from: value.storage.raw, byteCount: es) }
    return .constant([t])
  }

  /// start, start + delta, ... below limit, from constant scalars.
  func lowerRange() throws(RuntimeError) -> Lowering {
    let (a, b, c) = (try input(0), try input(1), try input(2))
    guard let s = constant(0), let l = constant(1), let d = constant(2), s.count == 1, l.count == 1, d.count == 1 else {
      throw RuntimeError(.unsupported, "Range with non-constant inputs")
    }
    guard a.type == b.type, b.type == c.type else { throw .shape("Range inputs differ in type") }
    if a.type == .int64 {
      let (s0, l0, d0) = (s.int64Pointer[0], l.int64Pointer[0], d.int64Pointer[0])
      guard d0 != 0 else { throw .shape("Range with delta 0") }
      let steps = ((Double(l0) - Double(s0)) / Double(d0)).rounded(.up)
      guard steps < Double(ctx.limits.maxTensorElements) else { throw .limit("Range too long") }
      let n = steps > 0 ? Int(exactly: steps) ?? 0 : 0  // integral and bounded above; NaN fails both guards
      _ = try ctx.value(.int64, [n])
      return .constant([.int64s((0..<n).map { s0 &+ Int64($0) &* d0 }, shape: [n])])
    }
    let (s0, l0, d0) = (s.floatPointer[0], l.floatPointer[0], d.floatPointer[0])
    guard d0 != 0, s0.isFinite, l0.isFinite, d0.isFinite else { throw .shape("invalid Range") }
    let nd = ((l0 - s0) / d0).rounded(.up)
    guard nd < Float(ctx.limits.maxTensorElements) else { throw .limit("Range too long") }
    let n = nd > 0 ? Int(exactly: nd) ?? 0 : 0
    return .constant([.floats((0..<n).map { s0 + Float($0) * d0 }, shape: [n])])
  }
}

/// Constant values the runtime does not decode.
@Sendable func constantAttributeProblem(_ attributes: [String: Attribute]) -> String? {
  for key in ["sparse_value", "value_string", "value_strings"] where attributes[key] != nil {
    return "Constant with \(key)"
  }
  return nil
}

@Sendable func constantOfShapeAttributeProblem(_ attributes: [String: Attribute]) -> String? {
  if case .tensor(let t)? = attributes["value"], t.count != 1 { return "ConstantOfShape value must have one element" }
  return nil
}
