public import PalisadeCore

/// Scores how far a request's inputs lie from the model's training data: per row, the Mahalanobis distance to
/// the reference mean (full covariance through its Cholesky factor, or the diagonal) and the largest per-feature
/// z-score. Built once per loaded model by the server's screening stage, and by `palisade bundle stats` to suggest
/// a threshold scored exactly as the server will score.
public struct OODScorer: Sendable {
  /// One input's compiled statistics.
  struct Compiled: Sendable {
    var mean: [Double]
    /// Per-feature standard deviation after the variance floor (z-scores and the diagonal case).
    var scale: [Double]
    /// Lower-triangular Cholesky factor of the (floored) covariance, row-major; nil for the diagonal case.
    var cholesky: [Double]?
  }

  /// The score of one request: its worst row.
  public struct Score: Sendable, Equatable {
    /// Largest Mahalanobis distance over the rows of every screened input.
    public var mahalanobis: Double
    /// Largest absolute z-score of any feature in any row.
    public var maxZ: Double
  }

  let inputs: [String: Compiled]

  /// Compiles `profile`. Variances are floored at 1e-3 × their mean (features constant in the training data would
  /// otherwise score any change as infinitely far); a covariance that is not positive definite after the floor
  /// falls back to its diagonal.
  public init(_ profile: ScreeningProfile) {
    var compiled: [String: Compiled] = [:]
    for (name, ref) in profile.references {
      let k = ref.mean.count
      guard k > 0 else { continue }
      var variance = ref.covarianceDiagonal ?? ref.std.map { $0 * $0 }
      if let cov = ref.covariance, cov.count == k { variance = (0..<k).map { cov[$0].count == k ? cov[$0][$0] : 0 } }
      guard variance.count == k else { continue }
      let floor = Swift.max(1e-12, 1e-3 * variance.reduce(0, +) / Double(k))
      let floored = variance.map { Swift.max($0, floor) }
      var chol: [Double]? = nil
      if let cov = ref.covariance, cov.count == k, cov.allSatisfy({ $0.count == k }) {
        var m = [Double](repeating: 0, count: k * k)
        for i in 0..<k { for j in 0..<k { m[i * k + j] = cov[i][j] } }
        for i in 0..<k { m[i * k + i] = Swift.max(m[i * k + i], 0) + floor }
        chol = Self.cholesky(m, k)
      }
      compiled[name] = Compiled(mean: ref.mean, scale: floored.map { $0.squareRoot() }, cholesky: chol)
    }
    inputs = compiled
  }

  /// Whether any input has statistics.
  public var isEmpty: Bool { inputs.isEmpty }

  /// Scores validated inputs; nil when none of them has statistics.
  public func score(_ tensors: [Tensor]) -> Score? {
    score(FloatingInputs(tensors))
  }

  package func score(_ floating: FloatingInputs) -> Score? {
    score(floating, rowsOf: nil).score
  }

  /// The request's score, and the Mahalanobis distance of every row of input `name` (taken in the same pass),
  /// for a per-row verdict where one request carries many rows.
  package func score(_ floating: FloatingInputs, rowsOf name: String?) -> (score: Score?, rows: [Double]?) {
    var result: Score? = nil
    var rows: [Double]? = nil
    for (inputName, input) in floating.byName {
      guard let c = inputs[inputName] else { continue }
      var collected: [Double]? = inputName == name ? [] : nil
      guard let s = rowScores(input, c, rows: &collected) else { continue }
      if inputName == name { rows = collected }
      result = Score(
        mahalanobis: Swift.max(result?.mahalanobis ?? 0, s.mahalanobis), maxZ: Swift.max(result?.maxZ ?? 0, s.maxZ))
    }
    return (result, rows)
  }

  /// The per-row Mahalanobis distances of one input (for the extraction monitor and `bundle stats`).
  func rowDistances(_ values: [Double], features k: Int, _ c: Compiled) -> [Double] {
    guard k == c.mean.count, k > 0 else { return [] }
    var out: [Double] = []
    out.reserveCapacity(values.count / k)
    var d = [Double](repeating: 0, count: k)
    var r = 0
    while r + k <= values.count {
      for j in 0..<k { d[j] = values[r + j] - c.mean[j] }
      out.append(Self.mahalanobis(d, c))
      r += k
    }
    return out
  }

  private func rowScores(_ input: FloatingInputs.Input, _ c: Compiled, rows: inout [Double]?) -> Score? {
    let k = c.mean.count
    guard input.width == k else { return nil }
    let values = input.values
    var worst = Score(mahalanobis: 0, maxZ: 0)
    var d = [Double](repeating: 0, count: k)
    var r = 0
    while r + k <= values.count {
      for j in 0..<k {
        d[j] = values[r + j] - c.mean[j]
        worst.maxZ = Swift.max(worst.maxZ, abs(d[j]) / c.scale[j])
      }
      let distance = Self.mahalanobis(d, c)
      worst.mahalanobis = Swift.max(worst.mahalanobis, distance)
      rows?.append(distance)
      r += k
    }
    return worst
  }

  static func mahalanobis(_ d: [Double], _ c: Compiled) -> Double {
    let k = d.count
    var sum = 0.0
    if let l = c.cholesky {
      // Solve L y = d; the distance is |y|.
      var y = [Double](repeating: 0, count: k)
      for i in 0..<k {
        var s = d[i]
        for j in 0..<i { s -= l[i * k + j] * y[j] }
        y[i] = s / l[i * k + i]
        sum += y[i] * y[i]
      }
    } else {
      for j in 0..<k {
        let z = d[j] / c.scale[j]
        sum += z * z
      }
    }
    return sum.squareRoot()
  }

  /// Cholesky factorisation of a symmetric k×k matrix; nil when it is not positive definite.
  static func cholesky(_ m: [Double], _ k: Int) -> [Double]? {
    var l = [Double](repeating: 0, count: k * k)
    for i in 0..<k {
      for j in 0...i {
        var s = m[i * k + j]
        for p in 0..<j { s -= l[i * k + p] * l[j * k + p] }
        if i == j {
          guard s > 0 else { return nil }
          l[i * k + i] = s.squareRoot()
        } else {
          l[i * k + j] = s / l[j * k + j]
        }
      }
    }
    return l
  }
}
