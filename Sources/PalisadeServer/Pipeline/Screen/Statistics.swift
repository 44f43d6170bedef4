import Foundation

/// Small numerical routines the screening stage needs.
enum Statistics {
  /// The standard normal quantile function (Acklam's rational approximation, relative error < 1.2e-9).
  static func normalQuantile(_ p: Double) -> Double {
    guard p > 0, p < 1 else { return p <= 0 ? -.infinity : .infinity }
    let a = [
      -3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
      -3.066479806614716e+01, 2.506628277459239e+00,
    ]
    let b = [
      -5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
      -1.328068155288572e+01,
    ]
    let c = [
      -7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
      4.374664141464968e+00, 2.938163982698783e+00,
    ]
    let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
    let low = 0.02425
    if p < low {
      let q = (-2 * Foundation.log(p)).squareRoot()
      return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
        / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    }
    if p > 1 - low { return -normalQuantile(1 - p) }
    let q = p - 0.5
    let r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
      / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
  }

  /// The Shapiro–Wilk W statistic (Royston's 1992 coefficients, as in algorithm AS R94), for 3 ≤ n ≤ 5000.
  /// Near 1 for a normal sample; PRADA flags a query stream whose distances give a W below its threshold.
  static func shapiroWilkW(_ sample: [Double]) -> Double? {
    ShapiroWilk(n: sample.count)?.w(sorted: sample.sorted())
  }

  /// Decile edges of a normal distribution, in standard deviations: drift bins with 10% expected mass each.
  static let normalDecileEdges: [Double] = (1...9).map { normalQuantile(Double($0) / 10) }
}

/// The Shapiro–Wilk test for one sample size: the coefficients depend only on n, so they are computed once (the
/// extraction monitor tests windows of the same size over and over; computing them took most of each test).
struct ShapiroWilk: Sendable {
  let n: Int
  /// a[1...n/2], 1-based like the algorithm (a[0] unused).
  let a: [Double]
  /// 2 Σ a[i]².
  let norm: Double

  init?(n: Int) {
    guard n >= 3, n <= 5000 else { return nil }
    self.n = n
    let half = n / 2
    var a = [Double](repeating: 0, count: half + 1)
    if n == 3 {
      a[1] = 0.5.squareRoot()
    } else {
      let an = Double(n)
      var summ2 = 0.0
      for i in 1...half {
        a[i] = Statistics.normalQuantile((Double(i) - 0.375) / (an + 0.25))
        summ2 += a[i] * a[i]
      }
      summ2 *= 2
      let ssumm2 = summ2.squareRoot()
      let rsn = 1 / an.squareRoot()
      func poly(_ c: [Double], _ x: Double) -> Double { c.reversed().reduce(0) { $0 * x + $1 } }
      let c1 = [0.0, 0.221157, -0.147981, -2.07119, 4.434685, -2.706056]
      let c2 = [0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633]
      let a1 = poly(c1, rsn) - a[1] / ssumm2
      let i1: Int
      let fac: Double
      if n > 5 {
        i1 = 3
        let a2 = -a[2] / ssumm2 + poly(c2, rsn)
        fac = ((summ2 - 2 * a[1] * a[1] - 2 * a[2] * a[2]) / (1 - 2 * a1 * a1 - 2 * a2 * a2)).squareRoot()
        a[2] = a2
      } else {
        i1 = 2
        fac = ((summ2 - 2 * a[1] * a[1]) / (1 - 2 * a1 * a1)).squareRoot()
      }
      a[1] = a1
      if i1 <= half { for i in i1...half { a[i] /= -fac } }
    }
    self.a = a
    var norm = 0.0
    for i in 1...half { norm += 2 * a[i] * a[i] }
    self.norm = norm
  }

  /// W of a sample of `n` values sorted ascending; nil for another size or a constant sample.
  func w(sorted x: [Double]) -> Double? {
    guard x.count == n, let first = x.first, let last = x.last, last - first > 1e-300 else { return nil }
    // W is the squared correlation of the ordered sample with the antisymmetric coefficient vector.
    var total = 0.0
    for v in x { total += v }
    let mean = total / Double(n)
    var ss = 0.0
    for v in x { ss += (v - mean) * (v - mean) }
    var num = 0.0
    for i in 1...(n / 2) { num += a[i] * (x[n - i] - x[i - 1]) }
    guard ss > 0, norm > 0 else { return nil }
    return min(1, num * num / (norm * ss))
  }
}
