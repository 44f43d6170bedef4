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
    @usableFromInline static let expHi: Float = 88.3762626647949
    @usableFromInline static let expLo: Float = -87.3365447505
    @usableFromInline static let log2e: Float = 1.44269504088896341
    @usableFromInline static let ln2Hi: Float = 0.693359375
    @usableFromInline static let ln2Lo: Float = -2.12194440e-4

    /// e^x, Cephes-style: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial, 2^n by exponent bits.
    @inlinable @inline(__always)
    static func exp(_ x: Float8) -> Float8 {
        let clamped = x.clamped(lowerBound: Float8(repeating: expLo), upperBound: Float8(repeating: expHi))
        let fx = (clamped * log2e).rounded(.toNearestOrEven)
        var r = clamped - fx * ln2Hi
        r = r - fx * ln2Lo
        var y = Float8(repeating: 1.9875691500e-4)
        y = Float8(repeating: 1.3981999507e-3).addingProduct(y, r)
        y = Float8(repeating: 8.3334519073e-3).addingProduct(y, r)
        y = Float8(repeating: 4.1665795894e-2).addingProduct(y, r)
        y = Float8(repeating: 1.6666665459e-1).addingProduct(y, r)
        y = Float8(repeating: 5.0000001201e-1).addingProduct(y, r)
        y = (r + 1).addingProduct(y, r * r)
        let n = SIMD8<Int32>(fx, rounding: .towardZero)
        let bits = (n &+ 127) &<< 23
        let scale = unsafeBitCast(bits, to: Float8.self)
        var result = y * scale
        // Outside the clamp range the true result is 0 or +inf; NaN stays NaN.
        result.replace(with: Float8(repeating: .infinity), where: x .> expHi)
        result.replace(with: Float8(repeating: 0), where: x .< expLo)
        result.replace(with: x, where: x .!= x)
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

    /// erf: the rational approximation used by Eigen / XLA (odd degree-13 over even degree-8 on [-4, 4]).
    @inlinable @inline(__always)
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

    @inlinable @inline(__always)
    static func relu(_ x: Float8) -> Float8 {
        // A select rather than max so that NaN propagates, as in onnxruntime.
        x.replacing(with: 0, where: x .< 0)
    }
}
