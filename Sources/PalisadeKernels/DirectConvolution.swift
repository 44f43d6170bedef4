// Direct convolutions for the small layers of compact CNNs, where im2col + GEMM spends most of its time packing,
// and ``PreparedConv2D``, which picks one at plan time and splits a batch over the worker pool.

/// A 2-D convolution prepared once for one geometry (at plan time): picks a direct kernel when one applies
/// (``FlatConv`` for stride-1 rows of 12 to 256 outputs, ``DirectConv`` for other wide rows, ``ChannelVectorConv``
/// for narrow outputs with constant weights), else im2col + GEMM (``conv2d(_:input:weight:bias:output:workspace:activation:pool:)``).
/// A batch runs one image per pool part, each with its own workspace (per-image GEMMs of a small CNN are below
/// the GEMM's own parallel threshold). An optional ``ChannelAffine`` (a batch normalisation fused after the
/// activation) is applied in registers by the direct kernels and in a pass after the GEMM otherwise.
///
/// Holds the prepared constants (transposed weights, the affine) by reference: copying it or calling ``run``
/// allocates nothing.
public struct PreparedConv2D: Sendable {
  enum Direct: Sendable {
    case flat(FlatConv)
    case rows(DirectConv)
    case channels(ChannelVectorConv)

    var scratchCount: Int {
      switch self {
      case .flat(let k): k.scratchCount
      case .rows(let k): k.scratchCount
      case .channels(let k): k.scratchCount
      }
    }
  }

  let params: Conv2DParams
  /// `params` for one image.
  let single: Conv2DParams
  let activation: Activation
  let post: ChannelAffine?
  let direct: Direct?
  /// Pool parts a batch is split into (image `n` goes to part `n % parts`).
  let parts: Int
  /// Floats of workspace per part.
  let perPart: Int
  /// Floats of workspace ``run(input:weight:bias:output:workspace:pool:)`` needs (may be 0).
  public let workspaceCount: Int

  /// - Parameters:
  ///   - params: from ``Conv2DParams/validated()``.
  ///   - constantWeight: the `[Cout, Cin / groups, kh, kw]` weights when they are constant (read here, not kept):
  ///     enables ``ChannelVectorConv``, which pre-transposes them.
  ///   - post: a per-channel affine applied after the activation; its channels must be `params.outChannels`.
  public init(
    _ params: Conv2DParams, activation: Activation, constantWeight: UnsafePointer<Float>? = nil,
    post: ChannelAffine? = nil
  ) throws(KernelError) {
    if let post, post.channels != params.outChannels {
      throw .invalidParameter("conv: \(post.channels) fused affine channels for \(params.outChannels) outputs")
    }
    var single = params
    single.batch = 1
    single = try single.validated()
    self.params = params
    self.single = single
    self.activation = activation
    self.post = post
    let relu = activation == .relu
    if FlatConv.applies(params, activation) {
      direct = .flat(FlatConv(params, relu: relu, post: post))
    } else if DirectConv.applies(params, activation) {
      direct = .rows(DirectConv(params, relu: relu, post: post))
    } else if let constantWeight, ChannelVectorConv.applies(params, activation) {
      direct = .channels(ChannelVectorConv(params, relu: relu, weight: constantWeight, post: post))
    } else {
      direct = nil
    }
    parts = min(params.batch, 8)
    perPart = direct?.scratchCount ?? single.workspaceCount
    let (total, overflow) = perPart.multipliedReportingOverflow(by: parts)
    guard !overflow else { throw .overflow("conv workspace") }
    workspaceCount = max(total, params.workspaceCount)
  }

  /// Runs the convolution on `params.batch` images, split over `pool` when given.
  /// - Parameters:
  ///   - bias: `outChannels` values or `nil`.
  ///   - workspace: ``workspaceCount`` floats (`nil` when that is 0).
  public func run(
    input: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    output: UnsafeMutablePointer<Float>, workspace: UnsafeMutablePointer<Float>?, pool: WorkerPool?
  ) {
    let batch = params.batch
    let outPlane = params.outHeight * params.outWidth
    if batch > 1 && (pool?.threadCount ?? 1) > 1 || direct != nil {
      var job = BatchConvJob(
        single: single, input: input, weight: weight, bias: bias, output: output,
        workspace: perPart > 0 ? workspace : nil, workspaceCount: perPart,
        inputStride: params.inChannels * params.inHeight * params.inWidth, outputStride: params.outChannels * outPlane,
        batch: batch, parts: parts, activation: activation, direct: direct)
      if let pool, batch > 1 {
        withUnsafePointer(to: &job) { p in
          pool.parallelFor(parts, context: UnsafeRawPointer(p)) { context, part in
            context.assumingMemoryBound(to: BatchConvJob.self).pointee.run(part: part)
          }
        }
      } else {
        for part in 0..<parts { job.run(part: part) }
      }
      // The direct kernels apply the affine in registers.
      if let post, direct == nil { post.apply(output, output, batch: batch, spatial: outPlane) }
      return
    }
    conv2d(
      params, input: input, weight: weight, bias: bias, output: output, workspace: workspace, activation: activation,
      pool: pool)
    if let post { post.apply(output, output, batch: batch, spatial: outPlane) }
  }
}

