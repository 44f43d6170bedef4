/// Geometry of a 2-D convolution over NCHW tensors (ONNX `Conv` semantics).
///
/// Weights are `[outChannels, inChannels / groups, kernelHeight, kernelWidth]`; output is
/// `[batch, outChannels, outHeight, outWidth]`. Pads follow ONNX order: top, left, bottom, right.
public struct Conv2DParams: Sendable, Equatable, Hashable {
  public var batch: Int
  public var inChannels: Int
  public var inHeight: Int
  public var inWidth: Int
  public var outChannels: Int
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
  public var groups: Int
  /// Output height and width; computed and checked by ``validated()``.
  public private(set) var outHeight = 0
  public private(set) var outWidth = 0

  public init(
    batch: Int, inChannels: Int, inHeight: Int, inWidth: Int,
    outChannels: Int, kernelHeight: Int, kernelWidth: Int,
    strideH: Int = 1, strideW: Int = 1,
    padTop: Int = 0, padLeft: Int = 0, padBottom: Int = 0, padRight: Int = 0,
    dilationH: Int = 1, dilationW: Int = 1, groups: Int = 1
  ) {
    self.batch = batch
    self.inChannels = inChannels
    self.inHeight = inHeight
    self.inWidth = inWidth
    self.outChannels = outChannels
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
    self.groups = groups
  }

  /// Checks every parameter (they come from model files) and fills in the output size.
  public func validated() throws(KernelError) -> Conv2DParams {
    let fields = [batch, inChannels, inHeight, inWidth, outChannels, kernelHeight, kernelWidth]
    guard fields.allSatisfy({ $0 >= 0 }) else { throw .invalidParameter("negative conv dimension") }
    guard kernelHeight >= 1, kernelWidth >= 1 else { throw .invalidParameter("empty conv kernel") }
    guard strideH >= 1, strideW >= 1, dilationH >= 1, dilationW >= 1 else {
      throw .invalidParameter("conv stride and dilation must be >= 1")
    }
    guard [padTop, padLeft, padBottom, padRight].allSatisfy({ $0 >= 0 }) else {
      throw .invalidParameter("negative conv padding")
    }
    guard groups >= 1, inChannels % groups == 0, outChannels % groups == 0 else {
      throw .invalidParameter("conv groups \(groups) must divide channels \(inChannels) and \(outChannels)")
    }
    var p = self
    p.outHeight = try convOutputSize(
      inHeight, kernel: kernelHeight, stride: strideH, dilation: dilationH, padBegin: padTop, padEnd: padBottom)
    p.outWidth = try convOutputSize(
      inWidth, kernel: kernelWidth, stride: strideW, dilation: dilationW, padBegin: padLeft, padEnd: padRight)
    // Every buffer size derived from these must fit in Int.
    _ = try elementCount([batch, inChannels, inHeight, inWidth])
    _ = try elementCount([batch, outChannels, p.outHeight, p.outWidth])
    _ = try elementCount([outChannels, inChannels, kernelHeight, kernelWidth])
    _ = try elementCount([inChannels, kernelHeight, kernelWidth, p.outHeight, p.outWidth])
    return p
  }

  /// Floats of scratch ``conv2d(_:input:weight:bias:output:workspace:activation:pool:)`` needs (0 for 1x1,
  /// stride 1, unpadded convolutions, which read the input directly).
  public var workspaceCount: Int {
    if isPointwise { return 0 }
    return (inChannels / max(groups, 1)) * kernelHeight * kernelWidth * outHeight * outWidth
  }

  var isPointwise: Bool {
    kernelHeight == 1 && kernelWidth == 1 && strideH == 1 && strideW == 1
      && padTop == 0 && padLeft == 0 && padBottom == 0 && padRight == 0
  }
}

