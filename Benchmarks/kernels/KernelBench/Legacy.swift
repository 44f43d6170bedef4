// The vector exp and erf PalisadeKernels had before issue 17 (lane-wise `clamped`, `.rounded()` and
// `SIMD8<Int32>(_:rounding:)`), copied here so `--vmath` can time before and after in one build.
import PalisadeKernels

enum Legacy {
  @inline(__always)
  static func exp(_ x: Float8) -> Float8 {
    let expHi: Float = 88.3762626647949
    let expLo: Float = -87.3365447505
    let clamped = x.clamped(lowerBound: Float8(repeating: expLo), upperBound: Float8(repeating: expHi))
    let fx = (clamped * 1.44269504088896341).rounded(.toNearestOrEven)
    var r = clamped - fx * 0.693359375
    r = r - fx * -2.12194440e-4
    var y = Float8(repeating: 1.9875691500e-4)
    y = Float8(repeating: 1.3981999507e-3).addingProduct(y, r)
    y = Float8(repeating: 8.3334519073e-3).addingProduct(y, r)
    y = Float8(repeating: 4.1665795894e-2).addingProduct(y, r)
    y = Float8(repeating: 1.6666665459e-1).addingProduct(y, r)
    y = Float8(repeating: 5.0000001201e-1).addingProduct(y, r)
    y = (r + 1).addingProduct(y, r * r)
    let n = SIMD8<Int32>(fx, rounding: .towardZero)
    var result = y * unsafeBitCast((n &+ 127) &<< 23, to: Float8.self)
    result.replace(with: Float8(repeating: .infinity), where: x .> expHi)
    result.replace(with: Float8(repeating: 0), where: x .< expLo)
    result.replace(with: x, where: x .!= x)
    return result
  }

  @inline(__always)
  static func erf(_ input: Float8) -> Float8 {
    let x = input.clamped(lowerBound: Float8(repeating: -4), upperBound: Float8(repeating: 4))
    let x2 = x * x
    var p = Float8(repeating: -2.72614225801306e-10)
    p = Float8(repeating: 2.77068142495902e-08).addingProduct(p, x2)
    p = Float8(repeating: -2.10102402082508e-06).addingProduct(p, x2)
    p = Float8(repeating: -5.69250639462346e-05).addingProduct(p, x2)
    p = Float8(repeating: -7.34990630326855e-04).addingProduct(p, x2)
    p = Float8(repeating: -2.95459980854025e-03).addingProduct(p, x2)
    p = Float8(repeating: -1.60960333262415e-02).addingProduct(p, x2)
    p = p * x
    var q = Float8(repeating: -1.45660718464996e-05)
    q = Float8(repeating: -2.13374055278905e-04).addingProduct(q, x2)
    q = Float8(repeating: -1.68282697438203e-03).addingProduct(q, x2)
    q = Float8(repeating: -7.37332916720468e-03).addingProduct(q, x2)
    q = Float8(repeating: -1.42647390514189e-02).addingProduct(q, x2)
    var result = p / q
    result.replace(with: input, where: input .!= input)
    return result
  }

  @inline(__always)
  static func gelu(_ x: Float8) -> Float8 {
    let half = x * 0.5
    return half.addingProduct(half, erf(x * 0.70710678118654752))
  }

  @inline(__always)
  static func map(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int, _ f: (Float8) -> Float8) {
    let rx = UnsafeRawPointer(x)
    let ry = UnsafeMutableRawPointer(y)
    var i = 0
    while i + 8 <= count {
      ry.storeBytes(
        of: f(rx.loadUnaligned(fromByteOffset: i * 4, as: Float8.self)), toByteOffset: i * 4, as: Float8.self)
      i += 8
    }
  }

  /// The kernels' row softmax as it was (pointwiseMax, the exp above).
  static func softmaxRows(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, n: Int) {
    for row in 0..<rows {
      let rx = UnsafeRawPointer(x + row * n)
      let ry = UnsafeMutableRawPointer(y + row * n)
      var mv = Float8(repeating: -.infinity)
      var i = 0
      while i + 8 <= n {
        mv = pointwiseMax(mv, rx.loadUnaligned(fromByteOffset: i * 4, as: Float8.self))
        i += 8
      }
      var m = mv.max()
      for j in i..<n { m = max(m, x[row * n + j]) }
      let vm = Float8(repeating: m)
      var sv = Float8()
      i = 0
      while i + 8 <= n {
        let e = exp(rx.loadUnaligned(fromByteOffset: i * 4, as: Float8.self) - vm)
        ry.storeBytes(of: e, toByteOffset: i * 4, as: Float8.self)
        sv += e
        i += 8
      }
      if i < n {
        var tail = Float8(repeating: -.infinity)
        for j in 0..<(n - i) { tail[j] = x[row * n + i + j] }
        let e = exp(tail - vm)
        for j in 0..<(n - i) { y[row * n + i + j] = e[j] }
        sv += e
      }
      let inv = 1 / sv.sum()
      for j in 0..<n { y[row * n + j] *= inv }
    }
  }
}
