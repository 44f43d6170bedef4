/// Activation applied element-wise by fused epilogues and unary kernels.
public enum Activation: Sendable, Equatable, Hashable {
  case identity
  case relu
  /// Exact GELU: 0.5 x (1 + erf(x / sqrt 2)).
  case gelu
  case sigmoid
  case tanh

  /// Applies the activation to eight lanes.
  @inlinable @inline(__always)
  public func apply(_ x: Float8) -> Float8 {
    switch self {
    case .identity: return x
    case .relu: return VMath.relu(x)
    case .gelu: return VMath.gelu(x)
    case .sigmoid: return VMath.sigmoid(x)
    case .tanh: return VMath.tanh(x)
    }
  }
}

/// Bias added by a GEMM epilogue.
public enum GemmBias {
  case none
  /// `n` values; `bias[j]` is added to every element of column `j` (the usual dense-layer bias).
  case perColumn(UnsafePointer<Float>)
  /// `m` values; `bias[i]` is added to every element of row `i` (conv output channels).
  case perRow(UnsafePointer<Float>)
}

/// Work fused into the GEMM store while the C tile is still in registers:
/// `C = activation(alpha * op(A) * op(B) + beta * C + bias)`.
public struct GemmEpilogue {
  public var bias: GemmBias
  public var activation: Activation

  public init(bias: GemmBias = .none, activation: Activation = .identity) {
    self.bias = bias
    self.activation = activation
  }

  /// No bias, no activation.
  public static var none: GemmEpilogue { GemmEpilogue() }

  @inline(__always)
  var isIdentity: Bool {
    if case .none = bias, activation == .identity { return true }
    return false
  }
}

/// Single-precision GEMM, row-major: `C = alpha * op(A) * op(B) + beta * C`, then the epilogue.
///
/// `op(A)` is `m x k`, `op(B)` is `k x n`, `C` is `m x n`. With `transA == false`, A is stored `m x k` with row
/// stride `lda >= k`; with `transA == true` it is stored `k x m` with `lda >= m` (likewise B). `ldc >= n`.
/// When `beta == 0`, C is not read (NaNs in it do not propagate). `k == 0` or `alpha == 0` gives `beta * C` plus
/// the epilogue, without reading A or B.
/// Any `m, n >= 0` is supported; edge tiles are computed in a scratch tile and copied.
///
/// With a `pool` and enough work, the output is split into one block per pool thread along the longer of
/// `m` / `n`; each thread packs its own panels into preallocated per-thread buffers (no allocation per call).
///
/// - Precondition: pointers cover the described extents; leading dimensions as above. These are programmer
///   errors (the model runtime validates shapes before planning), so they are checked, not thrown.
public func sgemm(
  transA: Bool, transB: Bool,
  m: Int, n: Int, k: Int,
  alpha: Float,
  a: UnsafePointer<Float>, lda: Int,
  b: UnsafePointer<Float>, ldb: Int,
  beta: Float,
  c: UnsafeMutablePointer<Float>, ldc: Int,
  epilogue: GemmEpilogue = .none,
  pool: WorkerPool? = nil
) {
  precondition(m >= 0 && n >= 0 && k >= 0, "sgemm: negative dimension")
  precondition(lda >= max(1, transA ? m : k), "sgemm: lda too small")
  precondition(ldb >= max(1, transB ? k : n), "sgemm: ldb too small")
  precondition(ldc >= max(1, n), "sgemm: ldc too small")
  if m == 0 || n == 0 { return }

  let problem = GemmProblem(
    transA: transA, transB: transB, k: k, alpha: alpha,
    a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc, epilogue: epilogue, packedB: nil)
  runGemm(problem, m: m, n: n, pool: pool)
}

/// A constant B (`k x n`, e.g. a layer's weights) packed once into the layout the GEMM kernel reads: panels of
/// 16 columns, each `k x 16` contiguous floats (the last panel zero-padded). A GEMM on a packed B neither packs
/// B per call nor reads it in place with a row stride (which, for power-of-two widths such as 512, maps every
/// row of a panel to the same few L1 sets).
public final class PackedGemmB: @unchecked Sendable {
  public let k: Int
  public let n: Int
  /// `(n + 15) / 16` panels of `k * 16` floats; immutable after init.
  let panels: UnsafeMutablePointer<Float>

  /// Packs op(B): `b` is `k x n` with row stride `ldb >= n`, or with `transposed` stored `n x k` (`ldb >= k`).
  public init(k: Int, n: Int, b: UnsafePointer<Float>, ldb: Int, transposed: Bool = false) {
    precondition(k >= 0 && n >= 0 && ldb >= max(1, transposed ? k : n), "PackedGemmB: bad dimensions")
    self.k = k
    self.n = n
    let nr = GemmBlocking.nr
    let count = max(1, (n + nr - 1) / nr * nr * k)
    let raw = UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64)
    panels = raw.bindMemory(to: Float.self, capacity: count)
    panels.initialize(repeating: 0, count: count)
    var jr = 0
    while jr < n {
      let dst = panels + (jr / nr) * k * nr
      for j in 0..<min(nr, n - jr) {
        for p in 0..<k {
          dst[p * nr + j] = transposed ? b[(jr + j) * ldb + p] : b[p * ldb + jr + j]
        }
      }
      jr += nr
    }
  }

  deinit {
    panels.deallocate()
  }
}

/// `C = op(A) * B + epilogue` with B packed once (``PackedGemmB``): the dense-layer GEMM of the model runtime.
/// A is `m x k` row-major with row stride `lda >= k`; C is `m x n` with `ldc >= n`. Same threading as ``sgemm``.
public func sgemm(
  m: Int, a: UnsafePointer<Float>, lda: Int, packedB: PackedGemmB,
  c: UnsafeMutablePointer<Float>, ldc: Int, epilogue: GemmEpilogue = .none, pool: WorkerPool? = nil
) {
  let k = packedB.k
  let n = packedB.n
  precondition(m >= 0 && lda >= max(1, k) && ldc >= max(1, n), "sgemm: bad dimensions")
  if m == 0 || n == 0 { return }
  let problem = GemmProblem(
    transA: false, transB: false, k: k, alpha: 1, a: a, lda: lda, b: UnsafePointer(packedB.panels), ldb: n,
    beta: 0, c: c, ldc: ldc, epilogue: epilogue, packedB: UnsafePointer(packedB.panels))
  runGemm(problem, m: m, n: n, pool: pool)
  withExtendedLifetime(packedB) {}
}

