import Foundation
import PalisadeKernels

/// Matrix products on the kernels' SGEMM, and the dense layer the planner fuses them into.
extension OperatorRegistry {
  static let matrixOperators: [OperatorDefinition] = [
    OperatorDefinition("MatMul") { (n) throws(RuntimeError) in try n.lowerMatMul() },
    OperatorDefinition("Gemm") { (n) throws(RuntimeError) in try n.lowerGemm() },
    OperatorDefinition("_Dense", isInternal: true) { (n) throws(RuntimeError) in try n.lowerDense() },
  ]
}

extension NodeLowering {
  /// numpy matmul: batched, broadcast, 1-D operands promoted.
  func lowerMatMul() throws(RuntimeError) -> Lowering {
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
          sgemm(
            transA: false, transB: false, m: m * batchCount, n: n, k: k, alpha: 1, a: ap, lda: max(k, 1),
            b: bp, ldb: max(n, 1), beta: 0, c: cp, ldc: max(n, 1), pool: pool)
          return
        }
        for i in 0..<aOffsets.count {
          sgemm(
            transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: ap + aOffsets[i], lda: max(k, 1),
            b: bp + bOffsets[i], ldb: max(n, 1), beta: 0, c: cp + i * m * n, ldc: max(n, 1), pool: pool)
        }
      }
    }
  }

  /// alpha * op(A) * op(B) + beta * C on 2-D operands.
  func lowerGemm() throws(RuntimeError) -> Lowering {
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
        sgemm(
          transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: ins[0].f(base),
          lda: max(a.shape[1], 1), b: ins[1].f(base), ldb: max(b.shape[1], 1), beta: betaUsed, c: cp,
          ldc: max(n, 1), epilogue: GemmEpilogue(activation: act), pool: pool)
      }
    }
  }

  /// Planner-fused MatMul/Gemm + bias + activation (``Planner/fuseDense(_:_:)``).
  func lowerDense() throws(RuntimeError) -> Lowering {
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
      if let wc = constant(1), wc.type == .float32, wc.count == k * n, act != .gelu {
        PackedGemmB(k: k, n: n, b: wc.floatPointer, ldb: max(n, 1))
      } else { nil }
    return .compute(outputs: [out], scratchBytes: 0) { ins, outs, _ in
      { base, pool in
        let bias: UnsafePointer<Float>? = hasBias ? UnsafePointer(ins[2].f(base)) : nil
        if act == .gelu {
          // GELU after the whole GEMM, one vector pass over the output, rather than in the tile epilogue.
          let c = outs[0].f(base)
          sgemm(
            transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: ins[0].f(base), lda: max(k, 1),
            b: ins[1].f(base), ldb: max(n, 1), beta: 0, c: c, ldc: max(n, 1),
            epilogue: GemmEpilogue(bias: bias.map { .perColumn($0) } ?? .none), pool: pool)
          unary(.gelu, c, out: c, count: m * n)
          return
        }
        let epilogue = GemmEpilogue(bias: bias.map { .perColumn($0) } ?? .none, activation: act)
        if let packed {
          sgemm(
            m: m, a: ins[0].f(base), lda: max(k, 1), packedB: packed, c: outs[0].f(base), ldc: max(n, 1),
            epilogue: epilogue, pool: pool)
          return
        }
        sgemm(
          transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: ins[0].f(base), lda: max(k, 1),
          b: ins[1].f(base), ldb: max(n, 1), beta: 0, c: outs[0].f(base), ldc: max(n, 1),
          epilogue: epilogue, pool: pool)
      }
    }
  }
}
