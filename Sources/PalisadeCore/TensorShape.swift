/// Overflow-safe arithmetic on tensor shapes.
///
/// Shapes come from callers as `int64` dimensions; their product must be computed without trapping, because a
/// crafted shape such as `[2^32, 2^32]` would otherwise overflow `Int` and crash the process.
public enum TensorShape {
  /// The number of elements of `shape`, or `nil` when a dimension is negative or the product overflows.
  public static func elementCount(_ shape: [Int64]) -> Int? {
    var count = 1
    for dim in shape {
      guard dim >= 0, let d = Int(exactly: dim) else { return nil }
      let (product, overflow) = count.multipliedReportingOverflow(by: d)
      if overflow { return nil }
      count = product
    }
    return count
  }

  /// The byte size of `count` elements of `datatype`, or `nil` on overflow or for BYTES.
  public static func byteCount(elements count: Int, of datatype: DataType) -> Int? {
    guard let width = datatype.elementSize else { return nil }
    let (bytes, overflow) = count.multipliedReportingOverflow(by: width)
    return overflow ? nil : bytes
  }

  /// True when `shape` fits `declared`, where `-1` in `declared` matches any size.
  public static func matches(_ shape: [Int64], declared: [Int64]) -> Bool {
    guard shape.count == declared.count else { return false }
    for (actual, want) in zip(shape, declared) where want != -1 && actual != want {
      return false
    }
    return true
  }
}