/// Runs `problem` over all of C, split over `pool` when it is worth it.
@inline(__always)
func runGemm(_ problem: GemmProblem, m: Int, n: Int, pool: WorkerPool?) {
  // Below ~2^19 multiply-adds (~10 us on one core) a hand-off to another thread costs more than it saves.
  let work = m * n * max(problem.k, 1)
  if let pool, pool.threadCount > 1, work >= 1 << 19 {
    // Split along the longer side, in whole micro-panels, one block per thread.
    let byColumns = n >= m
    let unit = byColumns ? GemmBlocking.nr : GemmBlocking.mr
    let extent = byColumns ? n : m
    let panels = (extent + unit - 1) / unit
    let parts = min(pool.threadCount, panels)
    if parts > 1 {
      var split = GemmSplit(
        problem: problem, m: m, n: n, byColumns: byColumns, unit: unit, panels: panels, parts: parts)
      // The context form of parallelFor: no closure box, so a pooled GEMM allocates nothing.
      withUnsafePointer(to: &split) { pointer in
        pool.parallelFor(parts, context: UnsafeRawPointer(pointer)) { context, part in
          context.assumingMemoryBound(to: GemmSplit.self).pointee.run(part: part)
        }
      }
      return
    }
  }
  problem.compute(rows: 0..<m, cols: 0..<n)
}

/// Matrix-vector product: `y = alpha * op(A) * x + beta * y`, A row-major `m x n` (stride `lda`).
///
/// With `transA == false`, `x` has `n` elements and `y` has `m`; with `transA == true`, `x` has `m` and `y` `n`.
/// When `beta == 0`, y is not read.
public func sgemv(
  transA: Bool, m: Int, n: Int, alpha: Float,
  a: UnsafePointer<Float>, lda: Int,
  x: UnsafePointer<Float>, beta: Float, y: UnsafeMutablePointer<Float>
) {
  precondition(m >= 0 && n >= 0 && lda >= max(1, n), "sgemv: bad dimensions")
  if !transA {
    for i in 0..<m {
      let row = a + i * lda
      let dot = dotProduct(row, x, n)
      y[i] = beta == 0 ? alpha * dot : alpha * dot + beta * y[i]
    }
  } else {
    // y[j] = sum_i A[i, j] x[i]: stream rows of A, axpy into y.
    if beta == 0 {
      y.update(repeating: 0, count: n)
    } else if beta != 1 {
      scale(y, n, beta)
    }
    for i in 0..<m {
      axpy(alpha * x[i], a + i * lda, y, n)
    }
  }
}

@inline(__always)
func dotProduct(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
  var s0 = Float8()
  var s1 = Float8()
  var s2 = Float8()
  var s3 = Float8()
  var i = 0
  let ra = UnsafeRawPointer(a)
  let rb = UnsafeRawPointer(b)
  while i + 32 <= n {
    s0 = s0.addingProduct(
      ra.loadUnaligned(fromByteOffset: i * 4, as: Float8.self),
      rb.loadUnaligned(fromByteOffset: i * 4, as: Float8.self))
    s1 = s1.addingProduct(
      ra.loadUnaligned(fromByteOffset: i * 4 + 32, as: Float8.self),
      rb.loadUnaligned(fromByteOffset: i * 4 + 32, as: Float8.self))
    s2 = s2.addingProduct(
      ra.loadUnaligned(fromByteOffset: i * 4 + 64, as: Float8.self),
      rb.loadUnaligned(fromByteOffset: i * 4 + 64, as: Float8.self))
    s3 = s3.addingProduct(
      ra.loadUnaligned(fromByteOffset: i * 4 + 96, as: Float8.self),
      rb.loadUnaligned(fromByteOffset: i * 4 + 96, as: Float8.self))
    i += 32
  }
  while i + 8 <= n {
    s0 = s0.addingProduct(
      ra.loadUnaligned(fromByteOffset: i * 4, as: Float8.self),
      rb.loadUnaligned(fromByteOffset: i * 4, as: Float8.self))
    i += 8
  }
  var sum = ((s0 + s1) + (s2 + s3)).sum()
  while i < n {
    sum += a[i] * b[i]
    i += 1
  }
  return sum
}

@inline(__always)
func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
  let va = Float8(repeating: alpha)
  let rx = UnsafeRawPointer(x)
  let ry = UnsafeMutableRawPointer(y)
  var i = 0
  while i + 8 <= n {
    let v = ry.loadUnaligned(fromByteOffset: i * 4, as: Float8.self)
      .addingProduct(va, rx.loadUnaligned(fromByteOffset: i * 4, as: Float8.self))
    ry.storeBytes(of: v, toByteOffset: i * 4, as: Float8.self)
    i += 8
  }
  while i < n {
    y[i] += alpha * x[i]
    i += 1
  }
}

