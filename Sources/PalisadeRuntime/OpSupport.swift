import PalisadeKernels

/// Which operators the runtime implements.
enum OperatorSupport {
  static let minOpset = 11
  static let maxOpset = 22

  static let core: Set<String> = [
    // shape glue
    "Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Gather", "Slice",
    "Concat", "ConstantOfShape", "Constant", "Expand", "Cast", "Where", "Equal", "Less", "Greater", "Not",
    "Range",
    // math
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Sqrt", "Erf", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Relu",
    "Sigmoid", "Tanh", "Gelu", "Clip", "MatMul", "Gemm", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum",
    "ReduceMax", "ArgMax", "ArgMin",
    // nn
    "LayerNormalization", "BatchNormalization", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool",
  ]
  static let ml: Set<String> = ["ArrayFeatureExtractor"]

  static func isSupported(domain: String, opType: String) -> Bool {
    switch domain {
    case "": core.contains(opType)
    case "ai.onnx.ml": ml.contains(opType)
    default: false
    }
  }

  /// Attribute values that select behaviour the runtime does not implement (checked at load, listed with the
  /// unsupported operators).
  static func attributeProblem(opType: String, attributes: [String: Attribute]) -> String? {
    if opType == "Cast", case .int(let to)? = attributes["to"], ElementType(onnxCode: Int32(clamping: to)) == nil {
      return "Cast to datatype \(onnxTypeName(Int32(clamping: to)))"
    }
    if opType == "Constant" {
      for key in ["sparse_value", "value_string", "value_strings"] where attributes[key] != nil {
        return "Constant with \(key)"
      }
    }
    if opType == "ConstantOfShape", case .tensor(let t)? = attributes["value"], t.count != 1 {
      return "ConstantOfShape value must have one element"
    }
    for (key, value) in attributes {
      if case .other(let kind) = value, !["Dropout"].contains(opType) {
        return "attribute '\(key.sanitizedForModelMessage)' of kind \(kind)"
      }
    }
    return nil
  }
}

/// What lowering needs to know beyond the node.
struct OpContext {
  var opset: Int
  var limits: LoadLimits

  func value(_ type: ElementType, _ shape: [Int], _ what: @autoclosure () -> String = "output") throws(RuntimeError) -> ValueType {
    guard shape.count <= 16 else { throw .limit("\(what()) has rank \(shape.count) (at most 16)") }
    let n = try checkedCount(shape, limit: limits.maxTensorElements, what: what())
    return ValueType(type: type, shape: shape, count: n)
  }
}

/// Normalises a possibly negative axis for a tensor of `rank`.
func normAxis(_ axis: Int, _ rank: Int) throws(RuntimeError) -> Int {
  let a = axis < 0 ? axis + rank : axis
  guard a >= 0, a < max(rank, 1) else { throw .shape("axis \(axis) out of range for rank \(rank)") }
  return a
}

func product(_ dims: ArraySlice<Int>) -> Int { dims.reduce(1, *) }

/// Row-major element strides.
func contiguousStrides(_ shape: [Int]) -> [Int] {
  var s = [Int](repeating: 1, count: shape.count)
  var acc = 1
  for i in stride(from: shape.count - 1, through: 0, by: -1) {
    s[i] = acc
    acc *= shape[i]
  }
  return s
}

/// Broadcast shape of several shapes (numpy rules).
func broadcastShapes(_ shapes: [[Int]]) throws(RuntimeError) -> [Int] {
  let rank = shapes.map(\.count).max() ?? 0
  var out = [Int](repeating: 1, count: rank)
  for s in shapes {
    for (j, d) in s.enumerated() {
      let i = j + rank - s.count
      if d == out[i] || d == 1 { continue }
      if out[i] == 1 { out[i] = d } else { throw .shape("cannot broadcast shapes \(shapes)") }
    }
  }
  return out
}

/// Element strides of `shape` broadcast to `out` (0 along broadcast dimensions), right-aligned.
func broadcastStrides(_ shape: [Int], to out: [Int]) -> [Int] {
  let own = contiguousStrides(shape)
  var s = [Int](repeating: 0, count: out.count)
  for (j, d) in shape.enumerated() {
    let i = j + out.count - shape.count
    s[i] = d == 1 ? 0 : own[j]
  }
  return s
}

/// Calls `body(outIndex, offsets)` for every output element in row-major order, with each operand's element
/// offset (operands described by broadcast strides). For glue ops; allocation-free (stack counters).
@inline(__always)
func forEachBroadcast(
  _ outShape: [Int], _ strides: [[Int]], _ body: (Int, UnsafeMutablePointer<Int>) throws(RuntimeError) -> Void
) throws(RuntimeError) {
  let rank = outShape.count
  let total = outShape.reduce(1, *)
  if total == 0 { return }
  let k = strides.count
  try withUnsafeTemporaryAllocation(of: Int.self, capacity: rank + k + 1) { (buf) throws(RuntimeError) in
    guard let p = buf.baseAddress else { return }
    let idx = p
    let offs = p + rank
    for i in 0..<(rank + k) { p[i] = 0 }
    for n in 0..<total {
      try body(n, offs)
      // Increment the multi-index.
      var d = rank - 1
      while d >= 0 {
        idx[d] += 1
        for j in 0..<k { offs[j] += strides[j][d] }
        if idx[d] < outShape[d] { break }
        for j in 0..<k { offs[j] -= strides[j][d] * outShape[d] }
        idx[d] = 0
        d -= 1
      }
    }
  }
}
