import PalisadeKernels
import Testing

/// The geometry entry points take values that come from model files: extremes throw, never trap.
@Suite struct HostileParameterTests {
  static let extremes = [Int.max, Int.max - 1, Int.max / 2 + 1, 1 << 62]

  @Test func convGeometryAtTheEdges() {
    for big in Self.extremes {
      // Padding pairs whose sum overflows (the sum was formed before it was checked).
      #expect(throws: KernelError.self) {
        _ = try Conv2DParams(
          batch: 1, inChannels: 1, inHeight: 8, inWidth: 8, outChannels: 1, kernelHeight: 3, kernelWidth: 3,
          padTop: big, padLeft: 0, padBottom: big, padRight: 0
        ).validated()
      }
      #expect(throws: KernelError.self) {
        _ = try Conv2DParams(
          batch: 1, inChannels: 1, inHeight: 8, inWidth: 8, outChannels: 1, kernelHeight: big, kernelWidth: 3,
          dilationH: big
        ).validated()
      }
      _ = try? Conv2DParams(
        batch: 1, inChannels: 1, inHeight: 8, inWidth: 8, outChannels: 1, kernelHeight: 3, kernelWidth: 3,
        strideH: big, strideW: big
      ).validated()
      #expect(throws: KernelError.self) {
        _ = try Conv2DParams(
          batch: big, inChannels: big, inHeight: 8, inWidth: 8, outChannels: 1, kernelHeight: 1, kernelWidth: 1
        ).validated()
      }
    }
    for bad in [Int.min, -1, 0] {
      #expect(throws: KernelError.self) {
        _ = try Conv2DParams(
          batch: 1, inChannels: 1, inHeight: 8, inWidth: 8, outChannels: 1, kernelHeight: 3, kernelWidth: 3,
          strideH: bad, padTop: bad == 0 ? -1 : bad, groups: bad
        ).validated()
      }
    }
  }

  @Test func poolGeometryAtTheEdges() {
    for big in Self.extremes {
      // Paddings below a huge kernel, whose sum overflows; ceil mode with a huge stride.
      #expect(throws: KernelError.self) {
        _ = try Pool2DParams(
          batch: 1, channels: 1, inHeight: 8, inWidth: 8, kernelHeight: big, kernelWidth: 2,
          padTop: big - 1, padBottom: big - 1
        ).validated()
      }
      for ceil in [false, true] {
        let p = try? Pool2DParams(
          batch: 1, channels: 1, inHeight: 8, inWidth: 8, kernelHeight: 2, kernelWidth: 2, strideH: big, strideW: big,
          padTop: 1, padLeft: 1, padBottom: 1, padRight: 1, ceilMode: ceil
        ).validated()
        #expect(p?.outHeight == 1, "stride \(big), ceil \(ceil): \(String(describing: p))")
      }
      #expect(throws: KernelError.self) {
        _ = try Pool2DParams(
          batch: 1, channels: 1, inHeight: big, inWidth: 8, kernelHeight: 2, kernelWidth: 2, padTop: 1, padBottom: 1
        ).validated()
      }
    }
    // ceil mode still rounds up where it should (the rewrite avoids forming span + stride - 1).
    let p = try? Pool2DParams(
      batch: 1, channels: 1, inHeight: 7, inWidth: 7, kernelHeight: 2, kernelWidth: 2, strideH: 2, strideW: 2,
      ceilMode: true
    ).validated()
    #expect(p?.outHeight == 4)
    let q = try? Pool2DParams(
      batch: 1, channels: 1, inHeight: 7, inWidth: 7, kernelHeight: 2, kernelWidth: 2, strideH: 2, strideW: 2,
      ceilMode: false
    ).validated()
    #expect(q?.outHeight == 3)
  }
}