/// y[0..<64] = x[0..<k] * b[0..<k, 0..<64] + initScale * y (y not read when initScale == 0).
@inline(__always)
func rowTimesPanel64(
  _ x: UnsafePointer<Float>, _ k: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
  _ y: UnsafeMutablePointer<Float>, _ initScale: Float
) {
  let ry = UnsafeMutableRawPointer(y)
  var a0 = Float8()
  var a1 = Float8()
  var a2 = Float8()
  var a3 = Float8()
  var a4 = Float8()
  var a5 = Float8()
  var a6 = Float8()
  var a7 = Float8()
  if initScale != 0 {
    let s = Float8(repeating: initScale)
    a0 = s * ry.loadUnaligned(fromByteOffset: 0, as: Float8.self)
    a1 = s * ry.loadUnaligned(fromByteOffset: 32, as: Float8.self)
    a2 = s * ry.loadUnaligned(fromByteOffset: 64, as: Float8.self)
    a3 = s * ry.loadUnaligned(fromByteOffset: 96, as: Float8.self)
    a4 = s * ry.loadUnaligned(fromByteOffset: 128, as: Float8.self)
    a5 = s * ry.loadUnaligned(fromByteOffset: 160, as: Float8.self)
    a6 = s * ry.loadUnaligned(fromByteOffset: 192, as: Float8.self)
    a7 = s * ry.loadUnaligned(fromByteOffset: 224, as: Float8.self)
  }
  var row = UnsafeRawPointer(b)
  for p in 0..<k {
    let xv = Float8(repeating: x[p])
    a0 = a0.addingProduct(xv, row.loadUnaligned(fromByteOffset: 0, as: Float8.self))
    a1 = a1.addingProduct(xv, row.loadUnaligned(fromByteOffset: 32, as: Float8.self))
    a2 = a2.addingProduct(xv, row.loadUnaligned(fromByteOffset: 64, as: Float8.self))
    a3 = a3.addingProduct(xv, row.loadUnaligned(fromByteOffset: 96, as: Float8.self))
    a4 = a4.addingProduct(xv, row.loadUnaligned(fromByteOffset: 128, as: Float8.self))
    a5 = a5.addingProduct(xv, row.loadUnaligned(fromByteOffset: 160, as: Float8.self))
    a6 = a6.addingProduct(xv, row.loadUnaligned(fromByteOffset: 192, as: Float8.self))
    a7 = a7.addingProduct(xv, row.loadUnaligned(fromByteOffset: 224, as: Float8.self))
    row += ldb &* 4
  }
  ry.storeBytes(of: a0, toByteOffset: 0, as: Float8.self)
  ry.storeBytes(of: a1, toByteOffset: 32, as: Float8.self)
  ry.storeBytes(of: a2, toByteOffset: 64, as: Float8.self)
  ry.storeBytes(of: a3, toByteOffset: 96, as: Float8.self)
  ry.storeBytes(of: a4, toByteOffset: 128, as: Float8.self)
  ry.storeBytes(of: a5, toByteOffset: 160, as: Float8.self)
  ry.storeBytes(of: a6, toByteOffset: 192, as: Float8.self)
  ry.storeBytes(of: a7, toByteOffset: 224, as: Float8.self)
}

/// y[0..<8·vectors] = x[0..<k] * b[0..<k, 0..<8·vectors] + initScale * y, for 1, 2 or 4 column vectors, with k
/// split into interleaved partial sums so that 4 to 8 independent FMA chains are in flight (one chain per vector
/// would wait for the FMA latency at every k).
@inline(__always)
func rowTimesNarrowPanel(
  _ x: UnsafePointer<Float>, _ k: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
  _ y: UnsafeMutablePointer<Float>, _ initScale: Float, vectors: Int
) {
  let ry = UnsafeMutableRawPointer(y)
  let stride = ldb &* 4
  var row = UnsafeRawPointer(b)
  var p = 0
  @inline(__always) func finish(_ v: Float8, _ offset: Int) {
    var total = v
    if initScale != 0 {
      total = total.addingProduct(
        Float8(repeating: initScale), ry.loadUnaligned(fromByteOffset: offset, as: Float8.self))
    }
    ry.storeBytes(of: total, toByteOffset: offset, as: Float8.self)
  }
  switch vectors {
  case 4:
    var a0 = Float8()
    var a1 = Float8()
    var a2 = Float8()
    var a3 = Float8()
    var b0 = Float8()
    var b1 = Float8()
    var b2 = Float8()
    var b3 = Float8()
    while p + 2 <= k {
      let x0 = Float8(repeating: x[p])
      let x1 = Float8(repeating: x[p + 1])
      let r1 = row + stride
      a0 = a0.addingProduct(x0, row.loadUnaligned(as: Float8.self))
      a1 = a1.addingProduct(x0, row.loadUnaligned(fromByteOffset: 32, as: Float8.self))
      a2 = a2.addingProduct(x0, row.loadUnaligned(fromByteOffset: 64, as: Float8.self))
      a3 = a3.addingProduct(x0, row.loadUnaligned(fromByteOffset: 96, as: Float8.self))
      b0 = b0.addingProduct(x1, r1.loadUnaligned(as: Float8.self))
      b1 = b1.addingProduct(x1, r1.loadUnaligned(fromByteOffset: 32, as: Float8.self))
      b2 = b2.addingProduct(x1, r1.loadUnaligned(fromByteOffset: 64, as: Float8.self))
      b3 = b3.addingProduct(x1, r1.loadUnaligned(fromByteOffset: 96, as: Float8.self))
      p += 2
      row += 2 &* stride
    }
    if p < k {
      let x0 = Float8(repeating: x[p])
      a0 = a0.addingProduct(x0, row.loadUnaligned(as: Float8.self))
      a1 = a1.addingProduct(x0, row.loadUnaligned(fromByteOffset: 32, as: Float8.self))
      a2 = a2.addingProduct(x0, row.loadUnaligned(fromByteOffset: 64, as: Float8.self))
      a3 = a3.addingProduct(x0, row.loadUnaligned(fromByteOffset: 96, as: Float8.self))
    }
    finish(a0 + b0, 0)
    finish(a1 + b1, 32)
    finish(a2 + b2, 64)
    finish(a3 + b3, 96)
  case 2:
    var a0 = Float8()
    var a1 = Float8()
    var b0 = Float8()
    var b1 = Float8()
    var c0 = Float8()
    var c1 = Float8()
    var d0 = Float8()
    var d1 = Float8()
    while p + 4 <= k {
      let r1 = row + stride
      let r2 = row + 2 &* stride
      let r3 = row + 3 &* stride
      let x0 = Float8(repeating: x[p])
      let x1 = Float8(repeating: x[p + 1])
      let x2 = Float8(repeating: x[p + 2])
      let x3 = Float8(repeating: x[p + 3])
      a0 = a0.addingProduct(x0, row.loadUnaligned(as: Float8.self))
      a1 = a1.addingProduct(x0, row.loadUnaligned(fromByteOffset: 32, as: Float8.self))
      b0 = b0.addingProduct(x1, r1.loadUnaligned(as: Float8.self))
      b1 = b1.addingProduct(x1, r1.loadUnaligned(fromByteOffset: 32, as: Float8.self))
      c0 = c0.addingProduct(x2, r2.loadUnaligned(as: Float8.self))
      c1 = c1.addingProduct(x2, r2.loadUnaligned(fromByteOffset: 32, as: Float8.self))
      d0 = d0.addingProduct(x3, r3.loadUnaligned(as: Float8.self))
      d1 = d1.addingProduct(x3, r3.loadUnaligned(fromByteOffset: 32, as: Float8.self))
      p += 4
      row += 4 &* stride
    }
    while p < k {
      let x0 = Float8(repeating: x[p])
      a0 = a0.addingProduct(x0, row.loadUnaligned(as: Float8.self))
      a1 = a1.addingProduct(x0, row.loadUnaligned(fromByteOffset: 32, as: Float8.self))
      p += 1
      row += stride
    }
    finish((a0 + b0) + (c0 + d0), 0)
    finish((a1 + b1) + (c1 + d1), 32)
  default:
    var a0 = Float8()
    var b0 = Float8()
    var c0 = Float8()
    var d0 = Float8()
    while p + 4 <= k {
      a0 = a0.addingProduct(Float8(repeating: x[p]), row.loadUnaligned(as: Float8.self))
      b0 = b0.addingProduct(Float8(repeating: x[p + 1]), (row + stride).loadUnaligned(as: Float8.self))
      c0 = c0.addingProduct(Float8(repeating: x[p + 2]), (row + 2 &* stride).loadUnaligned(as: Float8.self))
      d0 = d0.addingProduct(Float8(repeating: x[p + 3]), (row + 3 &* stride).loadUnaligned(as: Float8.self))
      p += 4
      row += 4 &* stride
    }
    while p < k {
      a0 = a0.addingProduct(Float8(repeating: x[p]), row.loadUnaligned(as: Float8.self))
      p += 1
      row += stride
    }
    finish((a0 + b0) + (c0 + d0), 0)
  }
}