func convOutputSize(
  _ input: Int, kernel: Int, stride: Int, dilation: Int, padBegin: Int, padEnd: Int
) throws(KernelError) -> Int {
  // Every step checked: the parameters may come straight from a model file.
  guard input >= 0, kernel >= 1, stride >= 1, dilation >= 1, padBegin >= 0, padEnd >= 0 else {
    throw .invalidParameter("conv geometry")
  }
  let (extent, o1) = dilation.multipliedReportingOverflow(by: kernel - 1)
  let (pads, o2) = padBegin.addingReportingOverflow(padEnd)
  let (padded, o3) = input.addingReportingOverflow(pads)
  guard !o1, !o2, !o3 else { throw .overflow("conv geometry") }
  let span = padded - extent - 1
  guard span >= 0 else { throw .invalidParameter("conv kernel larger than padded input") }
  return span / stride + 1
}

/// 2-D convolution (NCHW) as im2col + SGEMM per batch item and group, with bias and activation fused into the
/// GEMM epilogue. `params` must come from ``Conv2DParams/validated()``.
///
/// - Parameters:
///   - bias: `outChannels` values or `nil`.
///   - workspace: at least `params.workspaceCount` floats (preallocated by the execution plan).
public func conv2d(
  _ params: Conv2DParams,
  input: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
  output: UnsafeMutablePointer<Float>, workspace: UnsafeMutablePointer<Float>?,
  activation: Activation = .identity, pool: WorkerPool? = nil
) {
  let p = params  // unvalidated params have outHeight == 0 and compute nothing
  let cinG = p.inChannels / p.groups
  let coutG = p.outChannels / p.groups
  let kdim = cinG * p.kernelHeight * p.kernelWidth
  let spatial = p.outHeight * p.outWidth
  let inSpatial = p.inHeight * p.inWidth
  if spatial == 0 || coutG == 0 { return }
  precondition(p.isPointwise || workspace != nil, "conv2d: workspace required")
  for n in 0..<p.batch {
    for g in 0..<p.groups {
      let x = input + (n * p.inChannels + g * cinG) * inSpatial
      let y = output + (n * p.outChannels + g * coutG) * spatial
      let w = weight + g * coutG * kdim
      let columns: UnsafePointer<Float>
      if p.isPointwise {
        columns = x
      } else if let workspace {
        im2col(p, x, cinG, workspace)
        columns = UnsafePointer(workspace)
      } else {
        return
      }
      let epilogue = GemmEpilogue(
        bias: bias.map { .perRow($0 + g * coutG) } ?? .none, activation: activation)
      sgemm(
        transA: false, transB: false, m: coutG, n: spatial, k: kdim, alpha: 1,
        a: w, lda: max(kdim, 1), b: columns, ldb: spatial, beta: 0, c: y, ldc: spatial,
        epilogue: epilogue, pool: pool)
    }
  }
}

/// Unfolds one group of one image into `[cinG * kh * kw, outH * outW]` columns (zeros for padding).
func im2col(_ p: Conv2DParams, _ x: UnsafePointer<Float>, _ cinG: Int, _ col: UnsafeMutablePointer<Float>) {
  let outH = p.outHeight
  let outW = p.outWidth
  var dst = col
  for c in 0..<cinG {
    let plane = x + c * p.inHeight * p.inWidth
    for ki in 0..<p.kernelHeight {
      for kj in 0..<p.kernelWidth {
        let dy = ki * p.dilationH - p.padTop
        let dx = kj * p.dilationW - p.padLeft
        // Output columns whose input column is inside the image: ow in [owLo, owHi).
        let owLo = min(outW, max(0, (-dx + p.strideW - 1) / p.strideW))
        let owHi = max(owLo, min(outW, (p.inWidth - dx + p.strideW - 1) / p.strideW))
        for oh in 0..<outH {
          let iy = oh * p.strideH + dy
          let row = dst + oh * outW
          if iy < 0 || iy >= p.inHeight {
            row.update(repeating: 0, count: outW)
            continue
          }
          let src = plane + iy * p.inWidth + dx
          if owLo > 0 { row.update(repeating: 0, count: owLo) }
          if p.strideW == 1 {
            (row + owLo).update(from: src + owLo, count: owHi - owLo)
          } else {
            for ow in owLo..<owHi { row[ow] = src[ow * p.strideW] }
          }
          if owHi < outW { (row + owHi).update(repeating: 0, count: outW - owHi) }
        }
        dst += outH * outW
      }
    }
  }
}
