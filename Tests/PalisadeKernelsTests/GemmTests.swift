import Testing
import PalisadeKernels

struct GemmCase: CustomTestStringConvertible, Sendable {
  var m: Int, n: Int, k: Int
  var transA = false, transB = false
  var alpha: Float = 1, beta: Float = 0
  var padding = 0  // extra elements per row in lda / ldb / ldc
  var testDescription: String {
    "m=\(m) n=\(n) k=\(k) tA=\(transA) tB=\(transB) alpha=\(alpha) beta=\(beta) pad=\(padding)"
  }
}

/// Runs sgemm and a Double reference; returns (ours, reference, error scale per element).
func runGemm(
  _ t: GemmCase, epilogue: (bias: [Float]?, perRow: Bool, activation: Activation) = (nil, false, .identity),
  pool: WorkerPool? = nil, cFill: Float? = nil
) -> (ours: [Float], reference: [Double], scale: [Double]) {
  let lda = (t.transA ? t.m : t.k) + t.padding
  let ldb = (t.transB ? t.k : t.n) + t.padding
  let ldc = t.n + t.padding
  let a = randomFloats((t.transA ? t.k : t.m) * max(lda, 1) + 1, seed: UInt64(t.m * 7919 + t.k))
  let b = randomFloats((t.transB ? t.n : t.k) * max(ldb, 1) + 1, seed: UInt64(t.n * 104729 + t.k + 1))
  var c = cFill.map { [Float](repeating: $0, count: t.m * ldc) } ?? randomFloats(t.m * ldc, seed: 99)
  var reference = [Double](repeating: 0, count: t.m * t.n)
  var scale = [Double](repeating: 0, count: t.m * t.n)
  for i in 0..<t.m {
    for j in 0..<t.n {
      var sum = 0.0
      var absSum = 0.0
      for p in 0..<t.k {
        let av = Double(t.transA ? a[p * lda + i] : a[i * lda + p])
        let bv = Double(t.transB ? b[j * ldb + p] : b[p * ldb + j])
        sum += av * bv
        absSum += Swift.abs(av * bv)
      }
      var v = Double(t.alpha) * sum
      if t.beta != 0 { v += Double(t.beta) * Double(c[i * ldc + j]) }
      if let bias = epilogue.bias { v += Double(epilogue.perRow ? bias[i] : bias[j]) }
      switch epilogue.activation {
      case .identity: break
      case .relu: v = max(v, 0)
      case .gelu: v = 0.5 * v * (1 + erfRef(v / 2.0.squareRoot()))
      case .sigmoid: v = 1 / (1 + expRef(-v))
      case .tanh: v = tanhRef(v)
      }
      reference[i * t.n + j] = v
      scale[i * t.n + j] =
        Double(Swift.abs(t.alpha)) * absSum
        + (t.beta == 0 ? 0 : Swift.abs(Double(t.beta) * Double(c[i * ldc + j])))
    }
  }
  a.withUnsafeBufferPointer { pa in
    b.withUnsafeBufferPointer { pb in
      c.withUnsafeMutableBufferPointer { pc in
        epilogue.bias.withUnsafeBufferPointerOrNil { pbias in
          var e = GemmEpilogue(activation: epilogue.activation)
          if let pbias { e.bias = epilogue.perRow ? .perRow(pbias) : .perColumn(pbias) }
          sgemm(
            transA: t.transA, transB: t.transB, m: t.m, n: t.n, k: t.k, alpha: t.alpha,
            a: pa.baseAddress!, lda: max(lda, 1), b: pb.baseAddress!, ldb: max(ldb, 1),
            beta: t.beta, c: pc.baseAddress!, ldc: max(ldc, 1), epilogue: e, pool: pool)
        }
      }
    }
  }
  var ours = [Float](repeating: 0, count: t.m * t.n)
  for i in 0..<t.m { for j in 0..<t.n { ours[i * t.n + j] = c[i * ldc + j] } }
  return (ours, reference, scale)
}

extension Optional where Wrapped == [Float] {
  func withUnsafeBufferPointerOrNil<R>(_ body: (UnsafePointer<Float>?) -> R) -> R {
    switch self {
    case .some(let array): return array.withUnsafeBufferPointer { body($0.baseAddress) }
    case .none: return body(nil)
    }
  }
}

func expectGemmClose(_ result: (ours: [Float], reference: [Double], scale: [Double]), _ label: String) {
  for i in result.ours.indices {
    let tol = 1e-5 + 1e-4 * Swift.abs(result.reference[i]) + 2e-6 * result.scale[i]
    let ok = Swift.abs(Double(result.ours[i]) - result.reference[i]) <= tol
    if !ok {
      Issue.record("\(label): element \(i) got \(result.ours[i]) expected \(result.reference[i])")
      return
    }
  }
}

