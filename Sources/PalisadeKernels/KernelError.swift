/// Errors for shapes and parameters that come from model data (thrown rather than trapped, so a bad model fails
/// its load or request instead of crashing the server).
public enum KernelError: Error, Sendable, Equatable, CustomStringConvertible {
  /// Two shapes cannot be broadcast together, or an output shape is not the broadcast shape.
  case shapeMismatch(String)
  /// A parameter is out of range (negative dimension, zero stride, bad group count, ...).
  case invalidParameter(String)
  /// An element count overflows `Int`.
  case overflow(String)

  public var description: String {
    switch self {
    case .shapeMismatch(let detail): return "shape mismatch: \(detail)"
    case .invalidParameter(let detail): return "invalid parameter: \(detail)"
    case .overflow(let detail): return "size overflow: \(detail)"
    }
  }
}

/// Product of `dims`, throwing on negative dimensions or overflow.
public func elementCount(_ dims: [Int]) throws(KernelError) -> Int {
  var count = 1
  for dim in dims {
    guard dim >= 0 else { throw .invalidParameter("negative dimension \(dim) in \(dims)") }
    let (product, overflow) = count.multipliedReportingOverflow(by: dim)
    guard !overflow else { throw .overflow("element count of \(dims)") }
    count = product
  }
  return count
}
