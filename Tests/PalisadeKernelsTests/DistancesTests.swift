import Testing
import PalisadeKernels

@Suite("Nearest distances over interleaved rows")
struct DistancesTests {
  @Test("matches a brute-force search for every row count and dimension")
  func bruteForce() {
    for dimension in [1, 2, 3, 8, 31, 32, 64, 70] {
      let capacity = 37
      let rows = randomFloats(capacity * dimension, seed: UInt64(dimension))
      var storage = [Float](repeating: .nan, count: InterleavedRows.count(rows: capacity, dimension: dimension))
      let query = randomFloats(dimension, seed: 99)
      for count in 0...capacity {
        if count > 0 {
          rows.withUnsafeBufferPointer { r in
            storage.withUnsafeMutableBufferPointer { s in
              InterleavedRows.store(
                r.baseAddress! + (count - 1) * dimension, dimension: dimension, at: count - 1,
                into: s.baseAddress!)
            }
          }
        }
        var expected = Float.infinity
        for r in 0..<count {
          var sum: Double = 0
          for j in 0..<dimension {
            let d = Double(rows[r * dimension + j]) - Double(query[j])
            sum += d * d
          }
          expected = min(expected, Float(sum))
        }
        // Slots not yet written hold NaN here: they must not take part.
        let got = storage.withUnsafeBufferPointer { s in
          query.withUnsafeBufferPointer { q in
            InterleavedRows.nearestSquaredDistance(
              to: q.baseAddress!, dimension: dimension, in: s.baseAddress!, rows: count)
          }
        }
        if count == 0 {
          #expect(got == .infinity)
        } else {
          #expect(abs(got - expected) <= 1e-5 * max(1, expected), "d=\(dimension) rows=\(count)")
        }
      }
    }
  }

  @Test("a row overwritten in a full ring no longer counts")
  func overwrite() {
    let dimension = 4
    var storage = [Float](repeating: 0, count: InterleavedRows.count(rows: 9, dimension: dimension))
    let far: [Float] = [10, 10, 10, 10]
    let near: [Float] = [0, 0, 0, 1]
    storage.withUnsafeMutableBufferPointer { s in
      for i in 0..<9 { InterleavedRows.store(far, dimension: dimension, at: i, into: s.baseAddress!) }
      InterleavedRows.store(near, dimension: dimension, at: 8, into: s.baseAddress!)
    }
    let query: [Float] = [0, 0, 0, 0]
    let d = storage.withUnsafeBufferPointer {
      InterleavedRows.nearestSquaredDistance(to: query, dimension: dimension, in: $0.baseAddress!, rows: 9)
    }
    #expect(d == 1)
  }
}