/// One convolution split over the batch: image `n` goes to part `n % parts`, each part with its own workspace.
struct BatchConvJob {
  var single: Conv2DParams
  var input: UnsafePointer<Float>
  var weight: UnsafePointer<Float>
  var bias: UnsafePointer<Float>?
  var output: UnsafeMutablePointer<Float>
  var workspace: UnsafeMutablePointer<Float>?
  var workspaceCount: Int
  var inputStride: Int
  var outputStride: Int
  var batch: Int
  var parts: Int
  var activation: Activation
  var direct: PreparedConv2D.Direct?

  func run(part: Int) {
    var n = part
    while n < batch {
      let (x, y) = (input + n * inputStride, output + n * outputStride)
      let scratch = workspace.map { $0 + part * workspaceCount }
      switch (direct, scratch) {
      case (.flat(let flat), .some(let scratch)): flat.run(x, weight, bias, y, scratch: scratch)
      case (.channels(let narrow), .some(let scratch)): narrow.run(x, bias, y, scratch: scratch)
      case (.rows(let rows), .some(let scratch)): rows.run(x, weight, bias, y, scratch: scratch)
      default:
        conv2d(
          single, input: x, weight: weight, bias: bias, output: y, workspace: scratch, activation: activation,
          pool: nil)
      }
      n += parts
    }
  }
}

/// Copies `n` floats of one input row into a padded scratch row with vectors (the last one overlapping): the
/// rows of a small CNN are 4 to 28 floats, where a `memmove` call per row cost about 1 µs per image.
@inline(__always)
func copyRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
  if n < 8 {
    for j in 0..<n { dst[j] = src[j] }
    return
  }
  let (d, s) = (UnsafeMutableRawPointer(dst), UnsafeRawPointer(src))
  var j = 0
  while j + 8 <= n {
    d.storeBytes(
      of: s.loadUnaligned(fromByteOffset: j &* 4, as: SIMD8<Float>.self), toByteOffset: j &* 4, as: SIMD8<Float>.self)
    j &+= 8
  }
  if j < n {
    let k = n &- 8
    d.storeBytes(
      of: s.loadUnaligned(fromByteOffset: k &* 4, as: SIMD8<Float>.self), toByteOffset: k &* 4, as: SIMD8<Float>.self)
  }
}

/// Direct 2-D convolution (no dilation, one group, horizontal stride 1 or 2; stride-1 convolutions with rows of
/// 12 to 256 outputs go to ``FlatConv``): the input is copied into a
/// zero-padded scratch plane, then 16 output columns x 4 output channels are accumulated in registers. For the
/// small channel counts of compact CNNs this beats im2col + GEMM, whose packing dominates when `Cin * kh * kw`
/// is small.
struct DirectConv {
  var cin: Int
  var cout: Int
  var h: Int
  var w: Int
  var kh: Int
  var kw: Int
  var sh: Int
  var sw: Int
  var padTop: Int
  var padLeft: Int
  var outH: Int
  var outW: Int
  var relu: Bool
  /// A batch normalisation fused after the activation, applied in registers.
  var post: ChannelAffine?

  static func applies(_ p: Conv2DParams, _ activation: Activation) -> Bool {
    (p.strideW == 1 || p.strideW == 2) && p.strideH >= 1 && p.dilationH == 1 && p.dilationW == 1 && p.groups == 1
      && (activation == .identity || activation == .relu) && p.kernelHeight <= 16 && p.kernelWidth <= 16
      && p.inChannels * p.kernelHeight * p.kernelWidth <= 512 && p.strideH <= 8
      && max(p.padTop, p.padLeft, p.padBottom, p.padRight) <= 16
      && p.outHeight > 0 && p.outWidth >= 12  // narrower outputs waste most of the 16-column block
  }

  init(_ p: Conv2DParams, relu: Bool, post: ChannelAffine?) {
    self.post = post
    cin = p.inChannels
    cout = p.outChannels
    h = p.inHeight
    w = p.inWidth
    kh = p.kernelHeight
    kw = p.kernelWidth
    sh = p.strideH
    sw = p.strideW
    padTop = p.padTop
    padLeft = p.padLeft
    outH = p.outHeight
    outW = p.outWidth
    self.relu = relu
  }

