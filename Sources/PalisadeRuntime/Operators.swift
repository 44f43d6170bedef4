import Foundation
import PalisadeKernels

/// Shape inference and kernel construction for one node, with its input types and constant inputs.
func lower(
  _ node: GraphNode, _ ins: [ValueType?], _ consts: [HostTensor?], _ ctx: OpContext
) throws(RuntimeError) -> Lowering {
  func input(_ i: Int) throws(RuntimeError) -> ValueType {
    guard i < ins.count, let t = ins[i] else { throw .graph("missing input \(i)") }
    return t
  }
  func optionalInput(_ i: Int) -> ValueType? { i < ins.count ? ins[i] : nil }
  func constInts(_ i: Int, _ what: String) throws(RuntimeError) -> [Int]? {
    guard i < ins.count, ins[i] != nil else { return nil }
    guard let c = consts[i] else {
      throw RuntimeError(.unsupported, "\(what) must be a constant (data-dependent shapes are not supported)")
    }
    guard c.type == .int64 else { throw .shape("\(what) must be INT64") }
    var out: [Int] = []
    for v in c.int64Values {
      // Slice uses INT64_MAX / INT64_MIN as "to the end"; clamp to a range that cannot overflow later.
      out.append(Int(max(min(v, Int64(1) << 62), -(Int64(1) << 62))))
    }
    return out
  }
  func requireFloat(_ t: ValueType, _ what: String = "input") throws(RuntimeError) {
    guard t.type == .float32 else { throw RuntimeError(.unsupported, "\(what) of type \(t.type) (FLOAT only)") }
  }
  func noExtraOutputs(_ n: Int) throws(RuntimeError) {
    for (i, o) in node.outputs.enumerated() where i >= n && o != nil {
      throw RuntimeError(.unsupported, "optional output \(i)")
    }
  }
  let opset = ctx.opset

  switch node.opType {
  // MARK: constants and shapes
  case "Constant":
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

  case "Shape":
    let x = try input(0)
    let r = x.shape.count
    var start = try node.int("start", 0)
    var end = try node.int("end", r)
    start = start < 0 ? max(0, start + r) : min(start, r)
    end = end < 0 ? max(0, end + r) : min(end, r)
    let dims = start < end ? Array(x.shape[start..<end]) : []
    return .constant([.int64s(dims.map { Int64($0) }, shape: [dims.count])])

  case "ConstantOfShape":
    guard let shape = try constInts(0, "shape") else { throw .graph("missing shape") }
    var value = HostTensor.floats([0], shape: [1])
    if case .tensor(let t)? = node.attributes["value"] { value = t }
    let out = try ctx.value(value.type, shape)
    let t = HostTensor(type: value.type, shape: shape)
    let es = value.type.size
    for i in 0..<out.count { (t.storage.raw + i * es).copyMemory(from: value.storage.raw, byteCount: es) }
    return .constant([t])

  case "Range":
    let (a, b, c) = (try input(0), try input(1), try input(2))
    guard let s = consts[0], let l = consts[1], let d = consts[2], s.count == 1, l.count == 1, d.count == 1 else {
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

  // MARK: views
  case "Identity":
    let x = try input(0)
    return .view(outputs: [x], input: 0, byteOffset: 0)

  case "Dropout":
    try noExtraOutputs(1)
    return .view(outputs: [try input(0)], input: 0, byteOffset: 0)

  case "Reshape":
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

  case "Flatten":
    let x = try input(0)
    let axis = try normAxis(try node.int("axis", 1), x.shape.count + 1)
    let out = try ctx.value(x.type, [product(x.shape[..<axis]), product(x.shape[axis...])])
    return .view(outputs: [out], input: 0, byteOffset: 0)

  case "Squeeze":
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

  case "Unsqueeze":
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

  // MARK: data movement
  case "Transpose":
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

  case "Slice":
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

  case "Gather":
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
    if let c = consts[1] {
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

  case "ArrayFeatureExtractor":
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

  case "Concat":
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

  case "Expand":
    let x = try input(0)
    guard let target = try constInts(1, "shape") else { throw .graph("missing shape") }
    let shape = try broadcastShapes([x.shape, target])
    let out = try ctx.value(x.type, shape)
    let (s, t) = simplifyStrided(shape: shape, strides: broadcastStrides(x.shape, to: shape))
    let es = x.type.size
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, _ in stridedCopy(ins[0].raw(base), outs[0].raw(base), shape: s, strides: t, base: 0, elementSize: es) }
    }

  case "Cast":
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
            dst.storeBytes(of: src.load(fromByteOffset: i * 4, as: Float.self) != 0 ? 1 : 0, toByteOffset: i, as: UInt8.self)
          case (.int64, .float32):
            dst.storeBytes(of: Float(src.load(fromByteOffset: i * 8, as: Int64.self)), toByteOffset: i * 4, as: Float.self)
          case (.int64, .bool):
            dst.storeBytes(of: src.load(fromByteOffset: i * 8, as: Int64.self) != 0 ? 1 : 0, toByteOffset: i, as: UInt8.self)
          case (.bool, .float32):
            dst.storeBytes(of: Float(src.load(fromByteOffset: i, as: UInt8.self)), toByteOffset: i * 4, as: Float.self)
          case (.bool, .int64):
            dst.storeBytes(of: Int64(src.load(fromByteOffset: i, as: UInt8.self)), toByteOffset: i * 8, as: Int64.self)
          default: break
          }
        }
      }
    }

  case "Where":
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

  case "Equal", "Less", "Greater":
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
          case .float32: (x, y) = (Double(ap.load(fromByteOffset: off[0] * 4, as: Float.self)), Double(bp.load(fromByteOffset: off[1] * 4, as: Float.self)))
          case .int64:
            let (p, q) = (ap.load(fromByteOffset: off[0] * 8, as: Int64.self), bp.load(fromByteOffset: off[1] * 8, as: Int64.self))
            o[n] = (op == "Equal" ? p == q : (op == "Less" ? p < q : p > q)) ? 1 : 0
            return
          case .bool: (x, y) = (Double(ap.load(fromByteOffset: off[0], as: UInt8.self)), Double(bp.load(fromByteOffset: off[1], as: UInt8.self)))
          }
          o[n] = (op == "Equal" ? x == y : (op == "Less" ? x < y : x > y)) ? 1 : 0
        }
      }
    }

  case "Not":
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

  default:
    return try lowerMath(node, ins, consts, ctx)
  }
}