/// y[0..<64] = x[0..<k] * (four packed 16-column panels, `panelStride` floats apart), 8 accumulators.
@inline(__always)
func rowTimesPackedPanels4(
  _ x: UnsafePointer<Float>, _ k: Int, _ panels: UnsafePointer<Float>, _ panelStride: Int,
  _ y: UnsafeMutablePointer<Float>
) {
  var a0 = Float8()
  var a1 = Float8()
  var a2 = Float8()
  var a3 = Float8()
  var a4 = Float8()
  var a5 = Float8()
  var a6 = Float8()
  var a7 = Float8()
  var p0 = UnsafeRawPointer(panels)
  let s = panelStride &* 4
  for p in 0..<k {
    let xv = Float8(repeating: x[p])
    a0 = a0.addingProduct(xv, p0.loadUnaligned(as: Float8.self))
    a1 = a1.addingProduct(xv, p0.loadUnaligned(fromByteOffset: 32, as: Float8.self))
    a2 = a2.addingProduct(xv, p0.loadUnaligned(fromByteOffset: s, as: Float8.self))
    a3 = a3.addingProduct(xv, p0.loadUnaligned(fromByteOffset: s + 32, as: Float8.self))
    a4 = a4.addingProduct(xv, p0.loadUnaligned(fromByteOffset: 2 * s, as: Float8.self))
    a5 = a5.addingProduct(xv, p0.loadUnaligned(fromByteOffset: 2 * s + 32, as: Float8.self))
    a6 = a6.addingProduct(xv, p0.loadUnaligned(fromByteOffset: 3 * s, as: Float8.self))
    a7 = a7.addingProduct(xv, p0.loadUnaligned(fromByteOffset: 3 * s + 32, as: Float8.self))
    p0 += 64
  }
  let ry = UnsafeMutableRawPointer(y)
  ry.storeBytes(of: a0, toByteOffset: 0, as: Float8.self)
  ry.storeBytes(of: a1, toByteOffset: 32, as: Float8.self)
  ry.storeBytes(of: a2, toByteOffset: 64, as: Float8.self)
  ry.storeBytes(of: a3, toByteOffset: 96, as: Float8.self)
  ry.storeBytes(of: a4, toByteOffset: 128, as: Float8.self)
  ry.storeBytes(of: a5, toByteOffset: 160, as: Float8.self)
  ry.storeBytes(of: a6, toByteOffset: 192, as: Float8.self)
  ry.storeBytes(of: a7, toByteOffset: 224, as: Float8.self)
}

/// y += x[0] * b[0, :] + x[1] * b[1, :] + x[2] * b[2, :] + x[3] * b[3, :] (rows of b `ldb` apart).
@inline(__always)
func axpy4(
  _ x: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ ldb: Int, _ y: UnsafeMutablePointer<Float>, _ n: Int
) {
  let x0 = Float8(repeating: x[0])
  let x1 = Float8(repeating: x[1])
  let x2 = Float8(repeating: x[2])
  let x3 = Float8(repeating: x[3])
  let r0 = UnsafeRawPointer(b)
  let r1 = UnsafeRawPointer(b + ldb)
  let r2 = UnsafeRawPointer(b + 2 * ldb)
  let r3 = UnsafeRawPointer(b + 3 * ldb)
  let ry = UnsafeMutableRawPointer(y)
  var j = 0
  while j + 8 <= n {
    let o = j * 4
    var v = ry.loadUnaligned(fromByteOffset: o, as: Float8.self)
    v = v.addingProduct(x0, r0.loadUnaligned(fromByteOffset: o, as: Float8.self))
    v = v.addingProduct(x1, r1.loadUnaligned(fromByteOffset: o, as: Float8.self))
    v = v.addingProduct(x2, r2.loadUnaligned(fromByteOffset: o, as: Float8.self))
    v = v.addingProduct(x3, r3.loadUnaligned(fromByteOffset: o, as: Float8.self))
    ry.storeBytes(of: v, toByteOffset: o, as: Float8.self)
    j += 8
  }
  while j < n {
    y[j] += x[0] * b[j] + x[1] * b[ldb + j] + x[2] * b[2 * ldb + j] + x[3] * b[3 * ldb + j]
    j += 1
  }
}