  var paddedH: Int { (outH - 1) * sh + kh }
  /// Wide enough for the last 16-column block's loads (16 floats per load for stride 2).
  var paddedW: Int { max(sw * ((outW + 15) / 16 * 16) + kw + 16, padLeft + w) }
  /// Floats of scratch per image.
  var scratchCount: Int { cin * paddedH * paddedW }

  @inline(__always)
  func load8(_ row: UnsafeRawPointer, _ col: Int) -> SIMD8<Float> {
    if sw == 1 { return row.loadUnaligned(fromByteOffset: col * 4, as: SIMD8<Float>.self) }
    return row.loadUnaligned(fromByteOffset: col * 4, as: SIMD16<Float>.self).evenHalf
  }

  /// One image: `x` [cin, h, w] -> `y` [cout, outH, outW].
  func run(
    _ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?,
    _ y: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
  ) {
    let (hp, wp) = (paddedH, paddedW)
    scratch.update(repeating: 0, count: cin * hp * wp)
    for c in 0..<cin {
      for r in 0..<h {
        let dr = r + padTop
        guard dr < hp else { continue }
        copyRow(scratch + (c * hp + dr) * wp + padLeft, x + (c * h + r) * w, w)
      }
    }
    // Images, not output channels, are split over the pool (``PreparedConv2D``).
    compute(weight, bias, y, scratch: UnsafePointer(scratch), blocks: 0..<((cout + 3) / 4))
  }

  /// Output channels `4 * blocks.lowerBound ..< 4 * blocks.upperBound` from the padded input.
  func compute(
    _ weight: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>,
    scratch: UnsafePointer<Float>, blocks: Range<Int>
  ) {
    let (hp, wp) = (paddedH, paddedW)
    let kSize = cin * kh * kw
    let zero = SIMD8<Float>()
    // Read through a plain pointer in the loops (the storage is kept alive by `self`).
    let postFactors: UnsafePointer<Float>? = post?.factors
    var oc = blocks.lowerBound * 4
    while oc < min(cout, blocks.upperBound * 4) {
      let group = min(4, cout - oc)
      let w0 = weight + oc * kSize
      let w1 = weight + (oc + min(1, group - 1)) * kSize
      let w2 = weight + (oc + min(2, group - 1)) * kSize
      let w3 = weight + (oc + min(3, group - 1)) * kSize
      let b0 = SIMD8<Float>(repeating: bias?[oc] ?? 0)
      let b1 = SIMD8<Float>(repeating: bias?[oc + min(1, group - 1)] ?? 0)
      let b2 = SIMD8<Float>(repeating: bias?[oc + min(2, group - 1)] ?? 0)
      let b3 = SIMD8<Float>(repeating: bias?[oc + min(3, group - 1)] ?? 0)
      for oh in 0..<outH {
        var ow = 0
        while ow < outW {
          var (a0, a1, a2, a3) = (b0, b1, b2, b3)
          var (c0, c1, c2, c3) = (b0, b1, b2, b3)
          var k = 0
          if sw == 1 && kw == 3 {
            // The common 3x3 / stride-1 case, with the three taps of a row unrolled and no stride branch.
            for ic in 0..<cin {
              for r in 0..<kh {
                let row = UnsafeRawPointer(scratch + (ic * hp + oh * sh + r) * wp + ow)
                for s in 0..<3 {
                  let v = row.loadUnaligned(fromByteOffset: s * 4, as: SIMD8<Float>.self)
                  let u = row.loadUnaligned(fromByteOffset: (8 + s) * 4, as: SIMD8<Float>.self)
                  let (p0, p1, p2, p3) = (
                    SIMD8<Float>(repeating: w0[k]), SIMD8<Float>(repeating: w1[k]),
                    SIMD8<Float>(repeating: w2[k]), SIMD8<Float>(repeating: w3[k])
                  )
                  a0 = a0.addingProduct(v, p0)
                  a1 = a1.addingProduct(v, p1)
                  a2 = a2.addingProduct(v, p2)
                  a3 = a3.addingProduct(v, p3)
                  c0 = c0.addingProduct(u, p0)
                  c1 = c1.addingProduct(u, p1)
                  c2 = c2.addingProduct(u, p2)
                  c3 = c3.addingProduct(u, p3)
                  k += 1
                }
              }
            }
          } else {
            for ic in 0..<cin {
              for r in 0..<kh {
                let row = UnsafeRawPointer(scratch + (ic * hp + oh * sh + r) * wp)
                for s in 0..<kw {
                  let v = load8(row, ow * sw + s)
                  let u = load8(row, (ow + 8) * sw + s)
                  let (p0, p1, p2, p3) = (
                    SIMD8<Float>(repeating: w0[k]), SIMD8<Float>(repeating: w1[k]),
                    SIMD8<Float>(repeating: w2[k]), SIMD8<Float>(repeating: w3[k])
                  )
                  a0 = a0.addingProduct(v, p0)
                  a1 = a1.addingProduct(v, p1)
                  a2 = a2.addingProduct(v, p2)
                  a3 = a3.addingProduct(v, p3)
                  c0 = c0.addingProduct(u, p0)
                  c1 = c1.addingProduct(u, p1)
                  c2 = c2.addingProduct(u, p2)
                  c3 = c3.addingProduct(u, p3)
                  k += 1
                }
              }
            }
          }
          if relu {
            a0.replace(with: zero, where: a0 .< zero)
            a1.replace(with: zero, where: a1 .< zero)
            a2.replace(with: zero, where: a2 .< zero)
            a3.replace(with: zero, where: a3 .< zero)
            c0.replace(with: zero, where: c0 .< zero)
            c1.replace(with: zero, where: c1 .< zero)
            c2.replace(with: zero, where: c2 .< zero)
            c3.replace(with: zero, where: c3 .< zero)
          }
          let n0 = min(8, outW - ow)
          let n1 = min(8, outW - ow - 8)
          for g in 0..<group {
            let dst = y + ((oc + g) * outH + oh) * outW + ow
            var a = g == 0 ? a0 : (g == 1 ? a1 : (g == 2 ? a2 : a3))
            var c = g == 0 ? c0 : (g == 1 ? c1 : (g == 2 ? c2 : c3))
            if let f = postFactors {
              let (m, d) = (SIMD8<Float>(repeating: f[oc + g]), SIMD8<Float>(repeating: f[cout + oc + g]))
              a = d.addingProduct(a, m)
              c = d.addingProduct(c, m)
            }
            if n0 == 8 {
              UnsafeMutableRawPointer(dst).storeBytes(of: a, as: SIMD8<Float>.self)
            } else {
              for j in 0..<n0 { dst[j] = a[j] }
            }
            if n1 == 8 {
              UnsafeMutableRawPointer(dst + 8).storeBytes(of: c, as: SIMD8<Float>.self)
            } else if n1 > 0 {
              for j in 0..<n1 { dst[8 + j] = c[j] }
            }
          }
          ow += 16
        }
      }
      oc += 4
    }
  }
}

