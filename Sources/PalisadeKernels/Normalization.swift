#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Numerically stable softmax along one axis of a tensor viewed as `[outer, axisLength, inner]`
/// (row-wise softmax is `inner == 1`): `y = exp(x - max) / sum(exp(x - max))`.
///
/// `output` may equal `input`. A row whose entries are all `-inf` yields NaN, as in onnxruntime.
public func softmax(
  _ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>,
  outer: Int, axisLength: Int, inner: Int = 1
) {
  precondition(outer >= 0 && axisLength >= 0 && inner >= 1, "softmax: bad dimensions")
  if axisLength == 0 { return }
  if inner == 1 {
    for r in 0..<outer {
      softmaxRow(input + r * axisLength, output + r * axisLength, axisLength)
    }
    return
  }
  for r in 0..<outer {
    let x = input + r * axisLength * inner
    let y = output + r * axisLength * inner
    var j = 0
    let rx = UnsafeRawPointer(x)
    let ry = UnsafeMutableRawPointer(y)
    while j + 8 <= inner {
      var m = Float8(repeating: -.infinity)
      for a in 0..<axisLength {
        m = VMath.max(m, rx.loadUnaligned(fromByteOffset: (a * inner + j) * 4, as: Float8.self))
      }
      var s = Float8()
      for a in 0..<axisLength {
        let offset = (a * inner + j) * 4
        let e = VMath.exp(rx.loadUnaligned(fromByteOffset: offset, as: Float8.self) - m)
        ry.storeBytes(of: e, toByteOffset: offset, as: Float8.self)
        s += e
      }
      let inv = 1 / s
      for a in 0..<axisLength {
        let offset = (a * inner + j) * 4
        ry.storeBytes(
          of: ry.loadUnaligned(fromByteOffset: offset, as: Float8.self) * inv,
          toByteOffset: offset, as: Float8.self)
      }
      j += 8
    }
    while j < inner {
      var m = -Float.infinity
      for a in 0..<axisLength { m = Swift.max(m, x[a * inner + j]) }
      var s: Float = 0
      for a in 0..<axisLength {
        let e = expf(x[a * inner + j] - m)
        y[a * inner + j] = e
        s += e
      }
      let inv = 1 / s
      for a in 0..<axisLength { y[a * inner + j] *= inv }
      j += 1
    }
  }
}

@inline(__always)
func softmaxRow(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
  let rx = UnsafeRawPointer(x)
  let ry = UnsafeMutableRawPointer(y)
  var mv = Float8(repeating: -.infinity)
  var i = 0
  while i + 8 <= n {
    mv = VMath.max(mv, rx.loadUnaligned(fromByteOffset: i * 4, as: Float8.self))
    i += 8
  }
  var m = mv.max()
  while i < n {
    m = Swift.max(m, x[i])
    i += 1
  }
  let vm = Float8(repeating: m)
  var sv = Float8()
  i = 0
  while i + 8 <= n {
    let e = VMath.exp(rx.loadUnaligned(fromByteOffset: i * 4, as: Float8.self) - vm)
    ry.storeBytes(of: e, toByteOffset: i * 4, as: Float8.self)
    sv += e
    i += 8
  }
  if i < n {
    var tail = Float8(repeating: -.infinity)
    for j in 0..<(n - i) { tail[j] = x[i + j] }
    let e = VMath.exp(tail - vm)  // padding lanes give exp(-inf) = 0
    for j in 0..<(n - i) { y[i + j] = e[j] }
    sv += e
  }
  let inv = Float8(repeating: 1 / sv.sum())
  scaleVector(y, n, inv)
}

@inline(__always)
func scaleVector(_ y: UnsafeMutablePointer<Float>, _ n: Int, _ factor: Float8) {
  let ry = UnsafeMutableRawPointer(y)
  var i = 0
  while i + 8 <= n {
    ry.storeBytes(
      of: ry.loadUnaligned(fromByteOffset: i * 4, as: Float8.self) * factor, toByteOffset: i * 4,
      as: Float8.self)
    i += 8
  }
  while i < n {
    y[i] *= factor[0]
    i += 1
  }
}