@inline(__always)
func scale(_ y: UnsafeMutablePointer<Float>, _ n: Int, _ factor: Float) {
  let ry = UnsafeMutableRawPointer(y)
  var i = 0
  while i + 8 <= n {
    let v = ry.loadUnaligned(fromByteOffset: i * 4, as: Float8.self) * factor
    ry.storeBytes(of: v, toByteOffset: i * 4, as: Float8.self)
    i += 8
  }
  while i < n {
    y[i] *= factor
    i += 1
  }
}

// MARK: - Blocked implementation

/// One pooled GEMM: part `p` computes the p-th block of columns (or rows) of C.
struct GemmSplit {
  let problem: GemmProblem
  let m: Int
  let n: Int
  let byColumns: Bool
  let unit: Int
  let panels: Int
  let parts: Int

  func run(part: Int) {
    let extent = byColumns ? n : m
    let first = panels * part / parts * unit
    let last = min(extent, panels * (part + 1) / parts * unit)
    if first >= last { return }
    if byColumns {
      problem.compute(rows: 0..<m, cols: first..<last)
    } else {
      problem.compute(rows: first..<last, cols: 0..<n)
    }
  }
}

/// The arguments of one SGEMM call; `compute` does the sub-block `rows x cols` of C serially.
struct GemmProblem {
  let transA: Bool
  let transB: Bool
  let k: Int
  let alpha: Float
  let a: UnsafePointer<Float>
  let lda: Int
  let b: UnsafePointer<Float>
  let ldb: Int
  let beta: Float
  let c: UnsafeMutablePointer<Float>
  let ldc: Int
  let epilogue: GemmEpilogue
  /// B already packed (``PackedGemmB``): panel `j / 16` holds columns `j..<j+16` as `k x 16` floats.
  let packedB: UnsafePointer<Float>?

  func compute(rows: Range<Int>, cols: Range<Int>) {
    if k == 0 || alpha == 0 {
      // As in BLAS, alpha == 0 does not read A or B (so NaNs there do not propagate).
      scaleAndFinish(rows: rows, cols: cols)
      return
    }
    let scratch = GemmScratch.current()
    if rows.count == 1 {
      // Batch-1 inference: a vector-matrix product; packing and 6-row tiles would waste 5/6 of the work.
      if let packedB {
        computeSingleRowPacked(rows.lowerBound, cols: cols, panels: packedB, scratch: scratch)
      } else {
        computeSingleRow(rows.lowerBound, cols: cols, scratch: scratch)
      }
      return
    }
    let mr = GemmBlocking.mr
    let nr = GemmBlocking.nr
    let finish = epilogue.isIdentity ? nil : epilogue
    // With few rows, packing B costs as much as the multiply (it is read once per 6-row tile only a few
    // times); row-major B already holds 16 contiguous columns per k, so the kernel can read it in place.
    let directB = packedB == nil && !transB && rows.count <= GemmBlocking.directBMaxRows
    // A packed B is contiguous along k whatever the chunk, so with few rows the whole k (up to 1024) goes in
    // one chunk: C is loaded and stored once instead of once per chunk, and A is packed in one pass.
    let kcMax =
      packedB != nil && (rows.count + GemmBlocking.mr) * k <= GemmBlocking.mc * GemmBlocking.kc && k <= 1024
      ? k : GemmBlocking.kc
    var jc = cols.lowerBound
    while jc < cols.upperBound {
      let nc = min(GemmBlocking.nc, cols.upperBound - jc)
      var pc = 0
      while pc < k {
        let kc = min(kcMax, k - pc)
        if !directB && packedB == nil { packB(pc: pc, kc: kc, jc: jc, nc: nc, into: scratch.packedB) }
        let betaHere = pc == 0 ? beta : 1
        let epilogueHere = pc + kc == k ? finish : nil
        var ic = rows.lowerBound
        while ic < rows.upperBound {
          let mc = min(GemmBlocking.mc, rows.upperBound - ic)
          packA(ic: ic, mc: mc, pc: pc, kc: kc, into: scratch.packedA)
          var jr = 0
          while jr < nc {
            let nrHere = min(nr, nc - jr)
            let bPanel: UnsafePointer<Float>
            let bStride: Int
            if let packedB {
              bPanel = packedB + ((jc + jr) / nr) * k * nr + pc * nr
              bStride = nr
            } else if !directB {
              bPanel = UnsafePointer(scratch.packedB + jr * kc)
              bStride = nr
            } else if nrHere == nr {
              bPanel = b + pc * ldb + jc + jr
              bStride = ldb
            } else {
              // The right-edge panel is packed (zero-padded) so the kernel never reads past B.
              packB(pc: pc, kc: kc, jc: jc + jr, nc: nrHere, into: scratch.packedB)
              bPanel = UnsafePointer(scratch.packedB)
              bStride = nr
            }
            var ir = 0
            while ir < mc {
              // 6-row tiles, except that 8 or 4 remaining rows run as 4-row tiles (32 rows =
              // 4 x 6 + 2 x 4: no edge tile computing 6 rows for 2).
              let mrHere = GemmBlocking.tileRows(mc - ir)
              let aPanel = UnsafePointer(scratch.packedA + ir * kc)
              let row = ic + ir
              let col = jc + jr
              let cTile = c + row * ldc + col
              if mrHere == 4 {
                // A 4-row tile's A panel holds 4 floats per k: only the 4-row kernel reads it.
                if nrHere == nr {
                  microKernel4x16(
                    kc: kc, a: aPanel, b: bPanel, bStride: bStride, c: cTile, ldc: ldc,
                    beta: betaHere)
                } else {
                  microKernel4x16(
                    kc: kc, a: aPanel, b: bPanel, bStride: bStride, c: scratch.tile, ldc: nr,
                    beta: 0)
                  storeEdgeTile(scratch.tile, into: cTile, rows: 4, cols: nrHere, beta: betaHere)
                }
              } else if mrHere == mr && nrHere == nr {
                microKernel6x16(
                  kc: kc, a: aPanel, b: bPanel, bStride: bStride, c: cTile, ldc: ldc, beta: betaHere)
              } else {
                microKernel6x16(
                  kc: kc, a: aPanel, b: bPanel, bStride: bStride, c: scratch.tile, ldc: nr, beta: 0)
                storeEdgeTile(scratch.tile, into: cTile, rows: mrHere, cols: nrHere, beta: betaHere)
              }
              if let epilogueHere {
                applyEpilogue(
                  epilogueHere, cTile, ldc: ldc, rows: mrHere, cols: nrHere, row: row, col: col)
              }
              ir += mrHere
            }
            jr += nr
          }
          ic += mc
        }
        pc += kc
      }
      jc += nc
    }
  }