/// Direct convolution vectorised over output channels, for narrow outputs (late CNN layers, e.g. 4x4) where
/// vectorising over columns would waste most lanes: for each output pixel, 8..32 output channels accumulate in
/// registers from broadcast input values and weights pre-transposed to `[Cin * kh * kw, Cout]` at plan time.
struct ChannelVectorConv {
  var cin: Int
  var cout: Int
  var h: Int
  var w: Int
  var kh: Int
  var kw: Int
  var sh: Int
  var sw: Int
  var padTop: Int
  var padLeft: Int
  var outH: Int
  var outW: Int
  var relu: Bool
  /// `[Cin * kh * kw, Cout]`.
  var weights: FloatStorage
  /// A batch normalisation fused after the activation, applied in registers.
  var post: ChannelAffine?

  /// Whether the geometry suits this kernel (it also needs constant weights, to transpose once).
  static func applies(_ p: Conv2DParams, _ activation: Activation) -> Bool {
    p.groups == 1 && p.outChannels % 8 == 0 && p.dilationH == 1 && p.dilationW == 1
      && (activation == .identity || activation == .relu) && p.kernelHeight <= 16 && p.kernelWidth <= 16
      && p.strideH <= 8 && p.strideW <= 8 && max(p.padTop, p.padLeft, p.padBottom, p.padRight) <= 16
      && p.outHeight > 0 && p.outWidth > 0
  }

  /// `weight` is the constant `[Cout, Cin, kh, kw]` weight tensor, transposed here once.
  init(_ p: Conv2DParams, relu: Bool, weight: UnsafePointer<Float>, post: ChannelAffine?) {
    self.post = post
    cin = p.inChannels
    cout = p.outChannels
    h = p.inHeight
    w = p.inWidth
    kh = p.kernelHeight
    kw = p.kernelWidth
    sh = p.strideH
    sw = p.strideW
    padTop = p.padTop
    padLeft = p.padLeft
    outH = p.outHeight
    outW = p.outWidth
    self.relu = relu
    let k = cin * kh * kw
    weights = FloatStorage(count: k * cout)
    let (src, dst) = (weight, weights.pointer)
    for o in 0..<cout { for j in 0..<k { dst[j * cout + o] = src[o * k + j] } }
  }

