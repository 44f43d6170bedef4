/// Geometry of 2-D max / average pooling over NCHW (ONNX `MaxPool` / `AveragePool` semantics).
public struct Pool2DParams: Sendable, Equatable, Hashable {
  public var batch: Int
  public var channels: Int
  public var inHeight: Int
  public var inWidth: Int
  public var kernelHeight: Int
  public var kernelWidth: Int
  public var strideH: Int
  public var strideW: Int
  public var padTop: Int
  public var padLeft: Int
  public var padBottom: Int
  public var padRight: Int
  public var dilationH: Int
  public var dilationW: Int
  /// ONNX `ceil_mode`: round the output size up (a last window must still start inside the input or the
  /// leading padding, as in PyTorch).
  public var ceilMode: Bool
  /// Output height and width; computed and checked by ``validated()``.
  public private(set) var outHeight = 0
  public private(set) var outWidth = 0

  public init(
    batch: Int, channels: Int, inHeight: Int, inWidth: Int,
    kernelHeight: Int, kernelWidth: Int, strideH: Int = 1, strideW: Int = 1,
    padTop: Int = 0, padLeft: Int = 0, padBottom: Int = 0, padRight: Int = 0,
    dilationH: Int = 1, dilationW: Int = 1, ceilMode: Bool = false
  ) {
    self.batch = batch
    self.channels = channels
    self.inHeight = inHeight
    self.inWidth = inWidth
    self.kernelHeight = kernelHeight
    self.kernelWidth = kernelWidth
    self.strideH = strideH
    self.strideW = strideW
    self.padTop = padTop
    self.padLeft = padLeft
    self.padBottom = padBottom
    self.padRight = padRight
    self.dilationH = dilationH
    self.dilationW = dilationW
    self.ceilMode = ceilMode
  }

  /// Checks every parameter and fills in the output size.
  public func validated() throws(KernelError) -> Pool2DParams {
    guard [batch, channels, inHeight, inWidth].allSatisfy({ $0 >= 0 }) else {
      throw .invalidParameter("negative pool dimension")
    }
    guard kernelHeight >= 1, kernelWidth >= 1, strideH >= 1, strideW >= 1, dilationH >= 1, dilationW >= 1 else {
      throw .invalidParameter("pool kernel, stride and dilation must be >= 1")
    }
    guard [padTop, padLeft, padBottom, padRight].allSatisfy({ $0 >= 0 }) else {
      throw .invalidParameter("negative pool padding")
    }
    guard padTop < kernelHeight, padBottom < kernelHeight, padLeft < kernelWidth, padRight < kernelWidth else {
      throw .invalidParameter("pool padding must be smaller than the kernel")
    }
    var p = self
    p.outHeight = try poolOutputSize(inHeight, kernelHeight, strideH, dilationH, padTop, padBottom, ceilMode)
    p.outWidth = try poolOutputSize(inWidth, kernelWidth, strideW, dilationW, padLeft, padRight, ceilMode)
    _ = try elementCount([batch, channels, inHeight, inWidth])
    _ = try elementCount([batch, channels, p.outHeight, p.outWidth])
    return p
  }
}

func poolOutputSize(
  _ input: Int, _ kernel: Int, _ stride: Int, _ dilation: Int, _ padBegin: Int, _ padEnd: Int, _ ceilMode: Bool
) throws(KernelError) -> Int {
  // Every step checked: the parameters may come straight from a model file.
  guard input >= 0, kernel >= 1, stride >= 1, dilation >= 1, padBegin >= 0, padEnd >= 0 else {
    throw .invalidParameter("pool geometry")
  }
  let (extent, o1) = dilation.multipliedReportingOverflow(by: kernel - 1)
  let (pads, o2) = padBegin.addingReportingOverflow(padEnd)
  let (padded, o3) = input.addingReportingOverflow(pads)
  guard !o1, !o2, !o3 else { throw .overflow("pool geometry") }
  let span = padded - extent - 1
  guard span >= 0 else { throw .invalidParameter("pool kernel larger than padded input") }
  // ceil(span / stride) without forming span + stride - 1.
  var out = span / stride + (ceilMode && span % stride != 0 ? 1 : 0) + 1
  if ceilMode {
    // The last window must start inside the input or its leading padding (an overflowing start does not).
    let (start, o4) = (out - 1).multipliedReportingOverflow(by: stride)
    let (limit, o5) = input.addingReportingOverflow(padBegin)
    if !o5, o4 || start >= limit { out -= 1 }
  }
  return out
}