  /// One row of C: `c[row, cols] = alpha * x * op(B)[:, cols] + beta * c[row, cols]`, x = op(A)[row, :].
  private func computeSingleRow(_ row: Int, cols: Range<Int>, scratch: GemmScratch) {
    let count = cols.count
    let y = c + row * ldc + cols.lowerBound
    var pc = 0
    while pc < k {
      let kc = min(GemmBlocking.kc, k - pc)
      // x chunk, contiguous and pre-multiplied by alpha (read in place when it already is).
      let x: UnsafePointer<Float>
      if transA {
        let copy = scratch.packedA
        for p in 0..<kc { copy[p] = alpha * a[(pc + p) * lda + row] }
        x = UnsafePointer(copy)
      } else if alpha == 1 {
        x = a + row * lda + pc
      } else {
        let copy = scratch.packedA
        let src = a + row * lda + pc
        for p in 0..<kc { copy[p] = alpha * src[p] }
        x = UnsafePointer(copy)
      }
      let first = pc == 0
      if !transB {
        let base = b + pc * ldb + cols.lowerBound
        if count <= 1024 {
          // Column blocks of 64 held in 8 registers across the k chunk: y is read and written once
          // per chunk. Best while B's rows are short (B mostly cache-resident).
          let initScale: Float = first ? beta : 1
          var j = 0
          while j + 64 <= count {
            rowTimesPanel64(x, kc, base + j, ldb, y + j, initScale)
            j += 64
          }
          if j + 32 <= count {
            rowTimesNarrowPanel(x, kc, base + j, ldb, y + j, initScale, vectors: 4)
            j += 32
          }
          if j + 16 <= count {
            rowTimesNarrowPanel(x, kc, base + j, ldb, y + j, initScale, vectors: 2)
            j += 16
          }
          if j + 8 <= count {
            rowTimesNarrowPanel(x, kc, base + j, ldb, y + j, initScale, vectors: 1)
            j += 8
          }
          while j < count {
            var sum: Float = 0
            for p in 0..<kc { sum += x[p] * base[p * ldb + j] }
            y[j] = initScale == 0 ? sum : sum + initScale * y[j]
            j += 1
          }
        } else {
          // Wide B streams from memory: whole rows, four at a time, are what the prefetchers follow.
          if first {
            if beta == 0 {
              y.update(repeating: 0, count: count)
            } else if beta != 1 {
              scale(y, count, beta)
            }
          }
          var p = 0
          while p + 4 <= kc {
            axpy4(x + p, base + p * ldb, ldb, y, count)
            p += 4
          }
          while p < kc {
            axpy(x[p], base + p * ldb, y, count)
            p += 1
          }
        }
      } else {
        for j in 0..<count {
          let dot = dotProduct(x, b + (cols.lowerBound + j) * ldb + pc, kc)
          y[j] = first ? (beta == 0 ? dot : dot + beta * y[j]) : dot + y[j]
        }
      }
      pc += kc
    }
    if !epilogue.isIdentity {
      applyEpilogue(epilogue, y, ldc: ldc, rows: 1, cols: count, row: row, col: cols.lowerBound)
    }
  }

  /// One row of C against a packed B (alpha 1, beta 0): four panels (64 columns) at a time straight from the
  /// packed layout; a partial last group goes through the scratch tile so nothing past column n is written.
  private func computeSingleRowPacked(
    _ row: Int, cols: Range<Int>, panels: UnsafePointer<Float>, scratch: GemmScratch
  ) {
    let nr = GemmBlocking.nr
    let x = a + row * lda
    let y = c + row * ldc
    let panelStride = k * nr
    var j = cols.lowerBound
    while j < cols.upperBound {
      let width = min(4 * nr, cols.upperBound - j)
      let first = panels + (j / nr) * panelStride
      if width == 4 * nr {
        rowTimesPackedPanels4(x, k, first, panelStride, y + j)
      } else {
        // scratch.tile holds MR x NR = 96 floats: room for four partial panels' 64 columns.
        for q in 0..<((width + nr - 1) / nr) {
          rowTimesNarrowPanel(x, k, first + q * panelStride, nr, scratch.tile + q * nr, 0, vectors: 2)
        }
        (y + j).update(from: scratch.tile, count: width)
      }
      j += 4 * nr
    }
    if !epilogue.isIdentity {
      applyEpilogue(epilogue, y + cols.lowerBound, ldc: ldc, rows: 1, cols: cols.count, row: row, col: cols.lowerBound)
    }
  }

  /// k == 0: C = beta * C (+ epilogue).
  private func scaleAndFinish(rows: Range<Int>, cols: Range<Int>) {
    for i in rows {
      let rowPtr = c + i * ldc
      for j in cols {
        var v: Float = beta == 0 ? 0 : beta * rowPtr[j]
        switch epilogue.bias {
        case .none: break
        case .perColumn(let bias): v += bias[j]
        case .perRow(let bias): v += bias[i]
        }
        rowPtr[j] = v
      }
      if epilogue.activation != .identity {
        applyActivation(epilogue.activation, rowPtr + cols.lowerBound, cols.count)
      }
    }
  }