  var paddedH: Int { max((outH - 1) * sh + kh, padTop + h) }
  var paddedW: Int { max((outW - 1) * sw + kw, padLeft + w) }
  var scratchCount: Int { cin * paddedH * paddedW }

  func run(
    _ x: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>,
    scratch: UnsafeMutablePointer<Float>
  ) {
    let (hp, wp) = (paddedH, paddedW)
    scratch.update(repeating: 0, count: cin * hp * wp)
    for c in 0..<cin {
      for r in 0..<h {
        copyRow(scratch + (c * hp + r + padTop) * wp + padLeft, x + (c * h + r) * w, w)
      }
    }
    let wt = UnsafeRawPointer(weights.pointer)
    let postFactors: UnsafePointer<Float>? = post?.factors
    let plane = outH * outW
    let zero = SIMD8<Float>()
    var ocb = 0
    while ocb < cout {
      let lanes = min(4, (cout - ocb) / 8)
      func biasVector(_ j: Int) -> SIMD8<Float> {
        guard let bias, j < lanes else { return zero }
        return UnsafeRawPointer(bias + ocb + 8 * j).loadUnaligned(as: SIMD8<Float>.self)
      }
      let (b0, b1, b2, b3) = (biasVector(0), biasVector(1), biasVector(2), biasVector(3))
      // Lanes beyond `lanes` read the first block again (valid memory) and are not stored.
      let o1 = lanes > 1 ? 8 : 0
      let o2 = lanes > 2 ? 16 : 0
      let o3 = lanes > 3 ? 24 : 0
      /// Stores up to 32 channels of one output pixel (channel planes `plane` apart).
      @inline(__always) func store(
        _ a0: SIMD8<Float>, _ a1: SIMD8<Float>, _ a2: SIMD8<Float>, _ a3: SIMD8<Float>, pixel: Int
      ) {
        var (a0, a1, a2, a3) = (a0, a1, a2, a3)
        if relu {
          a0.replace(with: zero, where: a0 .< zero)
          a1.replace(with: zero, where: a1 .< zero)
          a2.replace(with: zero, where: a2 .< zero)
          a3.replace(with: zero, where: a3 .< zero)
        }
        for j in 0..<lanes {
          var a = j == 0 ? a0 : (j == 1 ? a1 : (j == 2 ? a2 : a3))
          if let postFactors {
            let f = UnsafeRawPointer(postFactors)
            a = f.loadUnaligned(fromByteOffset: (cout + ocb + 8 * j) * 4, as: SIMD8<Float>.self)
              .addingProduct(a, f.loadUnaligned(fromByteOffset: (ocb + 8 * j) * 4, as: SIMD8<Float>.self))
          }
          let base = y + (ocb + 8 * j) * plane + pixel
          for l in 0..<8 { base[l * plane] = a[l] }
        }
      }
      // Output pixels in flat order, three at a time: each weight vector loaded once feeds twelve accumulators
      // (one pixel's four loads per four FMAs made this loop wait on loads; two pixels' eight accumulators still
      // waited on the FMA latency).
      @inline(__always) func rowOf(_ pixel: Int) -> UnsafeMutablePointer<Float> {
        let (oh, ow) = (pixel / outW, pixel % outW)
        let offset: Int = oh &* sh &* wp &+ ow &* sw
        return scratch + offset
      }
      var pixel = 0
      while pixel + 3 <= plane {
        var (a0, a1, a2, a3) = (b0, b1, b2, b3)
        var (c0, c1, c2, c3) = (b0, b1, b2, b3)
        var (d0, d1, d2, d3) = (b0, b1, b2, b3)
        let (pa, pc, pd) = (rowOf(pixel), rowOf(pixel + 1), rowOf(pixel + 2))
        var k = 0
        for ic in 0..<cin {
          for r in 0..<kh {
            let off = (ic &* hp &+ r) &* wp
            let (ra, rc, rd) = (pa + off, pc + off, pd + off)
            for s in 0..<kw {
              let v = SIMD8<Float>(repeating: ra[s])
              let u = SIMD8<Float>(repeating: rc[s])
              let t = SIMD8<Float>(repeating: rd[s])
              let wrow = wt + (k &* cout &+ ocb) &* 4
              var wv = wrow.loadUnaligned(as: SIMD8<Float>.self)
              a0 = a0.addingProduct(v, wv)
              c0 = c0.addingProduct(u, wv)
              d0 = d0.addingProduct(t, wv)
              wv = wrow.loadUnaligned(fromByteOffset: o1 &* 4, as: SIMD8<Float>.self)
              a1 = a1.addingProduct(v, wv)
              c1 = c1.addingProduct(u, wv)
              d1 = d1.addingProduct(t, wv)
              wv = wrow.loadUnaligned(fromByteOffset: o2 &* 4, as: SIMD8<Float>.self)
              a2 = a2.addingProduct(v, wv)
              c2 = c2.addingProduct(u, wv)
              d2 = d2.addingProduct(t, wv)
              wv = wrow.loadUnaligned(fromByteOffset: o3 &* 4, as: SIMD8<Float>.self)
              a3 = a3.addingProduct(v, wv)
              c3 = c3.addingProduct(u, wv)
              d3 = d3.addingProduct(t, wv)
              k &+= 1
            }
          }
        }
        store(a0, a1, a2, a3, pixel: pixel)
        store(c0, c1, c2, c3, pixel: pixel + 1)
        store(d0, d1, d2, d3, pixel: pixel + 2)
        pixel += 3
      }
      while pixel < plane {
        var (a0, a1, a2, a3) = (b0, b1, b2, b3)
        let pa = rowOf(pixel)
        var k = 0
        for ic in 0..<cin {
          for r in 0..<kh {
            let row = pa + (ic &* hp &+ r) &* wp
            for s in 0..<kw {
              let v = SIMD8<Float>(repeating: row[s])
              let wrow = wt + (k &* cout &+ ocb) &* 4
              a0 = a0.addingProduct(v, wrow.loadUnaligned(as: SIMD8<Float>.self))
              a1 = a1.addingProduct(v, wrow.loadUnaligned(fromByteOffset: o1 &* 4, as: SIMD8<Float>.self))
              a2 = a2.addingProduct(v, wrow.loadUnaligned(fromByteOffset: o2 &* 4, as: SIMD8<Float>.self))
              a3 = a3.addingProduct(v, wrow.loadUnaligned(fromByteOffset: o3 &* 4, as: SIMD8<Float>.self))
              k &+= 1
            }
          }
        }
        store(a0, a1, a2, a3, pixel: pixel)
        pixel += 1
      }
      ocb += 8 * lanes
    }
  }
}