/// Layer normalisation over the last axis of a `[rows, cols]` view:
/// `y = (x - mean) / sqrt(var + epsilon) * gamma + beta`, with the biased (population) variance.
///
/// `gamma` / `beta` have `cols` elements; `nil` means 1 / 0. `output` may equal `input`.
public func layerNorm(
  _ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>,
  rows: Int, cols: Int,
  gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
  epsilon: Float
) {
  precondition(rows >= 0 && cols >= 0, "layerNorm: bad dimensions")
  if cols == 0 { return }
  let invCols = 1 / Float(cols)
  for r in 0..<rows {
    let x = input + r * cols
    let y = output + r * cols
    let rx = UnsafeRawPointer(x)
    let ry = UnsafeMutableRawPointer(y)
    // Two passes (mean, then squared deviations) to avoid E[x^2] - E[x]^2 cancellation.
    var sv = Float8()
    var i = 0
    while i + 8 <= cols {
      sv += rx.loadUnaligned(fromByteOffset: i * 4, as: Float8.self)
      i += 8
    }
    var sum = sv.sum()
    while i < cols {
      sum += x[i]
      i += 1
    }
    let mean = sum * invCols
    let vmean = Float8(repeating: mean)
    var qv = Float8()
    i = 0
    while i + 8 <= cols {
      let d = rx.loadUnaligned(fromByteOffset: i * 4, as: Float8.self) - vmean
      qv = qv.addingProduct(d, d)
      i += 8
    }
    var sq = qv.sum()
    while i < cols {
      let d = x[i] - mean
      sq += d * d
      i += 1
    }
    let invStd = 1 / (sq * invCols + epsilon).squareRoot()
    let vinv = Float8(repeating: invStd)
    i = 0
    while i + 8 <= cols {
      var v = (rx.loadUnaligned(fromByteOffset: i * 4, as: Float8.self) - vmean) * vinv
      if let gamma { v *= UnsafeRawPointer(gamma).loadUnaligned(fromByteOffset: i * 4, as: Float8.self) }
      if let beta { v += UnsafeRawPointer(beta).loadUnaligned(fromByteOffset: i * 4, as: Float8.self) }
      ry.storeBytes(of: v, toByteOffset: i * 4, as: Float8.self)
      i += 8
    }
    while i < cols {
      var v = (x[i] - mean) * invStd
      if let gamma { v *= gamma[i] }
      if let beta { v += beta[i] }
      y[i] = v
      i += 1
    }
  }
}

/// A per-channel multiply-add `y = x * multipliers[c] + addends[c]` over `[batch, channels, spatial]`: an
/// inference-mode batch normalisation, standalone or fused after a convolution (``PreparedConv2D``). The
/// constants are copied once into storage this object owns and is immutable after, so kernels holding it read
/// them through a plain pointer for as long as they live, with no copy or allocation per call.
public final class ChannelAffine: Sendable {
  /// Number of channels.
  public let channels: Int
  /// `channels` multipliers then `channels` addends.
  let storage: FloatStorage

  /// `nil` when the two arrays differ in length.
  public init?(multipliers: [Float], addends: [Float]) {
    guard multipliers.count == addends.count else { return nil }
    channels = multipliers.count
    storage = FloatStorage(count: 2 * channels)
    for i in 0..<channels {
      storage.pointer[i] = multipliers[i]
      storage.pointer[channels + i] = addends[i]
    }
  }

  /// `channels` multipliers then `channels` addends.
  var factors: UnsafePointer<Float> { UnsafePointer(storage.pointer) }

  /// Applies the affine to `batch` images of `channels * spatial` floats, the planes split over `pool`. `x` and
  /// `y` may be the same buffer.
  public func apply(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, batch: Int, spatial: Int, pool: WorkerPool? = nil
  ) {
    let (f, c) = (factors, channels)
    parallelRanges(batch * c, work: batch * c * spatial, pool: pool) { range in
      channelAffine(x, y, mul: f, add: f + c, channels: c, spatial: spatial, planes: range)
    }
  }
}

/// y = x * mul[c] + add[c] over `[batch, channels, spatial]`, planes `planeRange`.
func channelAffine(
  _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, mul: UnsafePointer<Float>, add: UnsafePointer<Float>,
  channels: Int, spatial: Int, planes planeRange: Range<Int>
) {
  for plane in planeRange {
    let ch = plane % channels
    let (p, q) = (SIMD8<Float>(repeating: mul[ch]), SIMD8<Float>(repeating: add[ch]))
    let rx = UnsafeRawPointer(x + plane * spatial)
    let ry = UnsafeMutableRawPointer(y + plane * spatial)
    var j = 0
    while j + 8 <= spatial {
      let v = rx.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
      ry.storeBytes(of: q.addingProduct(v, p), toByteOffset: j * 4, as: SIMD8<Float>.self)
      j += 8
    }
    while j < spatial {
      y[plane * spatial + j] = x[plane * spatial + j] * mul[ch] + add[ch]
      j += 1
    }
  }
}

/// Floats allocated once (zeroed) and freed with the object: constants a kernel prepares at plan time.
final class FloatStorage: @unchecked Sendable {  // written only during its owner's init, read-only after
  let pointer: UnsafeMutablePointer<Float>
  let count: Int

  init(count: Int) {
    self.count = max(count, 0)
    pointer = .allocate(capacity: max(count, 1))
    pointer.initialize(repeating: 0, count: max(count, 1))
  }

  deinit { pointer.deallocate() }
}
