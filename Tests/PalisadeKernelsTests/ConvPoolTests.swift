import Testing
import PalisadeKernels

func convReference(_ p: Conv2DParams, _ x: [Float], _ w: [Float], _ bias: [Float]?, relu: Bool) -> [Double] {
  let cinG = p.inChannels / p.groups
  let coutG = p.outChannels / p.groups
  var out = [Double](repeating: 0, count: p.batch * p.outChannels * p.outHeight * p.outWidth)
  for n in 0..<p.batch {
    for co in 0..<p.outChannels {
      let g = co / coutG
      for oh in 0..<p.outHeight {
        for ow in 0..<p.outWidth {
          var s = bias.map { Double($0[co]) } ?? 0
          for ci in 0..<cinG {
            for ki in 0..<p.kernelHeight {
              for kj in 0..<p.kernelWidth {
                let iy = oh * p.strideH - p.padTop + ki * p.dilationH
                let ix = ow * p.strideW - p.padLeft + kj * p.dilationW
                guard iy >= 0, iy < p.inHeight, ix >= 0, ix < p.inWidth else { continue }
                let xv = x[((n * p.inChannels + g * cinG + ci) * p.inHeight + iy) * p.inWidth + ix]
                let wv = w[((co * cinG + ci) * p.kernelHeight + ki) * p.kernelWidth + kj]
                s += Double(xv) * Double(wv)
              }
            }
          }
          if relu { s = max(s, 0) }
          out[((n * p.outChannels + co) * p.outHeight + oh) * p.outWidth + ow] = s
        }
      }
    }
  }
  return out
}