/// Max or average pooling (ONNX `MaxPool` / `AveragePool`), the planes split over `pool`. Geometries whose windows
/// tile the input (``Pool2DParams/isTiled``, e.g. 2x2 / stride 2) run on direct vector loops; the rest on
/// ``maxPool2d(_:input:output:)`` and ``avgPool2d(_:input:output:countIncludePad:)``. `params` from
/// ``Pool2DParams/validated()``.
public func pool2d(
  _ params: Pool2DParams, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, max isMax: Bool,
  countIncludePad: Bool = false, pool: WorkerPool? = nil
) {
  guard params.isTiled else {
    if isMax {
      maxPool2d(params, input: input, output: output)
    } else {
      avgPool2d(params, input: input, output: output, countIncludePad: countIncludePad)
    }
    return
  }
  let planes = params.batch * params.channels
  parallelRanges(planes, work: planes * params.inHeight * params.inWidth, pool: pool) { range in
    tiledPool(params, input, output, max: isMax, planes: range)
  }
}

extension Pool2DParams {
  /// Whether the windows tile the input without padding or dilation (every window fully inside).
  var isTiled: Bool {
    padTop == 0 && padLeft == 0 && padBottom == 0 && padRight == 0 && dilationH == 1 && dilationW == 1
      && outHeight > 0 && outWidth > 0
      && (outHeight - 1) * strideH + kernelHeight <= inHeight
      && (outWidth - 1) * strideW + kernelWidth <= inWidth
  }
}

/// Max or average pooling for ``Pool2DParams/isTiled`` geometries, over planes `planeRange`.
func tiledPool(
  _ p: Pool2DParams, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, max isMax: Bool,
  planes planeRange: Range<Int>
) {
  let planes = p.batch * p.channels
  let (h, w, oh, ow) = (p.inHeight, p.inWidth, p.outHeight, p.outWidth)
  let (kh, kw, sh, sw) = (p.kernelHeight, p.kernelWidth, p.strideH, p.strideW)
  let inv = 1 / Float(kh * kw)
  if kh == 2 && kw == 2 && sh == 2 && sw == 2 {
    // 2x2 / stride 2: 16 input columns of two rows -> 8 outputs per step (deinterleave with even/odd halves).
    let half = SIMD8<Float>(repeating: 0.25)
    let end = UnsafeRawPointer(x + planes * h * w)
    @inline(__always) func eight(_ r0: UnsafeRawPointer, _ r1: UnsafeRawPointer, _ j: Int) -> SIMD8<Float> {
      let a = r0.loadUnaligned(fromByteOffset: 2 * j * 4, as: SIMD16<Float>.self)
      let b = r1.loadUnaligned(fromByteOffset: 2 * j * 4, as: SIMD16<Float>.self)
      if isMax {
        let m = a.replacing(with: b, where: b .> a)
        let (e, o) = (m.evenHalf, m.oddHalf)
        return e.replacing(with: o, where: o .> e)
      }
      let s = a + b
      return (s.evenHalf + s.oddHalf) * half
    }
    for plane in planeRange {
      let src = UnsafeRawPointer(x + plane * h * w)
      let dst = y + plane * oh * ow
      for i in 0..<oh {
        let r0 = src + (2 * i) * w * 4
        let r1 = src + (2 * i + 1) * w * 4
        var j = 0
        while j + 8 <= ow {
          UnsafeMutableRawPointer(dst + i * ow + j).storeBytes(of: eight(r0, r1, j), as: SIMD8<Float>.self)
          j += 8
        }
        if j < ow && ow >= 8 {
          // The last outputs as one more (overlapping) vector: outputs are recomputed, not accumulated.
          UnsafeMutableRawPointer(dst + i * ow + ow - 8).storeBytes(of: eight(r0, r1, ow - 8), as: SIMD8<Float>.self)
          j = ow
        } else if j < ow && r1 + (2 * j + 16) * 4 <= end {
          // Narrow rows (e.g. 14 -> 7): 16 floats from the row run into the next one (still inside the input);
          // only the row's own lanes are stored.
          let out = eight(r0, r1, j)
          for l in 0..<(ow - j) { dst[i * ow + j + l] = out[l] }
          j = ow
        }
        while j < ow {
          let v0 = r0.load(fromByteOffset: 2 * j * 4, as: Float.self)
          let v1 = r0.load(fromByteOffset: (2 * j + 1) * 4, as: Float.self)
          let v2 = r1.load(fromByteOffset: 2 * j * 4, as: Float.self)
          let v3 = r1.load(fromByteOffset: (2 * j + 1) * 4, as: Float.self)
          if isMax {
            var m = v0
            if v1 > m || v1 != v1 { m = v1 }
            if v2 > m || v2 != v2 { m = v2 }
            if v3 > m || v3 != v3 { m = v3 }
            dst[i * ow + j] = m
          } else {
            // Summed in the vector path's order, so a result does not depend on which path its row took (that
            // depends on where the plane lies in the batch).
            dst[i * ow + j] = ((v0 + v2) + (v1 + v3)) * 0.25
          }
          j += 1
        }
      }
    }
    return
  }
  for plane in planeRange {
    let src = x + plane * h * w
    let dst = y + plane * oh * ow
    for i in 0..<oh {
      for j in 0..<ow {
        let base = src + i * sh * w + j * sw
        if isMax {
          var m = -Float.infinity
          for a in 0..<kh {
            for b in 0..<kw {
              let v = base[a * w + b]
              if v > m || v != v { m = v }
            }
          }
          dst[i * ow + j] = m
        } else {
          var s: Float = 0
          for a in 0..<kh { for b in 0..<kw { s += base[a * w + b] } }
          dst[i * ow + j] = s * inv
        }
      }
    }
  }
}