/// Stride-1 direct convolution (no dilation, one group) on contiguous output rows. The input is copied into a
/// zero-padded plane, then into `kw` horizontally shifted copies whose rows are exactly `outW` wide:
/// `shifted[ic][s][y * outW + x] = padded[ic][y][x + s]`. Output pixel `q = oh * outW + ow` then reads tap
/// (ic, r, s) at `shifted[ic][s][q + r * outW]`, so 8 consecutive outputs are one vector load per tap with no
/// padding columns computed (the 16-column blocks of ``DirectConv`` compute 16 for a 14-wide row). Blocks of 24
/// outputs x 4 output channels keep 12 accumulators in flight and cost 7 loads per 12 FMAs.
struct FlatConv {
  var cin: Int
  var cout: Int
  var h: Int
  var w: Int
  var kh: Int
  var kw: Int
  var padTop: Int
  var padLeft: Int
  var outH: Int
  var outW: Int
  var relu: Bool
  /// A batch normalisation fused after the activation, applied in registers.
  var post: ChannelAffine?

  static func applies(_ p: Conv2DParams, _ activation: Activation) -> Bool {
    p.strideH == 1 && p.strideW == 1 && p.dilationH == 1 && p.dilationW == 1 && p.groups == 1
      && (activation == .identity || activation == .relu) && p.kernelHeight <= 16 && p.kernelWidth <= 16
      && max(p.padTop, p.padLeft, p.padBottom, p.padRight) <= 16
      && p.outHeight > 0 && p.outWidth >= 12 && p.outWidth <= 256  // narrow rows waste the padded columns
  }

  init(_ p: Conv2DParams, relu: Bool, post: ChannelAffine?) {
    self.post = post
    cin = p.inChannels
    cout = p.outChannels
    h = p.inHeight
    w = p.inWidth
    kh = p.kernelHeight
    kw = p.kernelWidth
    padTop = p.padTop
    padLeft = p.padLeft
    outH = p.outHeight
    outW = p.outWidth
    self.relu = relu
  }

  /// Padded plane: `hp` rows of `wp` floats (room for 8-float loads past a row's last tap).
  var wp: Int { max(outW + kw - 1, padLeft + w) + 8 }
  var hp: Int { max(outH + kh - 1, padTop + h) }
  var paddedCount: Int { cin * hp * wp + 16 }
  /// One shifted copy: `hp` rows of `outW`.
  var shiftedPlane: Int { hp * outW }
  /// Floats of scratch per image: the padded planes, then the shifted copies plus a tail for the last block's
  /// loads past the end.
  var scratchCount: Int { paddedCount + cin * kw * shiftedPlane + 32 }

