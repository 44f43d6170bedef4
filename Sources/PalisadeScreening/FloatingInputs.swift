package import PalisadeCore

/// A request's floating-point inputs that have reference statistics, as `Double` rows, converted once and shared
/// by the detectors that need them (OOD score, drift). The extraction monitor reads its input's floats itself.
/// `package`: the server's screening stage makes them once per request and hands them to the scorer here.
package struct FloatingInputs {
  package struct Input {
    /// Features per row: the last dimension.
    package let width: Int
    /// Row-major values.
    package let values: [Double]
  }
  package let byName: [String: Input]

  /// Converts the floating-point tensors among `tensors`, or only those named in `names`.
  package init(_ tensors: [Tensor], only names: Set<String>? = nil) {
    var byName: [String: Input] = [:]
    for t in tensors where names?.contains(t.name) ?? true {
      guard let last = t.shape.last, last > 0, let values = t.floatingPointValues, !values.isEmpty else { continue }
      byName[t.name] = Input(width: Int(last), values: values)
    }
    self.byName = byName
  }
}
