// Vectorised transcendental functions on SIMD8<Float>.
//
// They are written once on SIMD8 so that the same source lowers to AVX2 (one ymm register) on x86-64-v3 and
// to two NEON q registers on arm64. Accuracy is a few ulp over the float range, well inside the 1e-4 relative
// / 1e-5 absolute tolerance our runtime promises against onnxruntime.

/// 8-lane float vector: the unit the kernels compute on.
public typealias Float8 = SIMD8<Float>

@usableFromInline
enum VMath {
  // Cephes expf constants.
  @usableFromInline static let log2e: Float = 1.44269504088896341
  @usableFromInline static let ln2Hi: Float = 0.693359375
  @usableFromInline static let ln2Lo: Float = -2.12194440e-4
  /// Inputs are clamped to [expMin, expMax] first: below, e^x rounds to 0 (e^-105 < half the smallest
  /// subnormal); above, to +inf (e^89 > Float.greatestFiniteMagnitude). Between, n stays in [-152, 129].
  @usableFromInline static let expMin: Float = -105
  @usableFromInline static let expMax: Float = 89
  /// 1.5 * 2^23: adding it to a float of magnitude below 2^22 rounds that float to the nearest integer, which
  /// then sits in the low mantissa bits.
  @usableFromInline static let roundingMagic: Float = 12_582_912

  /// e^x, Cephes-style: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial, 2^n by exponent bits.
  ///
  /// Every step is a vector instruction: the clamp and NaN handling are compares and blends, the rounding is
  /// the 1.5 * 2^23 addition, n is read from the rounded float's bits. (`clamped`, `.rounded()` and
  /// `SIMD8<Int32>(_:rounding:)` lower lane by lane in the standard library, ~15 ns per element here.)
  /// 2^n is applied as two factors 2^(n/2) and 2^(n - n/2), each a normal float, so results near the top of the
  /// range overflow to +inf and results below Float.leastNormalMagnitude come out subnormal, as in libm.
  /// Accuracy against Foundation's exp rounded to Float, over every third float in [-106, 90]: relative error at
  /// most 1.2e-7 (2^-23, one ulp just above 1) where the result is a normal float, absolute error at most 2^-149
  /// (one subnormal step) where it is subnormal; exp(-inf) = 0, exp(+inf) = +inf, NaN stays NaN
  /// (VectorMathTests checks these bounds on random inputs and the edges).
  @inlinable @inline(__always)
  static func exp(_ x: Float8) -> Float8 {
    let lo = Float8(repeating: expMin)
    let hi = Float8(repeating: expMax)
    let clamped = x.replacing(with: lo, where: x .< lo).replacing(with: hi, where: x .> hi)
    let magic = Float8(repeating: roundingMagic)
    let t = magic.addingProduct(clamped, Float8(repeating: log2e))  // round(x log2 e) + magic, one rounding
    let fx = t - magic
    // Cody-Waite: fx * ln2Hi is exact (ln2Hi has 9 significant bits, |fx| <= 152).
    var r = clamped.addingProduct(fx, Float8(repeating: -ln2Hi))
    r = r.addingProduct(fx, Float8(repeating: -ln2Lo))
    var y = Float8(repeating: 1.9875691500e-4)
    y = Float8(repeating: 1.3981999507e-3).addingProduct(y, r)
    y = Float8(repeating: 8.3334519073e-3).addingProduct(y, r)
    y = Float8(repeating: 4.1665795894e-2).addingProduct(y, r)
    y = Float8(repeating: 1.6666665459e-1).addingProduct(y, r)
    y = Float8(repeating: 5.0000001201e-1).addingProduct(y, r)
    y = (r + 1).addingProduct(y, r * r)
    let n = unsafeBitCast(t, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
    let n1 = n &>> 1
    let n2 = n &- n1
    let scale1 = unsafeBitCast((n1 &+ 127) &<< 23, to: Float8.self)
    let scale2 = unsafeBitCast((n2 &+ 127) &<< 23, to: Float8.self)
    var result = y * scale1 * scale2
    result.replace(with: x, where: x .!= x)  // NaN stays NaN
    return result
  }

  /// Logistic sigmoid 1 / (1 + e^-x).
  @inlinable @inline(__always)
  static func sigmoid(_ x: Float8) -> Float8 {
    1 / (1 + exp(-x))
  }

  /// tanh: odd polynomial near 0 (where 1 - 2/(e^2x + 1) would cancel), the exp form elsewhere.
  @inlinable @inline(__always)
  static func tanh(_ x: Float8) -> Float8 {
    let ax = absolute(x)
    let z = x * x
    var p = Float8(repeating: -5.70498872745e-3)
    p = Float8(repeating: 2.06390887954e-2).addingProduct(p, z)
    p = Float8(repeating: -5.37397155531e-2).addingProduct(p, z)
    p = Float8(repeating: 1.33314422036e-1).addingProduct(p, z)
    p = Float8(repeating: -3.33332819422e-1).addingProduct(p, z)
    let small = x.addingProduct(p * z, x)
    let e = exp(2 * ax)
    var large = 1 - 2 / (e + 1)
    large.replace(with: -large, where: x .< 0)
    var result = large
    result.replace(with: small, where: ax .< 0.625)
    return result
  }

  /// erf: the rational approximation used by Eigen / XLA (odd degree-13 over even degree-8 on [-4, 4]), clamped
  /// by compares and blends (`clamped` lowers lane by lane, ~1 ns per element).
  @inlinable @inline(__always)
  static func erf(_ input: Float8) -> Float8 {
    let four = Float8(repeating: 4)
    let x = input.replacing(with: -four, where: input .< -four).replacing(with: four, where: input .> four)
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

  /// GELU, exact (erf) form: 0.5 x (1 + erf(x / sqrt 2)).
  @inlinable @inline(__always)
  static func gelu(_ x: Float8) -> Float8 {
    let half = x * 0.5
    return half.addingProduct(half, erf(x * 0.70710678118654752))
  }

  @inlinable @inline(__always)
  static func absolute(_ x: Float8) -> Float8 {
    unsafeBitCast(unsafeBitCast(x, to: SIMD8<UInt32>.self) & 0x7fff_ffff, to: Float8.self)
  }

  /// Lane-wise maximum by compare and blend (`pointwiseMax` lowers lane by lane). A NaN in `b` is not taken.
  @inlinable @inline(__always)
  static func max(_ a: Float8, _ b: Float8) -> Float8 {
    a.replacing(with: b, where: b .> a)
  }

  @inlinable @inline(__always)
  static func relu(_ x: Float8) -> Float8 {
    // A select rather than max so that NaN propagates, as in onnxruntime.
    x.replacing(with: 0, where: x .< 0)
  }
}