/// Max pooling; padded positions are ignored (never win). `params` from ``Pool2DParams/validated()``.
public func maxPool2d(_ params: Pool2DParams, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) {
  reduceWindows(params, input, output) { x, count, _ in
    var m = -Float.infinity
    for i in 0..<count where x[i] > m { m = x[i] }
    return m
  }
}

/// Average pooling. With `countIncludePad`, the divisor counts padded positions inside the declared pads
/// (ONNX `count_include_pad = 1`); otherwise only input positions.
public func avgPool2d(
  _ params: Pool2DParams, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
  countIncludePad: Bool
) {
  reduceWindows(params, input, output) { x, count, paddedCount in
    var s: Float = 0
    for i in 0..<count { s += x[i] }
    let divisor = countIncludePad ? paddedCount : count
    return divisor > 0 ? s / Float(divisor) : 0
  }
}

/// Gathers each window's input values into a small stack buffer and reduces it with `reduce(values, count,
/// countWithPadding)`.
@inline(__always)
func reduceWindows(
  _ p: Pool2DParams, _ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>,
  _ reduce: (UnsafePointer<Float>, Int, Int) -> Float
) {
  let window = p.kernelHeight * p.kernelWidth
  withUnsafeTemporaryAllocation(of: Float.self, capacity: max(window, 1)) { buffer in
    let values = buffer.baseAddress.unsafelyUnwrapped
    let planes = p.batch * p.channels
    for plane in 0..<planes {
      let x = input + plane * p.inHeight * p.inWidth
      let y = output + plane * p.outHeight * p.outWidth
      for oh in 0..<p.outHeight {
        let y0 = oh * p.strideH - p.padTop
        for ow in 0..<p.outWidth {
          let x0 = ow * p.strideW - p.padLeft
          var count = 0
          var padded = 0
          for ki in 0..<p.kernelHeight {
            let iy = y0 + ki * p.dilationH
            // Positions beyond the declared end padding (possible in ceil mode) are not counted.
            let inPaddedRows = iy < p.inHeight + p.padBottom
            for kj in 0..<p.kernelWidth {
              let ix = x0 + kj * p.dilationW
              if inPaddedRows && ix < p.inWidth + p.padRight { padded += 1 }
              if iy >= 0, iy < p.inHeight, ix >= 0, ix < p.inWidth {
                values[count] = x[iy * p.inWidth + ix]
                count += 1
              }
            }
          }
          y[oh * p.outWidth + ow] = reduce(values, count, padded)
        }
      }
    }
  }
}

/// Global average pooling: `output[i] = mean(input[i * spatial ..< (i + 1) * spatial])` for `i < planes`
/// (planes = batch * channels, spatial = H * W).
public func globalAveragePool(
  _ input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, planes: Int, spatial: Int
) {
  precondition(planes >= 0 && spatial >= 0, "globalAveragePool: bad dimensions")
  let inv = spatial > 0 ? 1 / Float(spatial) : 0
  for i in 0..<planes {
    let x = input + i * spatial
    let rx = UnsafeRawPointer(x)
    var sv = Float8()
    var j = 0
    while j + 8 <= spatial {
      sv += rx.loadUnaligned(fromByteOffset: j * 4, as: Float8.self)
      j += 8
    }
    var s = sv.sum()
    while j < spatial {
      s += x[j]
      j += 1
    }
    output[i] = s * inv
  }
}