let gemmShapes: [(Int, Int, Int)] = [
  (1, 1, 1), (1, 7, 13), (7, 1, 5), (2, 3, 1), (6, 16, 8), (7, 17, 9), (13, 31, 7), (31, 13, 127),
  (127, 129, 3), (64, 64, 64), (5, 33, 300), (197, 20, 11), (3, 3077, 2), (12, 48, 513), (1, 300, 601),
  (1, 16, 4), (1, 35, 7), (1, 1100, 5), (96, 40, 9), (97, 40, 9),
]

/// sgemm on a ``PackedGemmB`` against a Double reference (the runtime's dense layers).
func runPackedGemm(
  m: Int, n: Int, k: Int, transposedB: Bool = false, bias: [Float]? = nil, activation: Activation = .identity,
  pool: WorkerPool? = nil
) -> (ours: [Float], reference: [Double], scale: [Double]) {
  let a = randomFloats(m * k + 1, seed: UInt64(m * 31 + k))
  let b = randomFloats(n * k + 1, seed: UInt64(n * 17 + k + 3))
  var reference = [Double](repeating: 0, count: m * n)
  var scale = [Double](repeating: 0, count: m * n)
  for i in 0..<m {
    for j in 0..<n {
      var sum = 0.0
      var absSum = 0.0
      for p in 0..<k {
        let product = Double(a[i * k + p]) * Double(transposedB ? b[j * k + p] : b[p * n + j])
        sum += product
        absSum += Swift.abs(product)
      }
      if let bias { sum += Double(bias[j]) }
      if activation == .relu { sum = max(sum, 0) }
      reference[i * n + j] = sum
      scale[i * n + j] = absSum
    }
  }
  var c = [Float](repeating: .nan, count: m * n)
  let packed = b.withUnsafeBufferPointer {
    PackedGemmB(k: k, n: n, b: $0.baseAddress!, ldb: max(transposedB ? k : n, 1), transposed: transposedB)
  }
  a.withUnsafeBufferPointer { pa in
    c.withUnsafeMutableBufferPointer { pc in
      bias.withUnsafeBufferPointerOrNil { pbias in
        var e = GemmEpilogue(activation: activation)
        if let pbias { e.bias = .perColumn(pbias) }
        sgemm(
          m: m, a: pa.baseAddress!, lda: max(k, 1), packedB: packed, c: pc.baseAddress!, ldc: max(n, 1),
          epilogue: e, pool: pool)
      }
    }
  }
  return (c, reference, scale)
}

@Suite("SGEMM")
struct GemmTests {
  @Test("packed B: shapes, transposed storage, epilogue, pool")
  func packedB() {
    let pool = WorkerPool(threadCount: 2)
    let shapes = [
      (1, 512, 784), (32, 512, 784), (32, 10, 512), (2, 3, 1), (5, 33, 300), (8, 16, 9), (14, 40, 9),
      (32, 17, 1100), (150, 40, 20), (1, 10, 512), (1, 70, 3), (4, 64, 64), (26, 100, 50),
    ]
    for (m, n, k) in shapes {
      for transposed in [false, true] {
        let label = "packed m=\(m) n=\(n) k=\(k) transposed=\(transposed)"
        expectGemmClose(runPackedGemm(m: m, n: n, k: k, transposedB: transposed), label)
        let bias = randomFloats(n, seed: UInt64(n))
        expectGemmClose(
          runPackedGemm(m: m, n: n, k: k, transposedB: transposed, bias: bias, activation: .relu, pool: pool),
          label + " bias+relu pooled")
      }
    }
  }

  /// Row counts whose last tiles run as 4-row tiles (8 or 4 rows left), in blocks of both A layouts.
  @Test("4-row tiles", arguments: [false, true])
  func fourRowTiles(transA: Bool) {
    for m in [4, 8, 10, 14, 20, 26, 32, 38, 148, 152] {
      let t = GemmCase(m: m, n: 48, k: 37, transA: transA)
      expectGemmClose(runGemm(t), t.testDescription)
      let tb = GemmCase(m: m, n: 20, k: 5, transA: transA, transB: true, beta: 0.5)
      expectGemmClose(runGemm(tb), tb.testDescription)
    }
  }

  /// One row against B narrower than 64 columns (8, 16, 32 and remainders), k odd and even.
  @Test("single row, narrow B")
  func singleRowNarrow() {
    for n in [8, 16, 24, 32, 40, 48, 56, 63] {
      for k in [1, 2, 3, 5, 784] {
        let t = GemmCase(m: 1, n: n, k: k)
        expectGemmClose(runGemm(t), t.testDescription)
        let scaled = GemmCase(m: 1, n: n, k: k, alpha: 0.5, beta: 2)
        expectGemmClose(runGemm(scaled), scaled.testDescription)
      }
    }
  }

  @Test("shapes x transposes", arguments: [(false, false), (true, false), (false, true), (true, true)])
  func shapesAndTransposes(transA: Bool, transB: Bool) {
    for (m, n, k) in gemmShapes {
      let t = GemmCase(m: m, n: n, k: k, transA: transA, transB: transB)
      expectGemmClose(runGemm(t), t.testDescription)
    }
  }

