import Testing

@testable import PalisadeKernels

/// The direct convolutions, tiled pooling and channel affine that ``PreparedConv2D``, ``pool2d`` and
/// ``ChannelAffine`` run, against the naive references of ConvPoolTests.
@Suite("Direct convolutions, tiled pooling, channel affine")
struct DirectConvolutionTests {
  struct ConvCase: Sendable, CustomTestStringConvertible {
    var params: Conv2DParams
    /// The kernel ``PreparedConv2D`` must pick: "flat", "rows", "channels" or "gemm".
    var kernel: String
    var testDescription: String { "\(kernel) \(params)" }
  }

  static let convCases: [ConvCase] = [
    // Stride 1, 14-wide rows, 6 output channels (a partial block of 4), 24-output blocks plus a tail.
    ConvCase(
      params: Conv2DParams(
        batch: 3, inChannels: 3, inHeight: 14, inWidth: 14, outChannels: 6, kernelHeight: 3, kernelWidth: 3,
        padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
      kernel: "flat"),
    // A 5x5 kernel (not the unrolled 3-tap case) with uneven pads.
    ConvCase(
      params: Conv2DParams(
        batch: 1, inChannels: 2, inHeight: 13, inWidth: 17, outChannels: 9, kernelHeight: 5, kernelWidth: 5,
        padTop: 2, padLeft: 1, padBottom: 0, padRight: 3),
      kernel: "flat"),
    // Stride 2: 16-column blocks reading every other column; odd sizes, 5 output channels.
    ConvCase(
      params: Conv2DParams(
        batch: 2, inChannels: 3, inHeight: 29, inWidth: 31, outChannels: 5, kernelHeight: 3, kernelWidth: 3,
        strideH: 2, strideW: 2, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
      kernel: "rows"),
    // Stride 1 rows wider than FlatConv takes: the unrolled 3x3 row kernel, with a partial last block.
    ConvCase(
      params: Conv2DParams(
        batch: 1, inChannels: 2, inHeight: 3, inWidth: 299, outChannels: 4, kernelHeight: 3, kernelWidth: 3,
        padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
      kernel: "rows"),
    // Narrow outputs: channel-vectorised, 16 output channels, 3 pixels at a time plus a remainder.
    ConvCase(
      params: Conv2DParams(
        batch: 2, inChannels: 8, inHeight: 6, inWidth: 6, outChannels: 16, kernelHeight: 3, kernelWidth: 3),
      kernel: "channels"),
    // 40 output channels (a block of 32 then 8), stride 2, padding.
    ConvCase(
      params: Conv2DParams(
        batch: 1, inChannels: 3, inHeight: 7, inWidth: 5, outChannels: 40, kernelHeight: 3, kernelWidth: 2,
        strideH: 2, strideW: 2, padTop: 1, padLeft: 1, padBottom: 2, padRight: 0),
      kernel: "channels"),
    // Groups: im2col + GEMM, with the affine applied after.
    ConvCase(
      params: Conv2DParams(
        batch: 2, inChannels: 4, inHeight: 6, inWidth: 7, outChannels: 6, kernelHeight: 3, kernelWidth: 3,
        padTop: 1, padLeft: 1, padBottom: 1, padRight: 1, groups: 2),
      kernel: "gemm"),
  ]

  static func kernelName(_ conv: PreparedConv2D) -> String {
    switch conv.direct {
    case .flat: "flat"
    case .rows: "rows"
    case .channels: "channels"
    case nil: "gemm"
    }
  }

  @Test("PreparedConv2D against a direct reference (bias, relu, fused affine, pool)", arguments: convCases)
  func prepared(testCase: ConvCase) throws {
    let p = try testCase.params.validated()
    let x = randomFloats(p.batch * p.inChannels * p.inHeight * p.inWidth, seed: 11)
    let w = randomFloats(p.outChannels * (p.inChannels / p.groups) * p.kernelHeight * p.kernelWidth, seed: 12)
    let bias = randomFloats(p.outChannels, seed: 13)
    let mul = randomFloats(p.outChannels, seed: 14, in: 0.5...2)
    let add = randomFloats(p.outChannels, seed: 15)
    let affine = try #require(ChannelAffine(multipliers: mul, addends: add))
    let pool = WorkerPool(threadCount: 2)
    let plane = p.outHeight * p.outWidth
    for (useBias, relu, usePost, usePool) in [
      (false, false, false, false), (true, true, false, true), (true, false, true, false), (true, true, true, true),
    ] {
      let conv = try w.withUnsafeBufferPointer { pw in
        try PreparedConv2D(
          p, activation: relu ? .relu : .identity, constantWeight: pw.baseAddress, post: usePost ? affine : nil)
      }
      #expect(Self.kernelName(conv) == testCase.kernel)
      var workspace = [Float](repeating: .nan, count: max(conv.workspaceCount, 1))
      var y = [Float](repeating: .nan, count: p.batch * p.outChannels * plane)
      bias.withUnsafeBufferPointer { pb in
        workspace.withUnsafeMutableBufferPointer { pw in
          conv.run(
            input: x, weight: w, bias: useBias ? pb.baseAddress : nil, output: &y,
            workspace: conv.workspaceCount > 0 ? pw.baseAddress : nil, pool: usePool ? pool : nil)
        }
      }
      var expected = convReference(p, x, w, useBias ? bias : nil, relu: relu)
      if usePost {
        for i in expected.indices {
          let c = i / plane % p.outChannels
          expected[i] = expected[i] * Double(mul[c]) + Double(add[c])
        }
      }
      #expect(
        firstMismatch(y, expected, rel: 1e-4, abs: 1e-4) == nil,
        "bias=\(useBias) relu=\(relu) post=\(usePost) pool=\(usePool)")
    }
  }

  @Test("without constant weights narrow outputs use the GEMM; a mismatched affine is refused")
  func preparedChoices() throws {
    let p = try Conv2DParams(
      batch: 1, inChannels: 8, inHeight: 6, inWidth: 6, outChannels: 16, kernelHeight: 3, kernelWidth: 3
    ).validated()
    #expect(Self.kernelName(try PreparedConv2D(p, activation: .relu)) == "gemm")
    // Only identity and relu run in the direct kernels.
    #expect(
      Self.kernelName(try PreparedConv2D(try Self.convCases[0].params.validated(), activation: .sigmoid)) == "gemm")
    let affine = try #require(ChannelAffine(multipliers: [1, 2], addends: [0, 1]))
    #expect(throws: KernelError.self) { try PreparedConv2D(p, activation: .identity, post: affine) }
    #expect(ChannelAffine(multipliers: [1, 2], addends: [0]) == nil)
  }

  static let poolCases: [Pool2DParams] = [
    // 2x2 / stride 2 with narrow rows (14 -> 7): the vector reads run into the next row.
    Pool2DParams(
      batch: 2, channels: 3, inHeight: 14, inWidth: 14, kernelHeight: 2, kernelWidth: 2, strideH: 2, strideW: 2),
    // Rows of 20 outputs: two vectors, then one overlapping the second.
    Pool2DParams(
      batch: 1, channels: 2, inHeight: 6, inWidth: 40, kernelHeight: 2, kernelWidth: 2, strideH: 2, strideW: 2),
    // Odd sizes: the last column and row of the input are left out; the last plane ends in scalar loads.
    Pool2DParams(
      batch: 1, channels: 3, inHeight: 5, inWidth: 5, kernelHeight: 2, kernelWidth: 2, strideH: 2, strideW: 2),
    // Tiled but not 2x2: the general direct loop.
    Pool2DParams(
      batch: 1, channels: 2, inHeight: 9, inWidth: 10, kernelHeight: 3, kernelWidth: 3, strideH: 3, strideW: 3),
    // Big enough (2^15 floats) to be split over the pool.
    Pool2DParams(
      batch: 4, channels: 8, inHeight: 32, inWidth: 32, kernelHeight: 2, kernelWidth: 2, strideH: 2, strideW: 2),
    // Padded: not tiled, the window-gathering kernels (both divisor rules).
    Pool2DParams(
      batch: 2, channels: 3, inHeight: 7, inWidth: 5, kernelHeight: 3, kernelWidth: 3, strideH: 2, strideW: 2,
      padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
    Pool2DParams(
      batch: 1, channels: 2, inHeight: 8, inWidth: 8, kernelHeight: 2, kernelWidth: 2, strideH: 2, strideW: 2,
      padTop: 1, padLeft: 0, padBottom: 0, padRight: 1),
  ]

  @Test("pool2d (tiled and padded) against a reference, with and without a pool", arguments: poolCases)
  func pooling(params: Pool2DParams) throws {
    let p = try params.validated()
    #expect(p.isTiled == (p.padTop + p.padLeft + p.padBottom + p.padRight == 0))
    let x = randomFloats(p.batch * p.channels * p.inHeight * p.inWidth, seed: 21)
    let outCount = p.batch * p.channels * p.outHeight * p.outWidth
    var expMax = [Double](repeating: 0, count: outCount)
    var expAvg = expMax
    var expAvgPad = expMax
    for plane in 0..<(p.batch * p.channels) {
      for oh in 0..<p.outHeight {
        for ow in 0..<p.outWidth {
          var (m, s, count, padded) = (-Double.infinity, 0.0, 0, 0)
          for ki in 0..<p.kernelHeight {
            for kj in 0..<p.kernelWidth {
              let iy = oh * p.strideH - p.padTop + ki
              let ix = ow * p.strideW - p.padLeft + kj
              if iy < p.inHeight + p.padBottom && ix < p.inWidth + p.padRight { padded += 1 }
              guard iy >= 0, iy < p.inHeight, ix >= 0, ix < p.inWidth else { continue }
              let v = Double(x[(plane * p.inHeight + iy) * p.inWidth + ix])
              m = max(m, v)
              s += v
              count += 1
            }
          }
          let o = (plane * p.outHeight + oh) * p.outWidth + ow
          expMax[o] = m
          expAvg[o] = s / Double(count)
          expAvgPad[o] = s / Double(padded)
        }
      }
    }
    let pool = WorkerPool(threadCount: 2)
    for workers in [nil, pool] {
      var out = [Float](repeating: .nan, count: outCount)
      pool2d(p, input: x, output: &out, max: true, pool: workers)
      #expect(firstMismatch(out, expMax) == nil, "max pool=\(workers != nil)")
      pool2d(p, input: x, output: &out, max: false, pool: workers)
      #expect(firstMismatch(out, expAvg) == nil, "avg pool=\(workers != nil)")
      pool2d(p, input: x, output: &out, max: false, countIncludePad: true, pool: workers)
      #expect(firstMismatch(out, expAvgPad) == nil, "avg incl. pad pool=\(workers != nil)")
    }
  }

  @Test("ChannelAffine on odd planes, in place, with and without a pool", arguments: [1, 7, 8, 13, 1024])
  func affine(spatial: Int) throws {
    let (batch, channels) = (3, 5)
    let mul = randomFloats(channels, seed: 31)
    let add = randomFloats(channels, seed: 32)
    let affine = try #require(ChannelAffine(multipliers: mul, addends: add))
    let x = randomFloats(batch * channels * spatial, seed: 33)
    let expected = x.indices.map { i in
      let c = i / spatial % channels
      return Double(x[i]) * Double(mul[c]) + Double(add[c])
    }
    let pool = WorkerPool(threadCount: 2)
    for workers in [nil, pool] {
      var y = [Float](repeating: .nan, count: x.count)
      affine.apply(x, &y, batch: batch, spatial: spatial, pool: workers)
      #expect(firstMismatch(y, expected) == nil)
      var inPlace = x
      inPlace.withUnsafeMutableBufferPointer { b in
        guard let base = b.baseAddress else { return }
        affine.apply(base, base, batch: batch, spatial: spatial, pool: workers)
      }
      #expect(firstMismatch(inPlace, expected) == nil)
    }
  }
}
