import Testing
import PalisadeKernels

@Suite("Softmax and layer norm")
struct NormalizationTests {
  @Test("row softmax", arguments: [1, 2, 7, 8, 13, 31, 100, 1000])
  func rowSoftmax(cols: Int) {
    let rows = 3
    var x = randomFloats(rows * cols, seed: UInt64(cols), in: -5...5)
    x[0] += 1000  // stability: a huge logit must not overflow
    var y = [Float](repeating: .nan, count: x.count)
    softmax(x, &y, outer: rows, axisLength: cols)
    #expect(firstMismatch(y, softmaxReference(x, outer: rows, axis: cols, inner: 1)) == nil)
  }

  @Test("softmax over a middle axis", arguments: [1, 3, 8, 11, 17])
  func middleAxisSoftmax(inner: Int) {
    let outer = 2
    let axis = 5
    let x = randomFloats(outer * axis * inner, seed: UInt64(inner), in: -30...30)
    var y = x
    y.withUnsafeMutableBufferPointer { p in
      softmax(p.baseAddress!, p.baseAddress!, outer: outer, axisLength: axis, inner: inner)  // in place
    }
    #expect(firstMismatch(y, softmaxReference(x, outer: outer, axis: axis, inner: inner)) == nil)
  }

  func softmaxReference(_ x: [Float], outer: Int, axis: Int, inner: Int) -> [Double] {
    var out = [Double](repeating: 0, count: x.count)
    for o in 0..<outer {
      for j in 0..<inner {
        let idx = (0..<axis).map { (o * axis + $0) * inner + j }
        let m = idx.map { Double(x[$0]) }.max() ?? 0
        let e = idx.map { expRef(Double(x[$0]) - m) }
        let s = e.reduce(0, +)
        for (n, i) in idx.enumerated() { out[i] = e[n] / s }
      }
    }
    return out
  }

  @Test("layer norm", arguments: [1, 7, 8, 31, 128, 257])
  func layerNormMatches(cols: Int) {
    let rows = 4
    let x = randomFloats(rows * cols, seed: UInt64(cols), in: -3...3).map { $0 + 100 }  // offset: tests cancellation
    let gamma = randomFloats(cols, seed: 7)
    let beta = randomFloats(cols, seed: 8)
    let eps: Float = 1e-5
    for useAffine in [false, true] {
      var y = [Float](repeating: .nan, count: x.count)
      gamma.withUnsafeBufferPointer { g in
        beta.withUnsafeBufferPointer { b in
          layerNorm(
            x, &y, rows: rows, cols: cols, gamma: useAffine ? g.baseAddress : nil,
            beta: useAffine ? b.baseAddress : nil, epsilon: eps)
        }
      }
      var expected = [Double](repeating: 0, count: x.count)
      for r in 0..<rows {
        let row = (0..<cols).map { Double(x[r * cols + $0]) }
        let mean = row.reduce(0, +) / Double(cols)
        let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(cols)
        for c in 0..<cols {
          var v = (row[c] - mean) / (variance + Double(eps)).squareRoot()
          if useAffine { v = v * Double(gamma[c]) + Double(beta[c]) }
          expected[r * cols + c] = v
        }
      }
      #expect(firstMismatch(y, expected, rel: 1e-4, abs: 1e-4) == nil, "cols=\(cols) affine=\(useAffine)")
    }
  }
}
