import Foundation
import PalisadeKernels

/// Operators that reduce along axes: softmax, reductions, arg-extremes.
extension OperatorRegistry {
  static let reductionOperators: [OperatorDefinition] = [
    OperatorDefinition("Softmax") { (n) throws(RuntimeError) in try n.lowerSoftmax() },
    OperatorDefinition("LogSoftmax") { (n) throws(RuntimeError) in try n.lowerSoftmax() },
    OperatorDefinition("ReduceMean") { (n) throws(RuntimeError) in try n.lowerReduce() },
    OperatorDefinition("ReduceSum") { (n) throws(RuntimeError) in try n.lowerReduce() },
    OperatorDefinition("ReduceMax") { (n) throws(RuntimeError) in try n.lowerReduce() },
    OperatorDefinition("ArgMax") { (n) throws(RuntimeError) in try n.lowerArgExtreme() },
    OperatorDefinition("ArgMin") { (n) throws(RuntimeError) in try n.lowerArgExtreme() },
  ]
}

extension NodeLowering {
  /// Softmax (or its logarithm) along `axis` (opset 13 semantics; the whole tail before).
  func lowerSoftmax() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    try requireFloat(x)
    let rank = x.shape.count
    let axis = try normAxis(try node.int("axis", opset >= 13 ? -1 : 1), rank)
    let outer = product(x.shape[..<axis])
    let (len, inner) =
      opset >= 13
      ? (x.shape[axis], product(x.shape[(axis + 1)...])) : (product(x.shape[axis...]), 1)
    let log = node.opType == "LogSoftmax"
    let n = x.count
    return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        let o = outs[0].f(base)
        if n == 0 { return }  // every dimension is at least 1 below (the kernel's precondition)
        softmax(ins[0].f(base), o, outer: outer, axisLength: len, inner: inner)
        if log { for i in 0..<n { o[i] = Foundation.log(o[i]) } }
      }
    }
  }

  /// Mean, sum or maximum over axes (attribute or input, by opset).
  func lowerReduce() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    try requireFloat(x)
    let rank = x.shape.count
    let axesFromInput = node.opType == "ReduceSum" ? opset >= 13 : opset >= 18
    var axes: [Int]? = nil
    if axesFromInput {
      if optionalInput(1) != nil {
        guard let c = constant(1), c.type == .int64 else {
          throw RuntimeError(.unsupported, "reduction axes must be a constant")
        }
        axes = c.int64Values.map { Int(clamping: $0) }
      }
    } else {
      axes = try node.ints("axes")
    }
    let keep = try node.int("keepdims", 1) != 0
    if axes?.isEmpty ?? true {
      axes = try node.int("noop_with_empty_axes", 0) != 0 ? [] : Array(0..<rank)
    }
    var reduced = [Bool](repeating: false, count: rank)
    for a in axes ?? [] { reduced[try normAxis(a, rank)] = true }
    var keptShape: [Int] = []
    var outShape: [Int] = []
    for d in 0..<rank {
      keptShape.append(reduced[d] ? 1 : x.shape[d])
      if !reduced[d] || keep { outShape.append(reduced[d] ? 1 : x.shape[d]) }
    }
    let out = try ctx.value(.float32, outShape)
    var r = 1
    for d in 0..<rank where reduced[d] { r *= x.shape[d] }
    let outStrides = broadcastStrides(keptShape, to: x.shape)
    let inShape = x.shape
    let kind = node.opType
    let total = out.count
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        let (s, o) = (ins[0].f(base), outs[0].f(base))
        let initial: Float = kind == "ReduceMax" ? -.infinity : 0
        for i in 0..<total { o[i] = initial }
        try? forEachBroadcast(inShape, [outStrides]) { n, off in
          if kind == "ReduceMax" { o[off[0]] = max(o[off[0]], s[n]) } else { o[off[0]] += s[n] }
        }
        if kind == "ReduceMean" && r > 0 {
          let inv = 1 / Float(r)
          for i in 0..<total { o[i] *= inv }
        }
      }
    }
  }

  /// Index of the largest / smallest element along `axis`.
  func lowerArgExtreme() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    try requireFloat(x)
    let rank = x.shape.count
    let axis = try normAxis(try node.int("axis", 0), rank)
    let keep = try node.int("keepdims", 1) != 0
    let lastIndex = try node.int("select_last_index", 0) != 0
    var shape = x.shape
    if keep { shape[axis] = 1 } else { shape.remove(at: axis) }
    let out = try ctx.value(.int64, shape)
    let outer = product(x.shape[..<axis])
    let len = x.shape[axis]
    let inner = product(x.shape[(axis + 1)...])
    let isMax = node.opType == "ArgMax"
    guard len > 0 else { throw .shape("\(node.opType) over an empty axis") }
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        let (s, o) = (ins[0].f(base), outs[0].i64(base))
        for a in 0..<outer {
          for c in 0..<inner {
            var best = s[a * len * inner + c]
            var bestIndex = 0
            for j in 1..<max(len, 1) {
              let v = s[(a * len + j) * inner + c]
              let better = isMax ? (lastIndex ? v >= best : v > best) : (lastIndex ? v <= best : v < best)
              if better {
                best = v
                bestIndex = j
              }
            }
            o[a * inner + c] = Int64(bestIndex)
          }
        }
      }
    }
  }
}
