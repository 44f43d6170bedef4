import Foundation
import PalisadeKernels

/// Element-wise arithmetic: binary with broadcasting, unary, Clip.
extension OperatorRegistry {
  static let elementwiseOperators: [OperatorDefinition] = [
    OperatorDefinition("Add") { (n) throws(RuntimeError) in try n.lowerBinary() },
    OperatorDefinition("Sub") { (n) throws(RuntimeError) in try n.lowerBinary() },
    OperatorDefinition("Mul") { (n) throws(RuntimeError) in try n.lowerBinary() },
    OperatorDefinition("Div") { (n) throws(RuntimeError) in try n.lowerBinary() },
    OperatorDefinition("Pow") { (n) throws(RuntimeError) in try n.lowerBinary() },
    OperatorDefinition("Mod") { (n) throws(RuntimeError) in try n.lowerBinary() },
    OperatorDefinition("Relu", imageSeparable: true) { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Sigmoid") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Tanh") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Erf") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Sqrt") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Exp") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Neg") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Abs") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Reciprocal") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Log") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Gelu") { (n) throws(RuntimeError) in try n.lowerUnary() },
    OperatorDefinition("Clip") { (n) throws(RuntimeError) in try n.lowerClip() },
  ]
}

extension NodeLowering {
  /// Binary arithmetic with numpy broadcasting (FLOAT on the kernels, INT64 here; Mod on both).
  func lowerBinary() throws(RuntimeError) -> Lowering {
    let a = try input(0)
    let b = try input(1)
    guard a.type == b.type, a.type != .bool else { throw .shape("\(node.opType) on \(a.type) and \(b.type)") }
    let shape = try broadcastShapes([a.shape, b.shape])
    let out = try ctx.value(a.type, shape)
    let (ash, bsh) = (a.shape, b.shape)
    let opType = node.opType
    let fmod = try node.int("fmod", 0) != 0
    if a.type == .float32 && opType != "Mod" {
      let op: BinaryOp =
        opType == "Add" ? .add : opType == "Sub" ? .sub : opType == "Mul" ? .mul : opType == "Div" ? .div : .pow
      return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
        { (base, _) throws(RuntimeError) in
          do {
            try binary(op, ins[0].f(base), shape: ash, ins[1].f(base), shape: bsh, out: outs[0].f(base), shape: shape)
          } catch { throw kernelError(error) }
        }
      }
    }
    let strides = [ash, bsh].map { broadcastStrides($0, to: shape) }
    let isFloat = a.type == .float32
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { (base, _) throws(RuntimeError) in
        if isFloat {  // float Mod
          let (x, y, o) = (ins[0].f(base), ins[1].f(base), outs[0].f(base))
          try forEachBroadcast(shape, strides) { n, off in
            let r = Foundation.fmod(x[off[0]], y[off[1]])
            o[n] = fmod || r == 0 || (r < 0) == (y[off[1]] < 0) ? r : r + y[off[1]]
          }
          return
        }
        let (x, y, o) = (ins[0].i64(base), ins[1].i64(base), outs[0].i64(base))
        try forEachBroadcast(shape, strides) { (n, off) throws(RuntimeError) in
          let (p, q) = (x[off[0]], y[off[1]])
          switch opType {
          case "Add": o[n] = p &+ q
          case "Sub": o[n] = p &- q
          case "Mul": o[n] = p &* q
          case "Div":
            guard q != 0, !(p == .min && q == -1) else { throw RuntimeError(.invalidInput, "integer division by zero") }
            o[n] = p / q
          case "Mod":
            guard q != 0, !(p == .min && q == -1) else { throw RuntimeError(.invalidInput, "integer modulo by zero") }
            let r = p % q
            o[n] = fmod || r == 0 || (r < 0) == (q < 0) ? r : r + q
          default:  // Pow on integers
            var acc: Int64 = 1
            if q >= 0 { for _ in 0..<min(q, 64) { acc = acc &* p } } else { acc = p == 1 ? 1 : 0 }
            o[n] = acc
          }
        }
      }
    }
  }

  /// Unary functions on the kernels' vector math (Neg and Abs on INT64 too).
  func lowerUnary() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    let n = x.count
    if x.type == .int64 && (node.opType == "Neg" || node.opType == "Abs") {
      let neg = node.opType == "Neg"
      return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
        { base, _ in
          let (s, o) = (ins[0].i64(base), outs[0].i64(base))
          for i in 0..<n { o[i] = neg ? 0 &- s[i] : (s[i] < 0 ? 0 &- s[i] : s[i]) }
        }
      }
    }
    try requireFloat(x)
    if node.opType == "Log" {
      return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
        { base, _ in
          let (s, o) = (ins[0].f(base), outs[0].f(base))
          for i in 0..<n { o[i] = Foundation.log(s[i]) }
        }
      }
    }
    if node.opType == "Gelu", try node.string("approximate", "none") == "tanh" {
      return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
        { base, _ in
          let (s, o) = (ins[0].f(base), outs[0].f(base))
          for i in 0..<n {
            let v = s[i]
            o[i] = 0.5 * v * (1 + Foundation.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))
          }
        }
      }
    }
    let op: UnaryOp
    switch node.opType {
    case "Relu": op = .relu
    case "Sigmoid": op = .sigmoid
    case "Tanh": op = .tanh
    case "Erf": op = .erf
    case "Sqrt": op = .sqrt
    case "Exp": op = .exp
    case "Neg": op = .neg
    case "Abs": op = .abs
    case "Gelu": op = .gelu
    default: op = .reciprocal
    }
    return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
      { base, _ in unary(op, ins[0].f(base), out: outs[0].f(base), count: n) }
    }
  }

  /// Clamped to constant scalar bounds.
  func lowerClip() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    try requireFloat(x)
    var lo = -Float.infinity
    var hi = Float.infinity
    for (i, slot) in [(1, 0), (2, 1)] {
      guard optionalInput(i) != nil else { continue }
      guard let c = constant(i), c.count == 1, c.type == .float32 else {
        throw RuntimeError(.unsupported, "Clip bounds must be scalar constants")
      }
      if slot == 0 { lo = c.floatPointer[0] } else { hi = c.floatPointer[0] }
    }
    let n = x.count
    return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        let (s, o) = (ins[0].f(base), outs[0].f(base))
        for i in 0..<n { o[i] = min(max(s[i], lo), hi) }
      }
    }
  }
}