@Suite("Convolution and pooling")
struct ConvPoolTests {
  static let convCases: [Conv2DParams] = [
    Conv2DParams(
      batch: 1, inChannels: 3, inHeight: 8, inWidth: 8, outChannels: 4, kernelHeight: 3, kernelWidth: 3,
      padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
    Conv2DParams(
      batch: 2, inChannels: 2, inHeight: 7, inWidth: 9, outChannels: 5, kernelHeight: 3, kernelWidth: 2,
      strideH: 2, strideW: 3, padTop: 1, padLeft: 0, padBottom: 2, padRight: 1),
    Conv2DParams(
      batch: 1, inChannels: 4, inHeight: 11, inWidth: 10, outChannels: 6, kernelHeight: 3, kernelWidth: 3,
      padTop: 2, padLeft: 2, padBottom: 2, padRight: 2, dilationH: 2, dilationW: 2, groups: 2),
    Conv2DParams(
      batch: 1, inChannels: 6, inHeight: 5, inWidth: 5, outChannels: 6, kernelHeight: 3, kernelWidth: 3,
      padTop: 1, padLeft: 1, padBottom: 1, padRight: 1, groups: 6),  // depthwise
    Conv2DParams(batch: 2, inChannels: 7, inHeight: 4, inWidth: 6, outChannels: 13, kernelHeight: 1, kernelWidth: 1),
    Conv2DParams(
      batch: 1, inChannels: 3, inHeight: 13, inWidth: 13, outChannels: 8, kernelHeight: 5, kernelWidth: 5,
      strideH: 2, strideW: 2),
    Conv2DParams(batch: 1, inChannels: 1, inHeight: 1, inWidth: 1, outChannels: 1, kernelHeight: 1, kernelWidth: 1),
    Conv2DParams(
      batch: 1, inChannels: 2, inHeight: 3, inWidth: 3, outChannels: 2, kernelHeight: 3, kernelWidth: 3,
      padTop: 4, padLeft: 4, padBottom: 4, padRight: 4, dilationH: 3, dilationW: 3),
  ]

  @Test("conv2d against a direct reference", arguments: convCases)
  func conv(params: Conv2DParams) throws {
    let p = try params.validated()
    let x = randomFloats(p.batch * p.inChannels * p.inHeight * p.inWidth, seed: 1)
    let w = randomFloats(p.outChannels * (p.inChannels / p.groups) * p.kernelHeight * p.kernelWidth, seed: 2)
    let bias = randomFloats(p.outChannels, seed: 3)
    var workspace = [Float](repeating: .nan, count: max(p.workspaceCount, 1))
    for (useBias, relu) in [(false, false), (true, true)] {
      var y = [Float](repeating: .nan, count: p.batch * p.outChannels * p.outHeight * p.outWidth)
      bias.withUnsafeBufferPointer { pb in
        workspace.withUnsafeMutableBufferPointer { pw in
          conv2d(
            p, input: x, weight: w, bias: useBias ? pb.baseAddress : nil, output: &y,
            workspace: pw.baseAddress, activation: relu ? .relu : .identity)
        }
      }
      let expected = convReference(p, x, w, useBias ? bias : nil, relu: relu)
      #expect(firstMismatch(y, expected, rel: 1e-4, abs: 1e-4) == nil, "\(p) bias=\(useBias)")
    }
  }

  @Test("conv2d with a worker pool")
  func convPooled() throws {
    let pool = WorkerPool(threadCount: 2)
    let p = try Conv2DParams(
      batch: 1, inChannels: 16, inHeight: 20, inWidth: 20, outChannels: 32,
      kernelHeight: 3, kernelWidth: 3, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1
    ).validated()
    let x = randomFloats(16 * 400, seed: 4)
    let w = randomFloats(32 * 16 * 9, seed: 5)
    var y = [Float](repeating: 0, count: 32 * 400)
    var workspace = [Float](repeating: 0, count: p.workspaceCount)
    workspace.withUnsafeMutableBufferPointer { pw in
      conv2d(p, input: x, weight: w, bias: nil, output: &y, workspace: pw.baseAddress, pool: pool)
    }
    #expect(firstMismatch(y, convReference(p, x, w, nil, relu: false), rel: 1e-4, abs: 1e-4) == nil)
  }

  @Test("invalid conv parameters throw")
  func convErrors() {
    let base = Conv2DParams(
      batch: 1, inChannels: 3, inHeight: 4, inWidth: 4, outChannels: 4, kernelHeight: 3, kernelWidth: 3)
    var p = base
    p.groups = 2
    #expect(throws: KernelError.self) { try p.validated() }
    p = base
    p.strideH = 0
    #expect(throws: KernelError.self) { try p.validated() }
    p = base
    p.kernelHeight = 9
    #expect(throws: KernelError.self) { try p.validated() }
    p = base
    p.inHeight = Int.max / 2
    p.inWidth = Int.max / 2
    #expect(throws: KernelError.self) { try p.validated() }
  }

  static let poolCases: [Pool2DParams] = [
    Pool2DParams(
      batch: 1, channels: 2, inHeight: 6, inWidth: 6, kernelHeight: 2, kernelWidth: 2, strideH: 2, strideW: 2),
    Pool2DParams(
      batch: 2, channels: 3, inHeight: 7, inWidth: 5, kernelHeight: 3, kernelWidth: 3,
      padTop: 1, padLeft: 1, padBottom: 1, padRight: 1),
    Pool2DParams(
      batch: 1, channels: 1, inHeight: 7, inWidth: 7, kernelHeight: 3, kernelWidth: 3, strideH: 2, strideW: 2,
      padTop: 1, padLeft: 1, padBottom: 1, padRight: 1, ceilMode: true),
    Pool2DParams(
      batch: 1, channels: 2, inHeight: 8, inWidth: 9, kernelHeight: 2, kernelWidth: 3, strideH: 3, strideW: 2,
      ceilMode: true),
    Pool2DParams(
      batch: 1, channels: 1, inHeight: 9, inWidth: 9, kernelHeight: 3, kernelWidth: 3, strideH: 1, strideW: 1,
      dilationH: 2, dilationW: 2),
  ]

  @Test("max and average pooling", arguments: poolCases)
  func pooling(params: Pool2DParams) throws {
    let p = try params.validated()
    let x = randomFloats(p.batch * p.channels * p.inHeight * p.inWidth, seed: 9)
    let outCount = p.batch * p.channels * p.outHeight * p.outWidth
    var maxOut = [Float](repeating: .nan, count: outCount)
    var avgOut = maxOut
    var avgPadOut = maxOut
    maxPool2d(p, input: x, output: &maxOut)
    avgPool2d(p, input: x, output: &avgOut, countIncludePad: false)
    avgPool2d(p, input: x, output: &avgPadOut, countIncludePad: true)
    var expMax = [Double](repeating: 0, count: outCount)
    var expAvg = expMax
    var expAvgPad = expMax
    for plane in 0..<(p.batch * p.channels) {
      for oh in 0..<p.outHeight {
        for ow in 0..<p.outWidth {
          var m = -Double.infinity
          var s = 0.0
          var count = 0
          var padded = 0
          for ki in 0..<p.kernelHeight {
            for kj in 0..<p.kernelWidth {
              let iy = oh * p.strideH - p.padTop + ki * p.dilationH
              let ix = ow * p.strideW - p.padLeft + kj * p.dilationW
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
    #expect(firstMismatch(maxOut, expMax) == nil, "max \(p)")
    #expect(firstMismatch(avgOut, expAvg) == nil, "avg \(p)")
    #expect(firstMismatch(avgPadOut, expAvgPad) == nil, "avg pad \(p)")
  }

  @Test("pool output sizes follow ONNX / PyTorch ceil mode")
  func poolSizes() throws {
    // PyTorch: MaxPool2d(3, stride=2, padding=1, ceil_mode=True) on 7x7 -> 4x4; on 8x8 -> 5x5? (last window rule)
    let a = try Pool2DParams(
      batch: 1, channels: 1, inHeight: 7, inWidth: 8, kernelHeight: 3, kernelWidth: 3,
      strideH: 2, strideW: 2, padTop: 1, padLeft: 1, padBottom: 1, padRight: 1,
      ceilMode: true
    ).validated()
    #expect(a.outHeight == 4 && a.outWidth == 5)
    let b = try Pool2DParams(
      batch: 1, channels: 1, inHeight: 6, inWidth: 6, kernelHeight: 2, kernelWidth: 2,
      strideH: 2, strideW: 2, ceilMode: true
    ).validated()
    #expect(b.outHeight == 3)
    let c = try Pool2DParams(
      batch: 1, channels: 1, inHeight: 5, inWidth: 5, kernelHeight: 2, kernelWidth: 2,
      strideH: 2, strideW: 2, ceilMode: true
    ).validated()
    #expect(c.outHeight == 3)
  }

  @Test("global average pool", arguments: [1, 7, 8, 49, 100])
  func globalAverage(spatial: Int) {
    let planes = 5
    let x = randomFloats(planes * spatial, seed: UInt64(spatial))
    var y = [Float](repeating: .nan, count: planes)
    globalAveragePool(x, output: &y, planes: planes, spatial: spatial)
    let expected = (0..<planes).map { i in
      (0..<spatial).map { Double(x[i * spatial + $0]) }.reduce(0, +) / Double(spatial)
    }
    #expect(firstMismatch(y, expected) == nil)
  }
}
