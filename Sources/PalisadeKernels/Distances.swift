/// Nearest-neighbour search over a small set of rows stored eight at a time (the extraction monitor's recent
/// queries).
///
/// Layout ("interleaved by 8"): row `r`, feature `j` is at `((r / 8) * dimension + j) * 8 + r % 8`. Eight rows'
/// values of one feature are then one vector, so eight squared distances accumulate in one register with no
/// horizontal sums: per block of eight rows, `dimension` subtractions and fused multiply-adds.
public enum InterleavedRows {
  /// Floats needed for `rows` rows of `dimension` features (whole blocks of eight).
  public static func count(rows: Int, dimension: Int) -> Int {
    (rows + 7) / 8 * 8 * dimension
  }

  /// Writes `row` (`dimension` floats) as row `index` of `storage`.
  public static func store(
    _ row: UnsafePointer<Float>, dimension: Int, at index: Int, into storage: UnsafeMutablePointer<Float>
  ) {
    let base = storage + (index / 8) * dimension * 8 + index % 8
    for j in 0..<dimension { base[j * 8] = row[j] }
  }

  /// The smallest squared L2 distance from `query` (`dimension` floats) to rows `0..<rows` of `storage`;
  /// `+infinity` when `rows == 0`. Differences are taken directly (no `|a|² + |b|² − 2ab` expansion), so
  /// near-duplicates give distances near zero, not rounding noise.
  public static func nearestSquaredDistance(
    to query: UnsafePointer<Float>, dimension: Int, in storage: UnsafePointer<Float>, rows: Int
  ) -> Float {
    var best = Float8(repeating: .infinity)
    let blocks = (rows + 7) / 8
    let raw = UnsafeRawPointer(storage)
    var block = 0
    // Two blocks at a time: two independent accumulator chains per feature step.
    while block + 2 <= blocks {
      var s0 = Float8()
      var s1 = Float8()
      var t0 = Float8()
      var t1 = Float8()
      let b0 = raw + block * dimension * 32
      let b1 = b0 + dimension * 32
      var j = 0
      while j + 2 <= dimension {
        let q0 = Float8(repeating: query[j])
        let q1 = Float8(repeating: query[j + 1])
        let d00 = b0.loadUnaligned(fromByteOffset: j * 32, as: Float8.self) - q0
        let d01 = b0.loadUnaligned(fromByteOffset: j * 32 + 32, as: Float8.self) - q1
        let d10 = b1.loadUnaligned(fromByteOffset: j * 32, as: Float8.self) - q0
        let d11 = b1.loadUnaligned(fromByteOffset: j * 32 + 32, as: Float8.self) - q1
        s0 = s0.addingProduct(d00, d00)
        t0 = t0.addingProduct(d01, d01)
        s1 = s1.addingProduct(d10, d10)
        t1 = t1.addingProduct(d11, d11)
        j += 2
      }
      if j < dimension {
        let q = Float8(repeating: query[j])
        let d0 = b0.loadUnaligned(fromByteOffset: j * 32, as: Float8.self) - q
        let d1 = b1.loadUnaligned(fromByteOffset: j * 32, as: Float8.self) - q
        s0 = s0.addingProduct(d0, d0)
        s1 = s1.addingProduct(d1, d1)
      }
      best = lanewiseMin(best, lanewiseMin(s0 + t0, masked(s1 + t1, valid: rows - (block + 1) * 8)))
      block += 2
    }
    if block < blocks {
      var s = Float8()
      var t = Float8()
      let b = raw + block * dimension * 32
      var j = 0
      while j + 2 <= dimension {
        let d0 = b.loadUnaligned(fromByteOffset: j * 32, as: Float8.self) - Float8(repeating: query[j])
        let d1 = b.loadUnaligned(fromByteOffset: j * 32 + 32, as: Float8.self) - Float8(repeating: query[j + 1])
        s = s.addingProduct(d0, d0)
        t = t.addingProduct(d1, d1)
        j += 2
      }
      if j < dimension {
        let d = b.loadUnaligned(fromByteOffset: j * 32, as: Float8.self) - Float8(repeating: query[j])
        s = s.addingProduct(d, d)
      }
      best = lanewiseMin(best, masked(s + t, valid: rows - block * 8))
    }
    var result = best[0]
    for lane in 1..<8 { result = Swift.min(result, best[lane]) }
    return result
  }

  /// The smaller of each pair of lanes, as one compare and one blend (the standard library's generic
  /// `pointwiseMin` is not lowered to vector instructions).
  @inline(__always)
  static func lanewiseMin(_ a: Float8, _ b: Float8) -> Float8 {
    a.replacing(with: b, where: b .< a)
  }

  /// Lanes at or beyond `valid` (rows not yet written) become +infinity.
  @inline(__always)
  static func masked(_ v: Float8, valid: Int) -> Float8 {
    if valid >= 8 { return v }
    let lanes = SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7)
    var out = v
    out.replace(with: Float8(repeating: .infinity), where: lanes .>= SIMD8<Int32>(repeating: Int32(clamping: valid)))
    return out
  }
}