  @Test("alpha, beta and padded leading dimensions")
  func alphaBeta() {
    for (m, n, k) in [(7, 17, 9), (13, 31, 7), (40, 40, 300), (1, 1, 1)] {
      for (alpha, beta) in [(Float(1), Float(0.5)), (-0.7, 1), (2, -1.5), (0.3, 0)] {
        for pad in [0, 3] {
          let t = GemmCase(m: m, n: n, k: k, transA: pad > 0, alpha: alpha, beta: beta, padding: pad)
          expectGemmClose(runGemm(t), t.testDescription)
        }
      }
    }
  }

  @Test("k = 0 gives beta * C plus epilogue")
  func kZero() {
    let t = GemmCase(m: 5, n: 9, k: 0, beta: 0.5)
    expectGemmClose(runGemm(t), t.testDescription)
    let bias = randomFloats(9, seed: 5)
    expectGemmClose(runGemm(GemmCase(m: 5, n: 9, k: 0), epilogue: (bias, false, .relu)), "k=0 epilogue")
  }

  @Test("alpha = 0 does not read A or B")
  func alphaZero() {
    let a = [Float](repeating: .nan, count: 12)
    let b = [Float](repeating: .infinity, count: 12)
    var c: [Float] = (0..<9).map { Float($0) }
    sgemm(
      transA: false, transB: false, m: 3, n: 3, k: 4, alpha: 0, a: a, lda: 4, b: b, ldb: 3,
      beta: 2, c: &c, ldc: 3)
    #expect(c == (0..<9).map { Float(2 * $0) })
  }

  @Test("beta = 0 does not read C")
  func betaZeroIgnoresNaN() {
    for (m, n, k) in [(7, 17, 9), (12, 32, 5)] {
      let r = runGemm(GemmCase(m: m, n: n, k: k), cFill: .nan)
      #expect(!r.ours.contains { $0.isNaN })
      expectGemmClose(r, "NaN C \(m)x\(n)")
    }
  }

  @Test("fused epilogues", arguments: [Activation.identity, .relu, .gelu, .sigmoid, .tanh])
  func epilogues(activation: Activation) {
    for (m, n, k) in [(7, 17, 9), (12, 32, 300), (1, 1, 1), (13, 50, 31)] {
      for perRow in [false, true] {
        let bias = randomFloats(perRow ? m : n, seed: UInt64(m + n))
        let t = GemmCase(m: m, n: n, k: k, beta: 0.25)
        expectGemmClose(
          runGemm(t, epilogue: (bias, perRow, activation)), "\(t.testDescription) \(activation) perRow=\(perRow)")
      }
      let t = GemmCase(m: m, n: n, k: k)
      expectGemmClose(runGemm(t, epilogue: (nil, false, activation)), "\(t.testDescription) \(activation) no bias")
    }
  }

  @Test("worker pool split over N and over M", arguments: [1, 2, 3])
  func pooled(threads: Int) {
    let pool = WorkerPool(threadCount: threads)
    for t in [
      GemmCase(m: 97, n: 300, k: 70), GemmCase(m: 500, n: 20, k: 40, transB: true),
      GemmCase(m: 64, n: 64, k: 64, transA: true, beta: 0.5), GemmCase(m: 200, n: 7, k: 200),
      GemmCase(m: 1, n: 2000, k: 300, beta: 0.5), GemmCase(m: 1, n: 1000, k: 700, transA: true, transB: true),
    ] {
      let bias = randomFloats(t.n, seed: 3)
      expectGemmClose(runGemm(t, epilogue: (bias, false, .gelu), pool: pool), "\(threads) threads \(t.testDescription)")
    }
  }

  @Test("gemv matches a reference", arguments: [false, true])
  func gemv(transA: Bool) {
    for (m, n) in [(1, 1), (7, 13), (31, 127), (64, 33), (3, 300)] {
      let lda = n + 2
      let a = randomFloats(m * lda, seed: 11)
      let x = randomFloats(transA ? m : n, seed: 12)
      var y = randomFloats(transA ? n : m, seed: 13)
      let beta: Float = 0.5
      let alpha: Float = 1.5
      var expected = [Double](repeating: 0, count: y.count)
      for o in 0..<y.count {
        var s = 0.0
        for i in 0..<(transA ? m : n) {
          s += Double(transA ? a[i * lda + o] : a[o * lda + i]) * Double(x[i])
        }
        expected[o] = Double(alpha) * s + Double(beta) * Double(y[o])
      }
      y.withUnsafeMutableBufferPointer { py in
        sgemv(transA: transA, m: m, n: n, alpha: alpha, a: a, lda: lda, x: x, beta: beta, y: py.baseAddress!)
      }
      #expect(firstMismatch(y, expected, rel: 1e-4, abs: 1e-4) == nil, "gemv \(m)x\(n) transA=\(transA)")
    }
  }
}
