import PalisadeKernels

/// Deterministic xorshift generator so failures reproduce.
struct TestRandom: RandomNumberGenerator {
  var state: UInt64
  init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }
  mutating func next() -> UInt64 {
    state ^= state << 13
    state ^= state >> 7
    state ^= state << 17
    return state
  }
}

func randomFloats(_ count: Int, seed: UInt64, in range: ClosedRange<Float> = -1...1) -> [Float] {
  var rng = TestRandom(seed: seed)
  return (0..<count).map { _ in Float.random(in: range, using: &rng) }
}

/// |actual - expected| <= abs + rel * |expected| (+ NaN/inf must match exactly).
func close(_ actual: Float, _ expected: Double, rel: Double = 1e-4, abs: Double = 1e-5) -> Bool {
  if expected.isNaN { return actual.isNaN }
  if expected.isInfinite { return Double(actual) == expected }
  return Swift.abs(Double(actual) - expected) <= abs + rel * Swift.abs(expected)
}

/// Index of the first mismatch, or nil.
func firstMismatch(_ actual: [Float], _ expected: [Double], rel: Double = 1e-4, abs: Double = 1e-5) -> Int? {
  precondition(actual.count == expected.count)
  for i in actual.indices where !close(actual[i], expected[i], rel: rel, abs: abs) { return i }
  return nil
}