  func run(
    _ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?,
    _ y: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
  ) {
    let (hp, wp) = (hp, wp)
    let plane = hp * wp
    scratch.update(repeating: 0, count: paddedCount)
    for c in 0..<cin {
      for r in 0..<h {
        copyRow(scratch + c * plane + (r + padTop) * wp + padLeft, x + (c * h + r) * w, w)
      }
    }
    let padded = UnsafeRawPointer(scratch)
    let shifted = scratch + paddedCount
    let xPlane = shiftedPlane
    // Rows written in increasing order with whole vectors: a vector past a row's end is overwritten by the
    // next row (the last row's spills into the next copy, or the tail).
    for c in 0..<cin {
      for s in 0..<kw {
        let dst = UnsafeMutableRawPointer(shifted + (c &* kw &+ s) &* xPlane)
        for r in 0..<hp {
          let srcRow = padded + (c &* plane &+ r &* wp &+ s) &* 4
          let dstRow = dst + r &* outW &* 4
          var j = 0
          while j < outW {
            dstRow.storeBytes(
              of: srcRow.loadUnaligned(fromByteOffset: j &* 4, as: SIMD8<Float>.self), toByteOffset: j &* 4,
              as: SIMD8<Float>.self)
            j &+= 8
          }
        }
      }
    }
    // The tail past the last copy is read by the last block's unused lanes: keep it finite.
    (shifted + cin * kw * xPlane + (outW + 7) / 8 * 8 - outW).update(repeating: 0, count: 24)
    let src = UnsafeRawPointer(shifted)
    let kSize = cin * kh * kw
    let zero = SIMD8<Float>()
    let postFactors: UnsafePointer<Float>? = post?.factors
    let channelSize = outH * outW
    var oc = 0
    while oc < cout {
      let group = min(4, cout - oc)
      // Channels past `group` repeat the last one (valid reads; not stored).
      let w0 = weight + oc * kSize
      let w1 = weight + (oc + min(1, group - 1)) * kSize
      let w2 = weight + (oc + min(2, group - 1)) * kSize
      let w3 = weight + (oc + min(3, group - 1)) * kSize
      let b0 = SIMD8<Float>(repeating: bias?[oc] ?? 0)
      let b1 = SIMD8<Float>(repeating: bias?[oc + min(1, group - 1)] ?? 0)
      let b2 = SIMD8<Float>(repeating: bias?[oc + min(2, group - 1)] ?? 0)
      let b3 = SIMD8<Float>(repeating: bias?[oc + min(3, group - 1)] ?? 0)
      /// Activation, batch normalisation and store of channel `oc + g`'s outputs `q ..< q + 8`.
      @inline(__always) func store(_ v: SIMD8<Float>, _ g: Int, _ q: Int) {
        if g >= group { return }
        var v = v
        if relu { v.replace(with: zero, where: v .< zero) }
        if let f = postFactors {
          v = SIMD8<Float>(repeating: f[cout + oc + g]).addingProduct(v, SIMD8<Float>(repeating: f[oc + g]))
        }
        let dst = y + (oc + g) * channelSize + q
        if q + 8 <= channelSize {
          UnsafeMutableRawPointer(dst).storeBytes(of: v, as: SIMD8<Float>.self)
        } else {
          for j in 0..<(channelSize - q) { dst[j] = v[j] }
        }
      }
      var q = 0
      while q + 24 <= channelSize {
        var (a0, a1, a2, a3) = (b0, b1, b2, b3)
        var (c0, c1, c2, c3) = (b0, b1, b2, b3)
        var (d0, d1, d2, d3) = (b0, b1, b2, b3)
        @inline(__always) func tap(_ row: UnsafeRawPointer, _ s: Int, _ k: Int) {
          let u = row.loadUnaligned(fromByteOffset: s &* 4, as: SIMD8<Float>.self)
          let v = row.loadUnaligned(fromByteOffset: (8 &+ s) &* 4, as: SIMD8<Float>.self)
          let t = row.loadUnaligned(fromByteOffset: (16 &+ s) &* 4, as: SIMD8<Float>.self)
          var p = SIMD8<Float>(repeating: w0[k])
          a0 = a0.addingProduct(u, p)
          c0 = c0.addingProduct(v, p)
          d0 = d0.addingProduct(t, p)
          p = SIMD8<Float>(repeating: w1[k])
          a1 = a1.addingProduct(u, p)
          c1 = c1.addingProduct(v, p)
          d1 = d1.addingProduct(t, p)
          p = SIMD8<Float>(repeating: w2[k])
          a2 = a2.addingProduct(u, p)
          c2 = c2.addingProduct(v, p)
          d2 = d2.addingProduct(t, p)
          p = SIMD8<Float>(repeating: w3[k])
          a3 = a3.addingProduct(u, p)
          c3 = c3.addingProduct(v, p)
          d3 = d3.addingProduct(t, p)
        }
        // Taps (ic, r, s) in weight order: copy `ic * kw + s`, row offset `r * outW`. The 3-tap case is
        // unrolled (a variable 3-trip inner loop costs as much as its FMAs here).
        var k = 0
        for ic in 0..<cin {
          let copy = src + (ic &* kw &* xPlane &+ q) &* 4
          for r in 0..<kh {
            let row = copy + r &* outW &* 4
            if kw == 3 {
              tap(row, 0, k)
              tap(row + xPlane &* 4, 0, k &+ 1)
              tap(row + 2 &* xPlane &* 4, 0, k &+ 2)
              k &+= 3
            } else {
              for s in 0..<kw { tap(row + s &* xPlane &* 4, 0, k &+ s) }
              k &+= kw
            }
          }
        }
        store(a0, 0, q)
        store(a1, 1, q)
        store(a2, 2, q)
        store(a3, 3, q)
        store(c0, 0, q + 8)
        store(c1, 1, q + 8)
        store(c2, 2, q + 8)
        store(c3, 3, q + 8)
        store(d0, 0, q + 16)
        store(d1, 1, q + 16)
        store(d2, 2, q + 16)
        store(d3, 3, q + 16)
        q += 24
      }
      oc += 4
    }
    // The last (fewer than 24) outputs of every channel: one vector at a time for 8 channels, so 8 independent
    // accumulators (4 per channel group left each one waiting on the previous FMA of its chain).
    var q = channelSize / 24 * 24
    while q < channelSize {
      var oc8 = 0
      while oc8 < cout {
        let group = min(8, cout - oc8)
        // Channels past `group` repeat the last one (valid reads; not stored).
        @inline(__always) func channel(_ j: Int) -> Int { oc8 + min(j, group - 1) }
        let (w0, w1, w2, w3) = (
          weight + channel(0) * kSize, weight + channel(1) * kSize,
          weight + channel(2) * kSize, weight + channel(3) * kSize
        )
        let (w4, w5, w6, w7) = (
          weight + channel(4) * kSize, weight + channel(5) * kSize,
          weight + channel(6) * kSize, weight + channel(7) * kSize
        )
        @inline(__always) func start(_ j: Int) -> SIMD8<Float> { SIMD8<Float>(repeating: bias?[channel(j)] ?? 0) }
        var (a0, a1, a2, a3) = (start(0), start(1), start(2), start(3))
        var (a4, a5, a6, a7) = (start(4), start(5), start(6), start(7))
        var k = 0
        for ic in 0..<cin {
          for r in 0..<kh {
            for s in 0..<kw {
              let u = (src + ((ic &* kw &+ s) &* xPlane &+ r &* outW &+ q) &* 4).loadUnaligned(as: SIMD8<Float>.self)
              a0 = a0.addingProduct(u, SIMD8<Float>(repeating: w0[k]))
              a1 = a1.addingProduct(u, SIMD8<Float>(repeating: w1[k]))
              a2 = a2.addingProduct(u, SIMD8<Float>(repeating: w2[k]))
              a3 = a3.addingProduct(u, SIMD8<Float>(repeating: w3[k]))
              a4 = a4.addingProduct(u, SIMD8<Float>(repeating: w4[k]))
              a5 = a5.addingProduct(u, SIMD8<Float>(repeating: w5[k]))
              a6 = a6.addingProduct(u, SIMD8<Float>(repeating: w6[k]))
              a7 = a7.addingProduct(u, SIMD8<Float>(repeating: w7[k]))
              k &+= 1
            }
          }
        }
        for g in 0..<group {
          var v =
            g < 4 ? (g == 0 ? a0 : g == 1 ? a1 : g == 2 ? a2 : a3) : (g == 4 ? a4 : g == 5 ? a5 : g == 6 ? a6 : a7)
          if relu { v.replace(with: zero, where: v .< zero) }
          if let f = postFactors {
            v = SIMD8<Float>(repeating: f[cout + oc8 + g]).addingProduct(v, SIMD8<Float>(repeating: f[oc8 + g]))
          }
          let dst = y + (oc8 + g) * channelSize + q
          if q + 8 <= channelSize {
            UnsafeMutableRawPointer(dst).storeBytes(of: v, as: SIMD8<Float>.self)
          } else {
            for j in 0..<(channelSize - q) { dst[j] = v[j] }
          }
        }
        oc8 += 8
      }
      q += 8
    }
  }
}
