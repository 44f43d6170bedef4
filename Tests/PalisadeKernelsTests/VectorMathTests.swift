import Foundation
import PalisadeKernels
import Testing

/// The vector exp (what softmax, sigmoid, tanh and the runtime's Exp run on) against Foundation's exp.
@Suite("Vector exp, erf and GELU against Foundation")
struct VectorMathTests {
  /// e^x through the kernels' public entry point (8-lane body and padded tail alike).
  static func vectorExp(_ x: [Float]) -> [Float] {
    var y = [Float](repeating: 0, count: x.count)
    x.withUnsafeBufferPointer { px in
      y.withUnsafeMutableBufferPointer { py in
        guard let px = px.baseAddress, let py = py.baseAddress else { return }
        unary(.exp, px, out: py, count: x.count)
      }
    }
    return y
  }

  /// Stated bounds (VMath.exp's doc comment, measured there over every third float): relative error <= 1.2e-7
  /// where e^x is a normal float, absolute error <= 2^-149 where it is subnormal. Checked here over [-106, 90]
  /// (past both ends of the float range of e^x) at 512K random points plus fine grids around 0 and the ends.
  @Test func expAccuracyOverTheWholeRange() {
    var x = randomFloats(1 << 19, seed: 17, in: -106...90)
    for i in -4096...4096 { x.append(Float(i) / 4096) }
    for edge: Float in [-103.97, -87.34, 88.72] {
      for i in -2048...2048 { x.append(edge + Float(i) * 1e-4) }
    }
    let y = Self.vectorExp(x)
    var worstRelative = 0.0
    var worstRelativeAt: Float = 0
    var worstSubnormal = 0.0
    for (xi, yi) in zip(x, y) {
      let reference = Float(Foundation.exp(Double(xi)))  // correctly rounded in practice
      if reference.isInfinite {
        #expect(yi == .infinity, "exp(\(xi)) = \(yi), want +inf")
      } else if reference >= .leastNormalMagnitude {
        let e = Swift.abs(Double(yi) - Double(reference)) / Double(reference)
        if e > worstRelative {
          worstRelative = e
          worstRelativeAt = xi
        }
      } else {
        worstSubnormal = max(worstSubnormal, Swift.abs(Double(yi) - Double(reference)))
      }
    }
    #expect(worstRelative <= 1.2e-7, "relative error \(worstRelative) at x = \(worstRelativeAt)")
    #expect(worstSubnormal <= Double(Float.leastNonzeroMagnitude), "subnormal error \(worstSubnormal)")
  }

  @Test func expSpecialValues() {
    let x: [Float] = [
      -.infinity, .infinity, .nan, 0, -0.0, .leastNonzeroMagnitude, -.leastNormalMagnitude,
      .greatestFiniteMagnitude, -.greatestFiniteMagnitude, 88.72, 88.73, -103.5, -104.5, -200, 200, 1, -1,
    ]
    let y = Self.vectorExp(x)
    #expect(y[0] == 0)
    #expect(y[1] == .infinity)
    #expect(y[2].isNaN)
    #expect(y[3] == 1 && y[4] == 1 && y[5] == 1 && y[6] == 1)
    #expect(y[7] == .infinity)
    #expect(y[8] == 0)
    #expect(y[9].isFinite && y[9] > 3.3e38, "exp(88.72) = \(y[9])")
    #expect(y[10] == .infinity)
    #expect(y[11] > 0 && y[11] < .leastNormalMagnitude, "exp(-103.5) = \(y[11]) should be subnormal")
    #expect(y[12] == 0)
    #expect(y[13] == 0 && y[14] == .infinity)
    #expect(Swift.abs(y[15] - Float(M_E)) <= Float(M_E).ulp)
    #expect(Swift.abs(y[16] - Float(1 / M_E)) <= Float(1 / M_E).ulp)
    // NaN in any lane leaves the other lanes alone.
    let mixed = Self.vectorExp([1, .nan, 2, 3, 4, 5, 6, 7, .nan])
    #expect(mixed[1].isNaN && mixed[8].isNaN && Swift.abs(mixed[2] - Float(Foundation.exp(2.0))) < 1e-5)
  }

  @Test func erfAndGeluAgainstFoundation() {
    let x = randomFloats(1 << 16, seed: 5, in: -8...8) + [0, -0.0, 4, -4, 30, -30, .infinity, -.infinity]
    for (op, reference) in [
      (UnaryOp.erf, { (v: Double) in Foundation.erf(v) }),
      (.gelu, { (v: Double) in 0.5 * v * (1 + Foundation.erf(v / 2.0.squareRoot())) }),
    ] {
      var y = [Float](repeating: 0, count: x.count)
      x.withUnsafeBufferPointer { px in
        y.withUnsafeMutableBufferPointer { py in
          guard let px = px.baseAddress, let py = py.baseAddress else { return }
          unary(op, px, out: py, count: x.count)
        }
      }
      var worst = 0.0
      for (xi, yi) in zip(x, y) where xi.isFinite {
        worst = max(worst, Swift.abs(Double(yi) - reference(Double(xi))) / max(1, Swift.abs(reference(Double(xi)))))
      }
      #expect(worst <= 2e-6, "\(op): error \(worst)")
    }
    var nan: [Float] = [.nan]
    nan.withUnsafeMutableBufferPointer { p in
      guard let b = p.baseAddress else { return }
      unary(.erf, b, out: b, count: 1)
    }
    #expect(nan[0].isNaN)
  }
}
