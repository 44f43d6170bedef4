import Foundation
import PalisadeKernels

/// Comparisons and boolean logic (BOOL outputs).
extension OperatorRegistry {
  static let logicOperators: [OperatorDefinition] = [
    OperatorDefinition("Equal") { (n) throws(RuntimeError) in try n.lowerComparison() },
    OperatorDefinition("Less") { (n) throws(RuntimeError) in try n.lowerComparison() },
    OperatorDefinition("Greater") { (n) throws(RuntimeError) in try n.lowerComparison() },
    OperatorDefinition("Not") { (n) throws(RuntimeError) in try n.lowerNot() },
  ]
}

extension NodeLowering {
  /// Equal / Less / Greater with broadcasting, on FLOAT, INT64 or BOOL.
  func lowerComparison() throws(RuntimeError) -> Lowering {
    let a = try input(0)
    let b = try input(1)
    guard a.type == b.type else { throw .shape("\(node.opType) inputs differ in type") }
    let shape = try broadcastShapes([a.shape, b.shape])
    let out = try ctx.value(.bool, shape)
    let strides = [a.shape, b.shape].map { broadcastStrides($0, to: shape) }
    let op = node.opType
    let type = a.type
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        let ap = ins[0].raw(base)
        let bp = ins[1].raw(base)
        let o = outs[0].u8(base)
        try? forEachBroadcast(shape, strides) { n, off in
          let (x, y): (Double, Double)
          switch type {
          case .float32:
            (x, y) = (
              Double(ap.load(fromByteOffset: off[0] * 4, as: Float.self)),
              Double(bp.load(fromByteOffset: off[1] * 4, as: Float.self))
            )
          case .int64:
            let (p, q) = (
              ap.load(fromByteOffset: off[0] * 8, as: Int64.self), bp.load(fromByteOffset: off[1] * 8, as: Int64.self)
            )
            o[n] = (op == "Equal" ? p == q : (op == "Less" ? p < q : p > q)) ? 1 : 0
            return
          case .bool:
            (x, y) = (
              Double(ap.load(fromByteOffset: off[0], as: UInt8.self)),
              Double(bp.load(fromByteOffset: off[1], as: UInt8.self))
            )
          }
          o[n] = (op == "Equal" ? x == y : (op == "Less" ? x < y : x > y)) ? 1 : 0
        }
      }
    }
  }

  /// Logical not of a BOOL tensor.
  func lowerNot() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    guard x.type == .bool else { throw .shape("Not needs BOOL") }
    let n = x.count
    return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        let s = ins[0].u8(base)
        let o = outs[0].u8(base)
        for i in 0..<n { o[i] = s[i] == 0 ? 1 : 0 }
      }
    }
  }
}