  /// Packs op(A)[ic..<ic+mc, pc..<pc+kc] (times alpha) into one panel per row tile (``GemmBlocking/tileRows``):
  /// a tile of `h` rows is `panel[p * h + i]` (4 or 6 rows; a shorter last tile is zero-padded to 6), and the
  /// tile starting at row `ir` starts at `dst + ir * kc`.
  @inline(__always)
  private func packA(ic: Int, mc: Int, pc: Int, kc: Int, into dst: UnsafeMutablePointer<Float>) {
    let mr = GemmBlocking.mr
    var d = dst
    var ir = 0
    while ir < mc {
      let rows = GemmBlocking.tileRows(mc - ir)
      if !transA {
        // Row-major A: each of the tile's rows is contiguous along p.
        let base = a + (ic + ir) * lda + pc
        if rows == mr {
          let r0 = base
          let r1 = base + lda
          let r2 = base + 2 * lda
          let r3 = base + 3 * lda
          let r4 = base + 4 * lda
          let r5 = base + 5 * lda
          for p in 0..<kc {
            d[0] = alpha * r0[p]
            d[1] = alpha * r1[p]
            d[2] = alpha * r2[p]
            d[3] = alpha * r3[p]
            d[4] = alpha * r4[p]
            d[5] = alpha * r5[p]
            d += mr
          }
        } else if rows == 4 {
          let r0 = base
          let r1 = base + lda
          let r2 = base + 2 * lda
          let r3 = base + 3 * lda
          for p in 0..<kc {
            d[0] = alpha * r0[p]
            d[1] = alpha * r1[p]
            d[2] = alpha * r2[p]
            d[3] = alpha * r3[p]
            d += 4
          }
        } else {
          for p in 0..<kc {
            for i in 0..<mr {
              d[i] = i < rows ? alpha * base[i * lda + p] : 0
            }
            d += mr
          }
        }
      } else {
        // Stored k x m: row p of storage holds op(A)[*, p] contiguously.
        let base = a + pc * lda + ic + ir
        if rows == mr || rows == 4 {
          for p in 0..<kc {
            let src = base + p * lda
            for i in 0..<rows { d[i] = alpha * src[i] }
            d += rows
          }
        } else {
          for p in 0..<kc {
            let src = base + p * lda
            for i in 0..<mr {
              d[i] = i < rows ? alpha * src[i] : 0
            }
            d += mr
          }
        }
      }
      ir += rows
    }
  }

  /// Packs op(B)[pc..<pc+kc, jc..<jc+nc] into NR-column panels: panel[p * NR + j].
  @inline(__always)
  private func packB(pc: Int, kc: Int, jc: Int, nc: Int, into dst: UnsafeMutablePointer<Float>) {
    let nr = GemmBlocking.nr
    var jr = 0
    while jr < nc {
      let cols = min(nr, nc - jr)
      let d = dst + jr * kc
      if !transB {
        let base = b + pc * ldb + jc + jr
        if cols == nr {
          let raw = UnsafeMutableRawPointer(d)
          for p in 0..<kc {
            let src = UnsafeRawPointer(base + p * ldb)
            raw.storeBytes(of: src.loadUnaligned(as: Float8.self), toByteOffset: p * 64, as: Float8.self)
            raw.storeBytes(
              of: src.loadUnaligned(fromByteOffset: 32, as: Float8.self), toByteOffset: p * 64 + 32,
              as: Float8.self)
          }
        } else {
          for p in 0..<kc {
            let src = base + p * ldb
            for j in 0..<nr {
              d[p * nr + j] = j < cols ? src[j] : 0
            }
          }
        }
      } else {
        // Stored n x k: row j of storage holds op(B)[*, j] contiguously.
        let base = b + (jc + jr) * ldb + pc
        for j in 0..<nr {
          if j < cols {
            let src = base + j * ldb
            for p in 0..<kc { d[p * nr + j] = src[p] }
          } else {
            for p in 0..<kc { d[p * nr + j] = 0 }
          }
        }
      }
      jr += nr
    }
  }

  /// Copies the valid `rows x cols` corner of a full micro-tile into C, with beta.
  private func storeEdgeTile(
    _ tile: UnsafeMutablePointer<Float>, into cTile: UnsafeMutablePointer<Float>,
    rows: Int, cols: Int, beta: Float
  ) {
    let nr = GemmBlocking.nr
    for i in 0..<rows {
      let t = tile + i * nr
      let dst = cTile + i * ldc
      if beta == 0 {
        dst.update(from: t, count: cols)
      } else {
        for j in 0..<cols { dst[j] = t[j] + beta * dst[j] }
      }
    }
  }
}

/// The 6 x 16 register-blocked micro-kernel: 12 ymm accumulators, 2 B loads and 6 broadcasts per k step.
///
/// `a` is an MR-panel (6 floats per k); `b` holds 16 floats per k, `bStride` floats apart (16 for a packed
/// panel, `ldb` when reading row-major B in place). The full tile is
/// written to `c` (row stride `ldc`) as `acc + beta * c`; the caller applies any epilogue afterwards (the tile
/// is then in L1).
@inline(__always)
func microKernel6x16(
  kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, bStride: Int,
  c: UnsafeMutablePointer<Float>, ldc: Int, beta: Float
) {
  // Start fetching the C tile now; it is needed only after the k loop, so its miss latency is hidden.
  for r in 0..<6 {
    prefetch(c + r * ldc)
    prefetch(c + r * ldc + 15)
  }
  var c00 = Float8()
  var c01 = Float8()
  var c10 = Float8()
  var c11 = Float8()
  var c20 = Float8()
  var c21 = Float8()
  var c30 = Float8()
  var c31 = Float8()
  var c40 = Float8()
  var c41 = Float8()
  var c50 = Float8()
  var c51 = Float8()
  var ap = a
  var bp = UnsafeRawPointer(b)
  for _ in 0..<kc {
    let b0 = bp.loadUnaligned(as: Float8.self)
    let b1 = bp.loadUnaligned(fromByteOffset: 32, as: Float8.self)
    var av = Float8(repeating: ap[0])
    c00 = c00.addingProduct(av, b0)
    c01 = c01.addingProduct(av, b1)
    av = Float8(repeating: ap[1])
    c10 = c10.addingProduct(av, b0)
    c11 = c11.addingProduct(av, b1)
    av = Float8(repeating: ap[2])
    c20 = c20.addingProduct(av, b0)
    c21 = c21.addingProduct(av, b1)
    av = Float8(repeating: ap[3])
    c30 = c30.addingProduct(av, b0)
    c31 = c31.addingProduct(av, b1)
    av = Float8(repeating: ap[4])
    c40 = c40.addingProduct(av, b0)
    c41 = c41.addingProduct(av, b1)
    av = Float8(repeating: ap[5])
    c50 = c50.addingProduct(av, b0)
    c51 = c51.addingProduct(av, b1)
    ap += 6
    bp += bStride &* 4
  }
  storeRow(c00, c01, c, beta: beta)
  storeRow(c10, c11, c + ldc, beta: beta)
  storeRow(c20, c21, c + 2 * ldc, beta: beta)
  storeRow(c30, c31, c + 3 * ldc, beta: beta)
  storeRow(c40, c41, c + 4 * ldc, beta: beta)
  storeRow(c50, c51, c + 5 * ldc, beta: beta)
}

