/// Why a model failed to load or run. Messages name the offending node, tensor or file; they never contain tensor
/// data. Model files are untrusted input: every malformed file maps to one of these, never to a crash.
public struct RuntimeError: Error, Sendable, Equatable, CustomStringConvertible {
  public enum Kind: String, Sendable, Equatable {
    /// The bytes are not a well-formed ONNX `ModelProto` (truncated, corrupt, missing required parts).
    case malformedModel
    /// Operators, opsets or datatypes the runtime does not implement (all of them listed in one message).
    case unsupported
    /// The graph is ill-formed: a cycle, an undefined value, a value produced twice.
    case invalidGraph
    /// Shapes that do not fit together, or a tensor whose declared size disagrees with its data.
    case shapeMismatch
    /// A size limit was hit, or a size computation overflowed.
    case limitExceeded
    /// An external-data reference is missing, escapes the model's directory, or points past its file.
    case externalData
    /// An inference input does not match the model (name, datatype, shape), or data-dependent indices are out
    /// of range.
    case invalidInput
  }

  public var kind: Kind
  public var message: String

  public init(_ kind: Kind, _ message: String) {
    self.kind = kind
    self.message = message
  }

  public var description: String { "\(kind.rawValue): \(message)" }

  static func malformed(_ m: String) -> RuntimeError { RuntimeError(.malformedModel, m) }
  static func graph(_ m: String) -> RuntimeError { RuntimeError(.invalidGraph, m) }
  static func shape(_ m: String) -> RuntimeError { RuntimeError(.shapeMismatch, m) }
  static func limit(_ m: String) -> RuntimeError { RuntimeError(.limitExceeded, m) }
}

/// Resource limits applied while loading and planning a model.
public struct LoadLimits: Sendable, Equatable {
  /// Largest accepted model file (serialized `ModelProto`).
  public var maxModelBytes: Int
  /// Largest element count of any one tensor (initializer or intermediate).
  public var maxTensorElements: Int
  /// Largest total size of all initializers, inline and external.
  public var maxWeightBytes: Int
  /// Largest activation arena of one execution plan.
  public var maxArenaBytes: Int
  /// Most nodes in the graph.
  public var maxNodes: Int
  /// Most execution plans (one per distinct input shape) kept per model.
  public var maxCachedPlans: Int
  /// Largest value accepted for a symbolic (e.g. batch) dimension at inference.
  public var maxSymbolicDimension: Int

  public init(
    maxModelBytes: Int = 1 << 31, maxTensorElements: Int = 1 << 28, maxWeightBytes: Int = 1 << 32,
    maxArenaBytes: Int = 1 << 31, maxNodes: Int = 100_000, maxCachedPlans: Int = 16,
    maxSymbolicDimension: Int = 1 << 16
  ) {
    self.maxModelBytes = maxModelBytes
    self.maxTensorElements = maxTensorElements
    self.maxWeightBytes = maxWeightBytes
    self.maxArenaBytes = maxArenaBytes
    self.maxNodes = maxNodes
    self.maxCachedPlans = maxCachedPlans
    self.maxSymbolicDimension = maxSymbolicDimension
  }

  public static let `default` = LoadLimits()
}

/// Product of `dims` with overflow, sign and limit checks.
func checkedCount(_ dims: [Int], limit: Int, what: @autoclosure () -> String) throws(RuntimeError) -> Int {
  var count = 1
  for d in dims {
    guard d >= 0 else { throw .shape("\(what()): negative dimension \(d)") }
    let (p, o) = count.multipliedReportingOverflow(by: d)
    guard !o else { throw .limit("\(what()): element count of \(dims) overflows") }
    count = p
  }
  guard count <= limit else { throw .limit("\(what()): \(count) elements exceed the limit of \(limit)") }
  return count
}
