import PalisadeKernels

// The one home of the runtime's operators. Each operator family lives in one file of this folder: a table of
// `OperatorDefinition`s (op types, what loading checks, how a node lowers) and the lowering methods on
// `NodeLowering`. The loader's support check, the "unsupported" error, the planner and `palisade` all ask
// `OperatorRegistry`; nothing else lists operator names. See docs/architecture.md, "Adding an ONNX operator".

/// One registered operator: its ONNX identity, the attribute values loading refuses, and its lowering.
struct OperatorDefinition: Sendable {
  /// "" for the default domain (ai.onnx), "ai.onnx.ml" for the ML operators.
  var domain: String
  var opType: String
  /// Fused nodes the planner makes (named with a leading `_`): lowered like any other, never accepted from a file.
  var isInternal: Bool
  /// The op computes image `n` of its output from image `n` of its first input only (other inputs constant), so
  /// the planner may run a sequence of such ops image by image (``ImageGroup``).
  var imageSeparable: Bool
  /// Attributes of kinds the runtime does not decode (graphs, strings lists, ...) are ignored rather than refused.
  var opaqueAttributes: Bool
  /// Attribute values selecting behaviour the lowering does not implement, reported at load with the
  /// unsupported operators (nil: none).
  var attributeProblem: @Sendable (_ attributes: [String: Attribute]) -> String?
  /// Shape inference and kernel construction for one node.
  var lower: @Sendable (_ node: NodeLowering) throws(RuntimeError) -> Lowering

  init(
    _ opType: String, domain: String = "", isInternal: Bool = false, imageSeparable: Bool = false,
    opaqueAttributes: Bool = false,
    attributeProblem: @escaping @Sendable ([String: Attribute]) -> String? = { _ in nil },
    lower: @escaping @Sendable (NodeLowering) throws(RuntimeError) -> Lowering
  ) {
    self.opType = opType
    self.domain = domain
    self.isInternal = isInternal
    self.imageSeparable = imageSeparable
    self.opaqueAttributes = opaqueAttributes
    self.attributeProblem = attributeProblem
    self.lower = lower
  }

  /// `opType`, or `domain.opType` outside the default domain.
  var qualifiedName: String { domain.isEmpty ? opType : "\(domain).\(opType)" }
}

/// Every operator the runtime implements, by family (one file each under Operators/).
enum OperatorRegistry {
  static let minOpset = 11
  static let maxOpset = 22
  /// Versions of the ai.onnx.ml opset accepted.
  static let mlOpsets: ClosedRange<Int64> = 1...5

  static let families: [(name: String, operators: [OperatorDefinition])] = [
    ("constants", constantOperators),
    ("views", viewOperators),
    ("data movement", dataMovementOperators),
    ("logic", logicOperators),
    ("element-wise", elementwiseOperators),
    ("reductions", reductionOperators),
    ("matrix products", matrixOperators),
    ("normalisation", normalizationOperators),
    ("convolution", convolutionOperators),
    ("pooling", poolingOperators),
  ]

  static let all: [OperatorDefinition] = families.flatMap(\.operators)

  /// Keyed by `qualifiedName`; a name registered twice keeps its first definition (a test refuses duplicates).
  static let byName: [String: OperatorDefinition] = Dictionary(
    all.map { ($0.qualifiedName, $0) }, uniquingKeysWith: { first, _ in first })

  static func definition(domain: String, opType: String) -> OperatorDefinition? {
    byName[domain.isEmpty ? opType : "\(domain).\(opType)"]
  }

  /// Operators a model file may use, as `qualifiedName`s, sorted.
  static var supported: [String] { all.filter { !$0.isInternal }.map(\.qualifiedName).sorted() }

  static func isSupported(domain: String, opType: String) -> Bool {
    guard let d = definition(domain: domain, opType: opType) else { return false }
    return !d.isInternal
  }

  /// Attribute values that select behaviour the runtime does not implement (checked at load, listed with the
  /// unsupported operators).
  static func attributeProblem(domain: String, opType: String, attributes: [String: Attribute]) -> String? {
    let definition = definition(domain: domain, opType: opType)
    if let problem = definition?.attributeProblem(attributes) { return problem }
    for (key, value) in attributes.sorted(by: { $0.key < $1.key }) {
      // Names with a leading underscore carry the planner's fusion decisions: a file may not set them.
      if key.hasPrefix("_") { return "attribute '\(key.sanitizedForModelMessage)' (reserved for the runtime)" }
      if case .other(let kind) = value, definition?.opaqueAttributes != true {
        return "attribute '\(key.sanitizedForModelMessage)' of kind \(kind)"
      }
    }
    return nil
  }