/// The 4 x 16 micro-kernel (8 accumulators) for 4-row tiles; `a` is a 4-row panel (4 floats per k).
@inline(__always)
func microKernel4x16(
  kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, bStride: Int,
  c: UnsafeMutablePointer<Float>, ldc: Int, beta: Float
) {
  for r in 0..<4 {
    prefetch(c + r * ldc)
    prefetch(c + r * ldc + 15)
  }
  var c00 = Float8()
  var c01 = Float8()
  var c10 = Float8()
  var c11 = Float8()
  var c20 = Float8()
  var c21 = Float8()
  var c30 = Float8()
  var c31 = Float8()
  var ap = a
  var bp = UnsafeRawPointer(b)
  for _ in 0..<kc {
    let b0 = bp.loadUnaligned(as: Float8.self)
    let b1 = bp.loadUnaligned(fromByteOffset: 32, as: Float8.self)
    var av = Float8(repeating: ap[0])
    c00 = c00.addingProduct(av, b0)
    c01 = c01.addingProduct(av, b1)
    av = Float8(repeating: ap[1])
    c10 = c10.addingProduct(av, b0)
    c11 = c11.addingProduct(av, b1)
    av = Float8(repeating: ap[2])
    c20 = c20.addingProduct(av, b0)
    c21 = c21.addingProduct(av, b1)
    av = Float8(repeating: ap[3])
    c30 = c30.addingProduct(av, b0)
    c31 = c31.addingProduct(av, b1)
    ap += 4
    bp += bStride &* 4
  }
  storeRow(c00, c01, c, beta: beta)
  storeRow(c10, c11, c + ldc, beta: beta)
  storeRow(c20, c21, c + 2 * ldc, beta: beta)
  storeRow(c30, c31, c + 3 * ldc, beta: beta)
}

@inline(__always)
func storeRow(_ v0: Float8, _ v1: Float8, _ dst: UnsafeMutablePointer<Float>, beta: Float) {
  var r0 = v0
  var r1 = v1
  let raw = UnsafeMutableRawPointer(dst)
  if beta != 0 {
    r0 = r0.addingProduct(Float8(repeating: beta), raw.loadUnaligned(as: Float8.self))
    r1 = r1.addingProduct(Float8(repeating: beta), raw.loadUnaligned(fromByteOffset: 32, as: Float8.self))
  }
  raw.storeBytes(of: r0, as: Float8.self)
  raw.storeBytes(of: r1, toByteOffset: 32, as: Float8.self)
}

/// Adds the bias and applies the activation to a `rows x cols` block of C that starts at (row, col).
/// Kept out of line: it runs once per tile on the last k block, and inlining it would crowd the kernel.
@inline(never)
func applyEpilogue(
  _ epilogue: GemmEpilogue, _ c: UnsafeMutablePointer<Float>, ldc: Int,
  rows: Int, cols: Int, row: Int, col: Int
) {
  for i in 0..<rows {
    let dst = c + i * ldc
    switch epilogue.bias {
    case .none: break
    case .perColumn(let bias): addVector(dst, bias + col, cols)
    case .perRow(let bias):
      let v = bias[row + i]
      for j in 0..<cols { dst[j] += v }
    }
    applyActivation(epilogue.activation, dst, cols)
  }
}

@inline(__always)
func addVector(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
  let ry = UnsafeMutableRawPointer(y)
  let rx = UnsafeRawPointer(x)
  var j = 0
  while j + 8 <= n {
    ry.storeBytes(
      of: ry.loadUnaligned(fromByteOffset: j * 4, as: Float8.self)
        + rx.loadUnaligned(fromByteOffset: j * 4, as: Float8.self),
      toByteOffset: j * 4, as: Float8.self)
    j += 8
  }
  while j < n {
    y[j] += x[j]
    j += 1
  }
}

// LLVM's prefetch intrinsic, reached through its symbol name: Swift has no prefetch API, and without it the
// C tile's cache misses cost ~20% at n = 2048. Arguments: address, rw (0 read / 1 write), locality (3 = keep in
// all levels), cache type (1 = data). Lowers to `prefetcht0` on x86-64 and `prfm` on arm64.
//
// Sanitizer builds (TSan rewrites calls into `invoke`s, which LLVM rejects for intrinsics) must not reference
// it: debug builds never do, and a release sanitizer build passes `-Xswiftc -DPALISADE_NO_LLVM_INTRINSICS`.
#if !DEBUG && !PALISADE_NO_LLVM_INTRINSICS
  @_silgen_name("llvm.prefetch.p0")
  func llvmPrefetch(_ address: UnsafeRawPointer, _ rw: Int32, _ locality: Int32, _ cacheType: Int32)
#else
  @inline(__always)
  func llvmPrefetch(_ address: UnsafeRawPointer, _ rw: Int32, _ locality: Int32, _ cacheType: Int32) {}
#endif

@inline(__always)
func prefetch(_ address: UnsafeMutablePointer<Float>) {
  llvmPrefetch(UnsafeRawPointer(address), 1, 3, 1)
}

/// Applies `activation` in place to `count` floats.
public func applyActivation(_ activation: Activation, _ data: UnsafeMutablePointer<Float>, _ count: Int) {
  if activation == .identity { return }
  let raw = UnsafeMutableRawPointer(data)
  var i = 0
  while i + 8 <= count {
    raw.storeBytes(
      of: activation.apply(raw.loadUnaligned(fromByteOffset: i * 4, as: Float8.self)),
      toByteOffset: i * 4, as: Float8.self)
    i += 8
  }
  if i < count {
    var tail = Float8()
    for j in 0..<(count - i) { tail[j] = data[i + j] }
    tail = activation.apply(tail)
    for j in 0..<(count - i) { data[i + j] = tail[j] }
  }
}
