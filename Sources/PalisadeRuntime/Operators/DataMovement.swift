import Foundation
import PalisadeKernels

/// Operators that move or convert elements without arithmetic.
extension OperatorRegistry {
  static let dataMovementOperators: [OperatorDefinition] = [
    OperatorDefinition("Transpose") { (n) throws(RuntimeError) in try n.lowerTranspose() },
    OperatorDefinition("Slice") { (n) throws(RuntimeError) in try n.lowerSlice() },
    OperatorDefinition("Gather") { (n) throws(RuntimeError) in try n.lowerGather() },
    OperatorDefinition("ArrayFeatureExtractor", domain: "ai.onnx.ml") { (n) throws(RuntimeError) in
      try n.lowerArrayFeatureExtractor()
    },
    OperatorDefinition("Concat") { (n) throws(RuntimeError) in try n.lowerConcat() },
    OperatorDefinition("Expand") { (n) throws(RuntimeError) in try n.lowerExpand() },
    OperatorDefinition("Cast", attributeProblem: castAttributeProblem) { (n) throws(RuntimeError) in try n.lowerCast()
    },
    OperatorDefinition("Where") { (n) throws(RuntimeError) in try n.lowerWhere() },
  ]
}

extension NodeLowering {
  /// Dimensions permuted (reversed by default).
  func lowerTranspose() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    let rank = x.shape.count
    let perm = try node.ints("perm") ?? Array((0..<rank).reversed())
    guard perm.count == rank, Set(perm) == Set(0..<rank) else { throw .shape("invalid perm \(perm) for rank \(rank)") }
    let shape = perm.map { x.shape[$0] }
    let out = try ctx.value(x.type, shape)
    let inStrides = contiguousStrides(x.shape)
    let (s, t) = simplifyStrided(shape: shape, strides: perm.map { inStrides[$0] })
    let es = x.type.size
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in stridedCopy(ins[0].raw(base), outs[0].raw(base), shape: s, strides: t, base: 0, elementSize: es) }
    }
  }

  /// Strided slices from constant starts/ends/axes/steps (a view when contiguous).
  func lowerSlice() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    let rank = x.shape.count
    guard let starts = try constInts(1, "starts"), let ends = try constInts(2, "ends") else {
      throw .graph("Slice without starts/ends")
    }
    let axes = try constInts(3, "axes") ?? Array(0..<starts.count)
    let steps = try constInts(4, "steps") ?? [Int](repeating: 1, count: starts.count)
    guard starts.count == ends.count, axes.count == starts.count, steps.count == starts.count else {
      throw .shape("Slice parameters differ in length")
    }
    var begin = [Int](repeating: 0, count: rank)
    var step = [Int](repeating: 1, count: rank)
    var shape = x.shape
    var seen = Set<Int>()
    for i in 0..<starts.count {
      let a = try normAxis(axes[i], rank)
      guard seen.insert(a).inserted else { throw .shape("repeated Slice axis") }
      let dim = x.shape[a]
      let st = steps[i]
      guard st != 0 else { throw .shape("Slice step 0") }
      var s = starts[i] < 0 ? starts[i] + dim : starts[i]
      var e = ends[i] < 0 ? ends[i] + dim : ends[i]
      if st > 0 {
        s = min(max(s, 0), dim)
        e = min(max(e, 0), dim)
        shape[a] = e > s ? (e - s + st - 1) / st : 0
      } else {
        s = min(max(s, 0), dim - 1)
        e = min(max(e, -1), dim - 1)
        shape[a] = s > e ? (s - e - st - 1) / (-st) : 0
      }
      begin[a] = s
      // A step longer than the axis selects at most one element; clamp it so strides cannot overflow.
      step[a] = st > 0 ? min(st, max(dim, 1)) : max(st, -max(dim, 1))
    }
    let out = try ctx.value(x.type, shape)
    let inStrides = contiguousStrides(x.shape)
    var baseOffset = 0
    for d in 0..<rank where shape[d] > 0 { baseOffset += begin[d] * inStrides[d] }
    let (s, t) = simplifyStrided(shape: shape, strides: (0..<rank).map { inStrides[$0] * step[$0] })
    let es = x.type.size
    if s.count <= 1 && (t.first ?? 1) == 1 {
      return .view(outputs: [out], input: 0, byteOffset: baseOffset * es)
    }
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        stridedCopy(ins[0].raw(base), outs[0].raw(base), shape: s, strides: t, base: baseOffset, elementSize: es)
      }
    }
  }

  /// Slices along `axis` at INT64 indices (checked at plan time when constant, else per call).
  func lowerGather() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    let idx = try input(1)
    guard idx.type == .int64 else { throw .shape("Gather indices must be INT64") }
    let rank = x.shape.count
    guard rank >= 1 else { throw .shape("Gather on a scalar") }
    let axis = try normAxis(try node.int("axis", 0), rank)
    let dim = x.shape[axis]
    let shape = Array(x.shape[..<axis]) + idx.shape + Array(x.shape[(axis + 1)...])
    let out = try ctx.value(x.type, shape)
    let outer = product(x.shape[..<axis])
    let inner = product(x.shape[(axis + 1)...])
    let es = x.type.size
    let n = idx.count
    if let c = constant(1) {
      var indices: [Int] = []
      for v in c.int64Values {
        // Indices come from the file: range-checked as Int64 before they become Int.
        let wide = v < 0 ? v + Int64(dim) : v
        guard wide >= 0, wide < Int64(dim), let i = Int(exactly: wide) else {
          throw .shape("Gather index \(v) out of range for dimension \(dim)")
        }
        indices.append(i)
      }
      if n == 1 && outer == 1 {
        return .view(outputs: [out], input: 0, byteOffset: indices[0] * inner * es)
      }
      return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
        { base, _ in
          let src = ins[0].raw(base)
          var dst = outs[0].raw(base)
          let block = inner * es
          for o in 0..<outer {
            for i in indices {
              dst.copyMemory(from: src + (o * dim + i) * block, byteCount: block)
              dst += block
            }
          }
        }
      }
    }
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { (base, _) throws(RuntimeError) in
        let src = ins[0].raw(base)
        let ip = ins[1].i64(base)
        var dst = outs[0].raw(base)
        let block = inner * es
        for o in 0..<outer {
          for j in 0..<n {
            let v = ip[j]
            let i = v < 0 ? v + Int64(dim) : v
            guard i >= 0, i < Int64(dim) else { throw RuntimeError(.invalidInput, "Gather index out of range") }
            dst.copyMemory(from: src + (o * dim + Int(truncatingIfNeeded: i)) * block, byteCount: block)
            dst += block
          }
        }
      }
    }
  }

  /// ai.onnx.ml: columns of the last axis at INT64 indices.
  func lowerArrayFeatureExtractor() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    let idx = try input(1)
    guard idx.type == .int64 else { throw .shape("ArrayFeatureExtractor indices must be INT64") }
    guard let last = x.shape.last else { throw .shape("ArrayFeatureExtractor on a scalar") }
    let k = idx.count
    let shape = x.shape.count == 1 ? [1, k] : Array(x.shape.dropLast()) + [k]
    let out = try ctx.value(x.type, shape)
    let outer = x.count / max(last, 1)
    let es = x.type.size
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { (base, _) throws(RuntimeError) in
        let src = ins[0].raw(base)
        let ip = ins[1].i64(base)
        let dst = outs[0].raw(base)
        for o in 0..<outer {
          for j in 0..<k {
            let i = ip[j]
            guard i >= 0, i < Int64(last) else {
              throw RuntimeError(.invalidInput, "ArrayFeatureExtractor index out of range")
            }
            (dst + (o * k + j) * es).copyMemory(from: src + (o * last + Int(truncatingIfNeeded: i)) * es, byteCount: es)
          }
        }
      }
    }
  }

  /// Inputs joined along `axis`.
  func lowerConcat() throws(RuntimeError) -> Lowering {
    let first = try input(0)
    let rank = first.shape.count
    let axis = try normAxis(try node.int("axis", 0), rank)
    var shape = first.shape
    shape[axis] = 0
    var sizes: [Int] = []
    for i in 0..<ins.count {
      let t = try input(i)
      guard t.type == first.type, t.shape.count == rank else { throw .shape("Concat inputs differ in type or rank") }
      for d in 0..<rank where d != axis && t.shape[d] != first.shape[d] {
        throw .shape("Concat inputs \(first.shape) and \(t.shape) differ outside axis \(axis)")
      }
      shape[axis] += t.shape[axis]
      sizes.append(t.shape[axis])
    }
    let out = try ctx.value(first.type, shape)
    let outer = product(shape[..<axis])
    let inner = product(shape[(axis + 1)...])
    let es = first.type.size
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        var dst = outs[0].raw(base)
        for o in 0..<outer {
          for (i, size) in sizes.enumerated() {
            let block = size * inner * es
            dst.copyMemory(from: ins[i].raw(base) + o * block, byteCount: block)
            dst += block
          }
        }
      }
    }
  }

  /// The input broadcast to a constant shape.
  func lowerExpand() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    guard let target = try constInts(1, "shape") else { throw .graph("missing shape") }
    let shape = try broadcastShapes([x.shape, target])
    let out = try ctx.value(x.type, shape)
    let (s, t) = simplifyStrided(shape: shape, strides: broadcastStrides(x.shape, to: shape))
    let es = x.type.size
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in stridedCopy(ins[0].raw(base), outs[0].raw(base), shape: s, strides: t, base: 0, elementSize: es) }
    }
  }

  /// Conversion between FLOAT, INT64 and BOOL.
  func lowerCast() throws(RuntimeError) -> Lowering {
    let x = try input(0)
    guard let to = ElementType(onnxCode: Int32(clamping: try node.int("to", 1))) else {
      throw RuntimeError(.unsupported, "Cast target type")
    }
    let out = try ctx.value(to, x.shape)
    let n = x.count
    if to == x.type { return .view(outputs: [out], input: 0, byteOffset: 0) }
    let from = x.type
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        let src = ins[0].raw(base)
        let dst = outs[0].raw(base)
        for i in 0..<n {
          switch (from, to) {
          case (.float32, .int64):
            let v = src.load(fromByteOffset: i * 4, as: Float.self)
            let c: Int64 = v.isNaN ? Int64.min : (v >= 9.2e18 ? Int64.max : (v <= -9.2e18 ? Int64.min : Int64(v)))
            dst.storeBytes(of: c, toByteOffset: i * 8, as: Int64.self)
          case (.float32, .bool):
            dst.storeBytes(
              of: src.load(fromByteOffset: i * 4, as: Float.self) != 0 ? 1 : 0, toByteOffset: i, as: UInt8.self)
          case (.int64, .float32):
            dst.storeBytes(
              of: Float(src.load(fromByteOffset: i * 8, as: Int64.self)), toByteOffset: i * 4, as: Float.self)
          case (.int64, .bool):
            dst.storeBytes(
              of: src.load(fromByteOffset: i * 8, as: Int64.self) != 0 ? 1 : 0, toByteOffset: i, as: UInt8.self)
          case (.bool, .float32):
            dst.storeBytes(of: Float(src.load(fromByteOffset: i, as: UInt8.self)), toByteOffset: i * 4, as: Float.self)
          case (.bool, .int64):
            dst.storeBytes(of: Int64(src.load(fromByteOffset: i, as: UInt8.self)), toByteOffset: i * 8, as: Int64.self)
          default: break
          }
        }
      }
    }
  }

  /// x where the BOOL condition holds, else y (broadcast).
  func lowerWhere() throws(RuntimeError) -> Lowering {
    let c = try input(0)
    let x = try input(1)
    let y = try input(2)
    guard c.type == .bool, x.type == y.type else { throw .shape("Where needs a BOOL condition and equal types") }
    let shape = try broadcastShapes([c.shape, x.shape, y.shape])
    let out = try ctx.value(x.type, shape)
    let strides = [c.shape, x.shape, y.shape].map { broadcastStrides($0, to: shape) }
    let es = x.type.size
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        let cp = ins[0].u8(base)
        let xp = ins[1].raw(base)
        let yp = ins[2].raw(base)
        let o = outs[0].raw(base)
        try? forEachBroadcast(shape, strides) { n, off in
          let src = cp[off[0]] != 0 ? xp + off[1] * es : yp + off[2] * es
          (o + n * es).copyMemory(from: src, byteCount: es)
        }
      }
    }
  }
}

/// Cast targets other than FLOAT, INT64 and BOOL.
@Sendable func castAttributeProblem(_ attributes: [String: Attribute]) -> String? {
  if case .int(let to)? = attributes["to"], ElementType(onnxCode: Int32(clamping: to)) == nil {
    return "Cast to datatype \(onnxTypeName(Int32(clamping: to)))"
  }
  return nil
}
