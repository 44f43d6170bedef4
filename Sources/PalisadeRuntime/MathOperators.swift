import Foundation
import PalisadeKernels

func kernelError(_ e: any Error) -> RuntimeError {
  switch e as? KernelError {
  case .overflow(let m)?: return .limit(m)
  case .shapeMismatch(let m)?: return .shape(m)
  case .invalidParameter(let m)?: return .shape(m)
  case nil: return .shape("\(e)")
  }
}

func activation(named name: String) -> Activation? {
  switch name {
  case "Relu": .relu
  case "Sigmoid": .sigmoid
  case "Tanh": .tanh
  case "Gelu": .gelu
  case "": .identity
  default: nil
  }
}

/// Arithmetic and neural-network operators.
func lowerMath(
  _ node: GraphNode, _ ins: [ValueType?], _ consts: [HostTensor?], _ ctx: OpContext
) throws(RuntimeError) -> Lowering {
  func input(_ i: Int) throws(RuntimeError) -> ValueType {
    guard i < ins.count, let t = ins[i] else { throw .graph("missing input \(i)") }
    return t
  }
  func optionalInput(_ i: Int) -> ValueType? { i < ins.count ? ins[i] : nil }
  func requireFloat(_ t: ValueType, _ what: String = "input") throws(RuntimeError) {
    guard t.type == .float32 else { throw RuntimeError(.unsupported, "\(what) of type \(t.type) (FLOAT only)") }
  }
  func noExtraOutputs(_ n: Int) throws(RuntimeError) {
    for (i, o) in node.outputs.enumerated() where i >= n && o != nil {
      throw RuntimeError(.unsupported, "optional output \(i)")
    }
  }
  func fusedActivation() throws(RuntimeError) -> Activation {
    let name = try node.string("_activation", "")
    guard let a = activation(named: name) else { throw .graph("unknown fused activation") }
    return a
  }
  let opset = ctx.opset

  switch node.opType {
  case "Add", "Sub", "Mul", "Div", "Pow", "Mod":
    let a = try input(0)
    let b = try input(1)
    guard a.type == b.type, a.type != .bool else { throw .shape("\(node.opType) on \(a.type) and \(b.type)") }
    let shape = try broadcastShapes([a.shape, b.shape])
    let out = try ctx.value(a.type, shape)
    let (ash, bsh) = (a.shape, b.shape)
    let opType = node.opType
    let fmod = try node.int("fmod", 0) != 0
    if a.type == .float32 && opType != "Mod" {
      let op: BinaryOp = opType == "Add" ? .add : opType == "Sub" ? .sub : opType == "Mul" ? .mul : opType == "Div" ? .div : .pow
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

  case "Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Neg", "Abs", "Reciprocal", "Log", "Gelu":
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

  case "Clip":
    let x = try input(0)
    try requireFloat(x)
    var lo = -Float.infinity
    var hi = Float.infinity
    for (i, slot) in [(1, 0), (2, 1)] {
      guard optionalInput(i) != nil else { continue }
      guard let c = consts[i], c.count == 1, c.type == .float32 else {
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

  case "Softmax", "LogSoftmax":
    let x = try input(0)
    try requireFloat(x)
    let rank = x.shape.count
    let axis = try normAxis(try node.int("axis", opset >= 13 ? -1 : 1), rank)
    let outer = product(x.shape[..<axis])
    let (len, inner) = opset >= 13
      ? (x.shape[axis], product(x.shape[(axis + 1)...])) : (product(x.shape[axis...]), 1)
    let log = node.opType == "LogSoftmax"
    let n = x.count
    return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        let o = outs[0].f(base)
        if inner <= 1 {
          softmaxRows(ins[0].f(base), o, rows: outer, n: len)
        } else {
          softmax(ins[0].f(base), o, outer: outer, axisLength: len, inner: inner)
        }
        if log { for i in 0..<n { o[i] = Foundation.log(o[i]) } }
      }
    }

  case "ReduceMean", "ReduceSum", "ReduceMax":
    let x = try input(0)
    try requireFloat(x)
    let rank = x.shape.count
    let axesFromInput = node.opType == "ReduceSum" ? opset >= 13 : opset >= 18
    var axes: [Int]? = nil
    if axesFromInput {
      if optionalInput(1) != nil {
        guard let c = consts[1], c.type == .int64 else {
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

  case "ArgMax", "ArgMin":
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

  case "MatMul":
    let a = try input(0)
    let b = try input(1)
    try requireFloat(a)
    try requireFloat(b)
    guard a.shape.count >= 1, b.shape.count >= 1 else { throw .shape("MatMul of a scalar") }
    let aShape = a.shape.count == 1 ? [1, a.shape[0]] : a.shape
    let bShape = b.shape.count == 1 ? [b.shape[0], 1] : b.shape
    let (m, k) = (aShape[aShape.count - 2], aShape[aShape.count - 1])
    let (k2, n) = (bShape[bShape.count - 2], bShape[bShape.count - 1])
    guard k == k2 else { throw .shape("MatMul of \(a.shape) and \(b.shape)") }
    let batchA = Array(aShape.dropLast(2))
    let batchB = Array(bShape.dropLast(2))
    let batch = try broadcastShapes([batchA, batchB])
    var shape = batch + [m, n]
    if a.shape.count == 1 { shape.remove(at: shape.count - 2) }
    if b.shape.count == 1 { shape.removeLast() }
    let out = try ctx.value(.float32, shape)
    // Per batch item: element offsets into A and B.
    let batchCount = try checkedCount(batch, limit: ctx.limits.maxTensorElements, what: "MatMul batch")
    var aOffsets: [Int] = []
    var bOffsets: [Int] = []
    aOffsets.reserveCapacity(batchCount)
    bOffsets.reserveCapacity(batchCount)
    try forEachBroadcast(batch, [broadcastStrides(batchA, to: batch), broadcastStrides(batchB, to: batch)]) { _, off in
      aOffsets.append(off[0] * m * k)
      bOffsets.append(off[1] * k * n)
    }
    if batch.isEmpty {
      aOffsets = [0]
      bOffsets = [0]
    }
    // A whose batch is not broadcast against B's: fold A's batch into M (one GEMM).
    let foldBatch = batchB.allSatisfy { $0 == 1 } && !batchA.isEmpty
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, pool in
        let (ap, bp, cp) = (ins[0].f(base), ins[1].f(base), outs[0].f(base))
        if foldBatch {
          sgemm(transA: false, transB: false, m: m * batchCount, n: n, k: k, alpha: 1, a: ap, lda: max(k, 1),
                b: bp, ldb: max(n, 1), beta: 0, c: cp, ldc: max(n, 1), pool: pool)
          return
        }
        for i in 0..<aOffsets.count {
          sgemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: ap + aOffsets[i], lda: max(k, 1),
                b: bp + bOffsets[i], ldb: max(n, 1), beta: 0, c: cp + i * m * n, ldc: max(n, 1), pool: pool)
        }
      }
    }

  case "Gemm":
    let a = try input(0)
    let b = try input(1)
    try requireFloat(a)
    try requireFloat(b)
    guard a.shape.count == 2, b.shape.count == 2 else { throw .shape("Gemm needs 2-D inputs") }
    let transA = try node.int("transA", 0) != 0
    let transB = try node.int("transB", 0) != 0
    let alpha = try node.float("alpha", 1)
    let beta = try node.float("beta", 1)
    let (m, k) = transA ? (a.shape[1], a.shape[0]) : (a.shape[0], a.shape[1])
    let (k2, n) = transB ? (b.shape[1], b.shape[0]) : (b.shape[0], b.shape[1])
    guard k == k2 else { throw .shape("Gemm of \(a.shape) and \(b.shape)") }
    let out = try ctx.value(.float32, [m, n])
    var cStrides: [Int]? = nil
    if let c = optionalInput(2) {
      try requireFloat(c)
      guard try broadcastShapes([c.shape, [m, n]]) == [m, n] else { throw .shape("Gemm C \(c.shape) vs [\(m), \(n)]") }
      cStrides = broadcastStrides(c.shape, to: [m, n])
    }
    let act = try fusedActivation()
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, pool in
        let cp = outs[0].f(base)
        var betaUsed: Float = 0
        if let cStrides, beta != 0 {
          let c = ins[2].f(base)
          for i in 0..<m { for j in 0..<n { cp[i * n + j] = c[i * cStrides[0] + j * cStrides[1]] } }
          betaUsed = beta
        }
        sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: ins[0].f(base),
              lda: max(a.shape[1], 1), b: ins[1].f(base), ldb: max(b.shape[1], 1), beta: betaUsed, c: cp,
              ldc: max(n, 1), epilogue: GemmEpilogue(activation: act), pool: pool)
      }
    }

  case "_Dense":
    // Fused MatMul/Gemm + bias + activation: out[..., N] = act(A[..., K] x W[K, N] + bias[N]).
    let a = try input(0)
    let w = try input(1)
    guard w.shape.count == 2, let k = a.shape.last, k == w.shape[0] else { throw .shape("dense shapes") }
    let n = w.shape[1]
    let out = try ctx.value(.float32, Array(a.shape.dropLast()) + [n])
    let m = a.count / max(k, 1)
    let hasBias = optionalInput(2) != nil
    let act = try fusedActivation()
    // Constant weights (the usual case) are packed once here into the GEMM kernel's panel layout: no packing and
    // no strided reads of W on every call.
    let packed: PackedGemmB? =
      if let wc = consts.count > 1 ? consts[1] : nil, wc.type == .float32, wc.count == k * n, act != .gelu {
        PackedGemmB(k: k, n: n, b: wc.floatPointer, ldb: max(n, 1))
      } else { nil }
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, pool in
        let bias: UnsafePointer<Float>? = hasBias ? UnsafePointer(ins[2].f(base)) : nil
        if act == .gelu {
          denseGelu(m: m, n: n, k: k, a: ins[0].f(base), w: ins[1].f(base), bias: bias, c: outs[0].f(base), pool: pool)
          return
        }
        let epilogue = GemmEpilogue(bias: bias.map { .perColumn($0) } ?? .none, activation: act)
        if let packed {
          sgemm(m: m, a: ins[0].f(base), lda: max(k, 1), packedB: packed, c: outs[0].f(base), ldc: max(n, 1),
                epilogue: epilogue, pool: pool)
          return
        }
        sgemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: ins[0].f(base), lda: max(k, 1),
              b: ins[1].f(base), ldb: max(n, 1), beta: 0, c: outs[0].f(base), ldc: max(n, 1),
              epilogue: epilogue, pool: pool)
      }
    }

  case "LayerNormalization":
    try noExtraOutputs(1)
    let x = try input(0)
    let scale = try input(1)
    try requireFloat(x)
    let axis = try normAxis(try node.int("axis", -1), x.shape.count)
    let rows = product(x.shape[..<axis])
    let cols = product(x.shape[axis...])
    guard scale.count == cols else { throw .shape("LayerNormalization scale has \(scale.count) elements, need \(cols)") }
    let hasBias = optionalInput(2) != nil
    if let b = optionalInput(2), b.count != cols { throw .shape("LayerNormalization bias has \(b.count) elements") }
    let eps = try node.float("epsilon", 1e-5)
    return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
      { base, _ in
        layerNorm(ins[0].f(base), outs[0].f(base), rows: rows, cols: cols, gamma: UnsafePointer(ins[1].f(base)),
                  beta: hasBias ? UnsafePointer(ins[2].f(base)) : nil, epsilon: eps)
      }
    }

  case "BatchNormalization":
    try noExtraOutputs(1)
    guard try node.int("training_mode", 0) == 0 else { throw RuntimeError(.unsupported, "training mode") }
    let x = try input(0)
    try requireFloat(x)
    guard x.shape.count >= 2 else { throw .shape("BatchNormalization needs rank >= 2") }
    let c = x.shape[1]
    var params: [HostTensor] = []
    for i in 1...4 {
      guard let t = consts[i], t.type == .float32, t.count == c else {
        throw RuntimeError(.unsupported, "BatchNormalization parameters must be constant [\(c)] tensors")
      }
      params.append(t)
    }
    let eps = try node.float("epsilon", 1e-5)
    let (sc, bi, mean, variance) = (params[0].floatValues, params[1].floatValues, params[2].floatValues, params[3].floatValues)
    var mul = [Float](repeating: 0, count: c)
    var add = [Float](repeating: 0, count: c)
    for i in 0..<c {
      mul[i] = sc[i] / (variance[i] + eps).squareRoot()
      add[i] = bi[i] - mean[i] * mul[i]
    }
    let batch = x.shape[0]
    let spatial = product(x.shape[2...])
    let factors = HostTensor.floats(mul + add, shape: [2 * c])
    let total = x.count
    return .compute(outputs: [x], scratchBytes: 0) { ins, outs, _ in
      { base, pool in
        let (s, o) = (ins[0].f(base), outs[0].f(base))
        let f = factors.floatPointer
        parallelRanges(batch * c, work: total, pool: pool) { range in
          channelAffine(s, o, mul: f, add: f + c, channels: c, spatial: spatial, planes: range)
        }
      }
    }

  case "Conv":
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
    if let ks = try node.ints("kernel_shape"), ks != Array(w.shape[2...]) { throw .shape("Conv kernel_shape \(ks) vs weights \(w.shape)") }
    guard strides.count == 2, dilations.count == 2, pads.count == 4 else { throw .shape("Conv attribute lengths") }
    pads = try autoPads(node, input: Array(x.shape[2...]), kernel: Array(w.shape[2...]), strides: strides,
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
    // Batches run one image per pool part (each with its own workspace); one image parallelises inside its GEMM.
    let batch = x.shape[0]
    let parts = min(batch, 8)
    var single = params
    single.batch = 1
    do { single = try single.validated() } catch { throw kernelError(error) }
    let act = try fusedActivation()
    // A fused BatchNormalization after the activation (Fusion): y = act(conv) * mul[c] + add[c].
    var post: HostTensor? = nil
    if let m = node.attributes["_post_mul"], let a = node.attributes["_post_add"] {
      guard case .floats(let mul) = m, case .floats(let add) = a, mul.count == w.shape[0], add.count == w.shape[0] else {
        throw .malformed("\(node.label): fused batch normalisation does not match the output channels")
      }
      post = HostTensor.floats(mul + add, shape: [2 * w.shape[0]])
    }
    let flat: FlatConv? = FlatConv.applies(params, act) ? FlatConv(params, relu: act == .relu, post: post) : nil
    let direct: DirectConv? =
      flat == nil && DirectConv.applies(params, act) ? DirectConv(params, relu: act == .relu, post: post) : nil
    var narrow: ChannelVectorConv? = nil
    if flat == nil, direct == nil, let wc = consts[1], ChannelVectorConv.applies(params, act, constantWeights: true) {
      narrow = ChannelVectorConv(params, relu: act == .relu, weight: wc, post: post)
    }
    let outChannels = w.shape[0]
    let outPlane = params.outHeight * params.outWidth
    let perImage = flat?.scratchCount ?? direct?.scratchCount ?? narrow?.scratchCount ?? single.workspaceCount
    let perImageTotal = try checkedCount([perImage, parts], limit: Int.max, what: "Conv workspace")
    let scratch = try checkedCount(
      [max(perImageTotal, params.workspaceCount), 4], limit: ctx.limits.maxArenaBytes, what: "Conv workspace")
    let inputStride = x.count / max(batch, 1)
    let outputStride = out.count / max(batch, 1)
    return .compute(outputs: [out], scratchBytes: scratch) { ins, outs, ws in
      { base, pool in
        if batch > 1 && (pool?.threadCount ?? 1) > 1 || flat != nil || direct != nil || narrow != nil {
          var job = BatchConvJob(
            single: single, input: ins[0].f(base), weight: ins[1].f(base),
            bias: hasBias ? UnsafePointer(ins[2].f(base)) : nil, output: outs[0].f(base),
            workspace: perImage > 0 ? ws.f(base) : nil, workspaceCount: perImage, inputStride: inputStride,
            outputStride: outputStride, batch: batch, parts: parts, activation: act, direct: direct, narrow: narrow,
            flat: flat)
          if batch == 1, flat == nil, let direct, let workspace = job.workspace {
            direct.run(job.input, job.weight, job.bias, job.output, scratch: workspace, pool: nil)
          } else if let pool, batch > 1 {
            withUnsafePointer(to: &job) { p in
              pool.parallelFor(parts, context: UnsafeRawPointer(p)) { context, part in
                context.assumingMemoryBound(to: BatchConvJob.self).pointee.run(part: part)
              }
            }
          } else {
            for part in 0..<parts { job.run(part: part) }
          }
          // The direct kernels apply a fused batch normalisation in registers; the GEMM path afterwards.
          if let post, flat == nil, direct == nil, narrow == nil {
            let (o, f) = (outs[0].f(base), post.floatPointer)
            channelAffine(o, o, mul: f, add: f + outChannels, channels: outChannels, spatial: outPlane,
                          planes: 0..<(batch * outChannels))
          }
          return
        }
        conv2d(params, input: ins[0].f(base), weight: ins[1].f(base), bias: hasBias ? UnsafePointer(ins[2].f(base)) : nil,
               output: outs[0].f(base), workspace: scratch > 0 ? ws.f(base) : nil, activation: act, pool: pool)
        if let post {
          let (o, f) = (outs[0].f(base), post.floatPointer)
          channelAffine(o, o, mul: f, add: f + outChannels, channels: outChannels, spatial: outPlane,
                        planes: 0..<(batch * outChannels))
        }
      }
    }

  case "MaxPool", "AveragePool":
    try noExtraOutputs(1)
    let x = try input(0)
    try requireFloat(x)
    guard x.shape.count == 4 else { throw RuntimeError(.unsupported, "\(node.opType) on rank \(x.shape.count) (2-D only)") }
    guard let kernel = try node.ints("kernel_shape"), kernel.count == 2 else { throw .shape("pool kernel_shape") }
    let strides = try node.ints("strides") ?? [1, 1]
    let dilations = try node.ints("dilations") ?? [1, 1]
    var pads = try node.ints("pads") ?? [0, 0, 0, 0]
    guard strides.count == 2, dilations.count == 2, pads.count == 4 else { throw .shape("pool attribute lengths") }
    pads = try autoPads(node, input: Array(x.shape[2...]), kernel: kernel, strides: strides, dilations: dilations, pads: pads)
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
    let simple = isSimplePool(params)
    let total = x.count
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, pool in
        if simple {
          let (s, o) = (ins[0].f(base), outs[0].f(base))
          parallelRanges(params.batch * params.channels, work: total, pool: pool) { range in
            simplePool(params, s, o, max: isMax, planes: range)
          }
        } else if isMax {
          maxPool2d(params, input: ins[0].f(base), output: outs[0].f(base))
        } else {
          avgPool2d(params, input: ins[0].f(base), output: outs[0].f(base), countIncludePad: includePad)
        }
      }
    }

  case "GlobalAveragePool", "GlobalMaxPool":
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

  default:
    throw RuntimeError(.unsupported, "operator \(node.opType)")
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
      guard strides[d] >= 1, dilations[d] >= 1, kernel[d] >= 1, input[d] >= 0 else { throw .shape("invalid kernel geometry") }
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