  static func isImageSeparable(_ node: GraphNode) -> Bool {
    definition(domain: node.domain, opType: node.opType)?.imageSeparable ?? false
  }
}

/// Shape inference and kernel construction for one node, with its input types and constant inputs.
func lower(
  _ node: GraphNode, _ ins: [ValueType?], _ consts: [HostTensor?], _ ctx: OpContext
) throws(RuntimeError) -> Lowering {
  guard let definition = OperatorRegistry.definition(domain: node.domain, opType: node.opType) else {
    throw RuntimeError(.unsupported, "operator \(node.opType.sanitizedForModelMessage)")
  }
  return try definition.lower(NodeLowering(node: node, ins: ins, consts: consts, ctx: ctx))
}

/// What lowering needs to know beyond the node.
struct OpContext {
  var opset: Int
  var limits: LoadLimits

  func value(_ type: ElementType, _ shape: [Int], _ what: @autoclosure () -> String = "output") throws(RuntimeError)
    -> ValueType
  {
    guard shape.count <= 16 else { throw .limit("\(what()) has rank \(shape.count) (at most 16)") }
    let n = try checkedCount(shape, limit: limits.maxTensorElements, what: what())
    return ValueType(type: type, shape: shape, count: n)
  }
}

/// One node being lowered, with the input helpers every operator shares.
struct NodeLowering {
  var node: GraphNode
  /// Input types in node order; nil for an omitted optional input.
  var ins: [ValueType?]
  /// Input values known at plan time (initializers and folded values).
  var consts: [HostTensor?]
  var ctx: OpContext

  var opset: Int { ctx.opset }
  var opType: String { node.opType }

  func input(_ i: Int) throws(RuntimeError) -> ValueType {
    guard i < ins.count, let t = ins[i] else { throw .graph("missing input \(i)") }
    return t
  }

  func optionalInput(_ i: Int) -> ValueType? { i < ins.count ? ins[i] : nil }

  /// The constant value of input `i` (nil when absent or computed at run time).
  func constant(_ i: Int) -> HostTensor? { i < consts.count ? consts[i] : nil }

  /// An optional INT64 input that must be known at plan time (shapes, axes, slice bounds).
  func constInts(_ i: Int, _ what: String) throws(RuntimeError) -> [Int]? {
    guard i < ins.count, ins[i] != nil else { return nil }
    guard let c = constant(i) else {
      throw RuntimeError(.unsupported, "\(what) must be a constant (data-dependent shapes are not supported)")
    }
    guard c.type == .int64 else { throw .shape("\(what) must be INT64") }
    var out: [Int] = []
    for v in c.int64Values {
      // Slice uses INT64_MAX / INT64_MIN as "to the end"; clamp to a range that cannot overflow later.
      out.append(Int(max(min(v, Int64(1) << 62), -(Int64(1) << 62))))
    }
    return out
  }

  func requireFloat(_ t: ValueType, _ what: String = "input") throws(RuntimeError) {
    guard t.type == .float32 else { throw RuntimeError(.unsupported, "\(what) of type \(t.type) (FLOAT only)") }
  }

  /// Refuses optional outputs past the first `n` (e.g. Dropout's mask).
  func noExtraOutputs(_ n: Int) throws(RuntimeError) {
    for (i, o) in node.outputs.enumerated() where i >= n && o != nil {
      throw RuntimeError(.unsupported, "optional output \(i)")
    }
  }

  /// The activation the planner fused into this node (``Planner/fuse(_:)``), identity if none.
  func fusedActivation() throws(RuntimeError) -> Activation {
    let name = try node.string("_activation", "")
    guard let a = activation(named: name) else { throw .graph("unknown fused activation") }
    return a
  }
}

func kernelError(_ e: any Error) -> RuntimeError {
  switch e as? KernelError {
  case .overflow(let m)?: return .limit(m)
  case .shapeMismatch(let m)?: return .shape(m)
  case .invalidParameter(let m)?: return .shape(m)
  case nil: return .shape("\(e)")
  }
}

func activation(named name: String) -> Activation? {
  switch name {
  case "Relu": .relu
  case "Sigmoid": .sigmoid
  case "Tanh": .tanh
  case "Gelu": .gelu
  case "": .identity
  default: nil
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
