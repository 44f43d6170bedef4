import PalisadeCore

/// A request's floating-point inputs as `Double` rows, converted once and shared by every screening detector
/// (OOD score, drift, extraction monitor) instead of each converting the same tensors again.
struct FloatingInputs {
  struct Input {
    /// Features per row: the last dimension.
    let width: Int
    /// Row-major values.
    let values: [Double]
  }
  let byName: [String: Input]

  init(_ tensors: [Tensor]) {
    var byName: [String: Input] = [:]
    for t in tensors {
      guard let last = t.shape.last, last > 0, let values = t.floatingPointValues, !values.isEmpty else { continue }
      byName[t.name] = Input(width: Int(last), values: values)
    }
    self.byName = byName
  }
}
