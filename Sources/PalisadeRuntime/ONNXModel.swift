public import Foundation
public import PalisadeCore
public import PalisadeKernels
import PalisadeONNXProto
import SwiftProtobuf
import Synchronization

/// The files a model's external-data tensors may name, by path relative to the model file's directory.
public typealias ExternalData = [String: any ModelFileBytes]

/// One dimension of a graph input or output.
public enum Dimension: Sendable, Equatable, Hashable, CustomStringConvertible {
  case fixed(Int)
  /// A symbolic dimension (`dim_param`, or an unknown size), e.g. the batch size.
  case symbolic(String)

  public var description: String {
    switch self {
    case .fixed(let n): "\(n)"
    case .symbolic(let s): s.isEmpty ? "?" : s
    }
  }
}

/// A graph input or output as the model declares it.
public struct GraphValue: Sendable, Equatable {
  public var name: String
  public var elementType: ElementType
  public var dims: [Dimension]
  /// False for an output whose file declares no shape (`dims` is then empty).
  public var shapeDeclared: Bool
}

/// A loaded, validated ONNX model: weights decoded, graph checked and ordered, ready to plan and run.
///
/// Loading refuses anything it cannot run (listing every unsupported operator, opset and datatype in one error)
/// and every malformed file (truncated or corrupt protobuf, cycles, undefined values, shape mismatches, sizes
/// that disagree with their data, external data that is not among the files it was given, overflowing dimensions). A plan
/// for the declared shapes (symbolic dimensions taken as 1) is built during `load`, so shape errors surface
/// there; plans for other input shapes are built on first use and cached.
public final class ONNXModel: Sendable {
  public let inputs: [GraphValue]
  public let outputs: [GraphValue]
  /// `producer_name` / `producer_version` of the file.
  public let producer: String
  public let opsetVersion: Int
  public let limits: LoadLimits

  let valueNames: [String]
  let nodes: [GraphNode]
  let initializers: [Int: HostTensor]
  /// Elements of all weights: a cheap proxy for the multiply-adds one input row costs.
  public var parameterCount: Int { initializers.values.reduce(0) { $0 &+ $1.count } }
  let inputIds: [Int]
  let outputIds: [Int]
  private let plans: Mutex<[[[Int]]: ExecutionPlan]>

  /// Models in memory in this process: an unloaded or replaced version that is still counted here has leaked
  /// (the soak test watches it through `palisade_models_in_memory`).
  public static var inMemory: Int { live.load(ordering: .relaxed) }
  private static let live = Atomic<Int>(0)

  deinit { Self.live.subtract(1, ordering: .relaxed) }

  /// Reads the model file at `url` and the external-data files it names (relative to its directory), then loads
  /// it. For tools and tests that load a model from disk; the server never does: its loader hands the runtime the
  /// verified bytes (`load(model:externalData:limits:)`).
  public static func load(contentsOf url: URL, limits: LoadLimits = .default) throws(RuntimeError) -> ONNXModel {
    let directory = url.deletingLastPathComponent().path
    let dirFD = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dirFD >= 0 else { throw .malformed("cannot open the model's directory") }
    defer { close(dirFD) }
    let name = url.lastPathComponent
    let data = try ModelFileReader.readFile(
      dirFD: dirFD, components: [name], limit: limits.maxModelBytes, what: "model file")
    let proto = try parse(data, limits: limits)
    var external: ExternalData = [:]
    var total = 0
    for location in ModelFileReader.externalLocations(proto) where external[location] == nil {
      let components = location.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
      guard !location.hasPrefix("/"), components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
        continue  // refused with its reason when the tensor is decoded
      }
      let bytes = try ModelFileReader.readFile(
        dirFD: dirFD, components: components, limit: limits.maxWeightBytes - total,
        what: "external-data file '\(location.sanitizedForModelMessage)'")
      total += bytes.count
      external[location] = bytes
    }
    return try ONNXModel(proto: proto, externalData: external, limits: limits)
  }

  /// Parses and validates a serialized `ModelProto`.
  /// - Parameter externalData: the files that tensors stored as external data may name, by path relative to the
  ///   model file's directory; `nil` refuses external data.
  public static func load(
    data: [UInt8], externalData: ExternalData? = nil, limits: LoadLimits = .default
  ) throws(RuntimeError) -> ONNXModel {
    try ONNXModel(proto: try parse(data, limits: limits), externalData: externalData, limits: limits)
  }

  /// As `load(data:externalData:limits:)`.
  public static func load(
    data: Data, externalData: ExternalData? = nil, limits: LoadLimits = .default
  ) throws(RuntimeError) -> ONNXModel {
    try ONNXModel(proto: try parse(data, limits: limits), externalData: externalData, limits: limits)
  }

  /// Loads from a bundle's verified bytes: the model file and the other verified files beside it (external data).
  /// Nothing is read from disk.
  public static func load(
    model: any ModelFileBytes, externalData: ExternalData?, limits: LoadLimits = .default
  ) throws(RuntimeError) -> ONNXModel {
    let proto = try model.withBytes { (raw: UnsafeRawBufferPointer) throws(RuntimeError) in
      try parse(raw, limits: limits)
    }
    return try ONNXModel(proto: proto, externalData: externalData, limits: limits)
  }

  static func parse(_ bytes: some ContiguousBytes, limits: LoadLimits) throws(RuntimeError) -> Onnx_ModelProto {
    let count = bytes.withUnsafeBytes { $0.count }
    guard count <= limits.maxModelBytes else {
      throw .limit("model is \(count) bytes, above the limit of \(limits.maxModelBytes)")
    }
    guard count > 0 else { throw .malformed("the model file is empty") }
    var options = BinaryDecodingOptions()
    options.messageDepthLimit = 64
    do {
      return try bytes.withUnsafeBytes { raw in try Onnx_ModelProto(serializedBytes: Data(raw), options: options) }
    } catch {
      throw .malformed("not a valid ONNX ModelProto (\(error))")
    }
  }

  init(proto: Onnx_ModelProto, externalData: ExternalData?, limits: LoadLimits) throws(RuntimeError) {
    self.limits = limits
    guard proto.hasGraph else { throw .malformed("the model has no graph") }
    guard proto.irVersion >= 3 else {
      throw .malformed("IR version \(proto.irVersion) is not supported (need 3 or later)")
    }
    let graph = proto.graph
    guard graph.node.count <= limits.maxNodes else {
      throw .limit("\(graph.node.count) nodes exceed the limit of \(limits.maxNodes)")
    }
    producer = "\(proto.producerName) \(proto.producerVersion)".sanitizedForModelMessage
    var unsupported: [String] = []

    // Opsets.
    var opset = -1
    for entry in proto.opsetImport {
      switch entry.domain {
      case "", "ai.onnx":
        if entry.version < Int64(OperatorRegistry.minOpset) || entry.version > Int64(OperatorRegistry.maxOpset) {
          unsupported.append(
            "opset ai.onnx \(entry.version) (supported \(OperatorRegistry.minOpset)...\(OperatorRegistry.maxOpset))")
        }
        opset = Int(clamping: entry.version)
      case "ai.onnx.ml":
        if !OperatorRegistry.mlOpsets.contains(entry.version) {
          unsupported.append("opset ai.onnx.ml \(entry.version)")
        }
      default:
        unsupported.append("opset domain '\(entry.domain.sanitizedForModelMessage)'")
      }
    }
    if opset < 0 { throw .malformed("the model imports no ai.onnx opset") }
    opsetVersion = opset

    // Value table.
    var ids: [String: Int] = [:]
    var names: [String] = []
    func id(_ name: String) -> Int {
      if let i = ids[name] { return i }
      ids[name] = names.count
      names.append(name)
      return names.count - 1
    }

    // Initializers.
    var weights: [Int: HostTensor] = [:]
    var budget = limits.maxWeightBytes
    for tensor in graph.initializer {
      guard !tensor.name.isEmpty else { throw .malformed("an initializer has no name") }
      let vid = id(tensor.name)
      guard weights[vid] == nil else {
        throw .graph("initializer '\(tensor.name.sanitizedForModelMessage)' is defined twice")
      }
      do {
        weights[vid] = try TensorDecoder.decode(
          tensor, what: "initializer '\(tensor.name.sanitizedForModelMessage)'",
          externalData: externalData, limits: limits, budget: &budget)
      } catch  where error.kind == .unsupported {
        unsupported.append(error.message)
      }
    }

    // Inputs (those that are not initializers) and outputs.
    func graphValue(_ info: Onnx_ValueInfoProto, _ role: String) throws(RuntimeError) -> GraphValue? {
      let label = "\(role) '\(info.name.sanitizedForModelMessage)'"
      guard case .tensorType(let tt)? = info.type.value else {
        unsupported.append("\(label): only tensor types are supported")
        return nil
      }
      guard let type = ElementType(onnxCode: tt.elemType) else {
        unsupported.append("datatype \(onnxTypeName(tt.elemType)) of \(label)")
        return nil
      }
      if !tt.hasShape && role == "output" {
        return GraphValue(name: info.name, elementType: type, dims: [], shapeDeclared: false)
      }
      guard tt.hasShape else { throw .malformed("\(label) has no shape (the rank is required)") }
      guard tt.shape.dim.count <= 8 else { throw .limit("\(label) has rank \(tt.shape.dim.count) (at most 8)") }
      var dims: [Dimension] = []
      for d in tt.shape.dim {
        switch d.value {
        case .dimValue(let v)? where v > 0:
          guard let n = Int(exactly: v), n <= limits.maxTensorElements else {
            throw .limit("\(label): dimension \(v) too large")
          }
          dims.append(.fixed(n))
        case .dimParam(let p)?: dims.append(.symbolic(p.sanitizedForModelMessage))
        default: dims.append(.symbolic(""))
        }
      }
      return GraphValue(name: info.name, elementType: type, dims: dims, shapeDeclared: true)
    }
    var inputs: [GraphValue] = []
    var inputIds: [Int] = []
    for info in graph.input {
      guard !info.name.isEmpty else { throw .malformed("a graph input has no name") }
      if let existing = ids[info.name], weights[existing] != nil { continue }  // initializer listed as input
      if ids[info.name] != nil { throw .graph("input '\(info.name.sanitizedForModelMessage)' is declared twice") }
      if let value = try graphValue(info, "input") {
        inputs.append(value)
        inputIds.append(id(info.name))
      }
    }

    // Nodes.
    var produced = Set<Int>(weights.keys)
    produced.formUnion(inputIds)
    var nodes: [GraphNode] = []
    nodes.reserveCapacity(graph.node.count)
    var unsupportedOps: [String: Int] = [:]
    for (index, node) in graph.node.enumerated() {
      let label = node.name.isEmpty ? "\(node.opType) #\(index)" : "\(node.opType) '\(node.name)'"
      var attributes: [String: Attribute] = [:]
      for a in node.attribute {
        do {
          attributes[a.name] = try TensorDecoder.attribute(
            a, node: label, externalData: externalData, limits: limits, budget: &budget)
        } catch  where error.kind == .unsupported {
          unsupported.append(error.message)
        }
      }
      let inputsOfNode: [Int?] = node.input.map { $0.isEmpty ? nil : id($0) }
      var outputsOfNode: [Int?] = []
      for name in node.output {
        if name.isEmpty {
          outputsOfNode.append(nil)
          continue
        }
        let v = id(name)
        guard !produced.contains(v) else {
          throw .graph(
            "value '\(name.sanitizedForModelMessage)' is produced more than once (\(label.sanitizedForModelMessage))")
        }
        produced.insert(v)
        outputsOfNode.append(v)
      }
      let domain = node.domain == "ai.onnx" ? "" : node.domain
      let key = domain.isEmpty ? node.opType : "\(domain).\(node.opType)"
      if !OperatorRegistry.isSupported(domain: domain, opType: node.opType) {
        unsupportedOps[key, default: 0] += 1
      } else if let problem = OperatorRegistry.attributeProblem(
        domain: domain, opType: node.opType, attributes: attributes)
      {
        unsupported.append("\(label.sanitizedForModelMessage): \(problem)")
      }
      nodes.append(
        GraphNode(
          name: node.name, opType: node.opType, domain: domain, inputs: inputsOfNode, outputs: outputsOfNode,
          attributes: attributes))
    }
    for (op, count) in unsupportedOps.sorted(by: { $0.key < $1.key }) {
      unsupported.append("operator \(op.sanitizedForModelMessage)\(count > 1 ? " (\(count) nodes)" : "")")
    }

    var outputs: [GraphValue] = []
    var outputIds: [Int] = []
    for info in graph.output {
      guard let v = ids[info.name], produced.contains(v) else {
        throw .graph("output '\(info.name.sanitizedForModelMessage)' is never produced")
      }
      if let value = try graphValue(info, "output") {
        outputs.append(value)
        outputIds.append(v)
      }
    }
    guard !outputs.isEmpty || !unsupported.isEmpty else { throw .malformed("the graph has no outputs") }

    if !unsupported.isEmpty {
      throw RuntimeError(.unsupported, "unsupported: " + unsupported.joined(separator: "; "))
    }
    // Every input of every node must be defined somewhere.
    for node in nodes {
      for case let v? in node.inputs where !produced.contains(v) {
        throw .graph("\(node.label) reads '\(names[v].sanitizedForModelMessage)', which nothing defines")
      }
    }
    let order = try topologicalOrder(nodes: nodes, valueCount: names.count)

    self.inputs = inputs
    self.outputs = outputs
    self.inputIds = inputIds
    self.outputIds = outputIds
    self.valueNames = names
    self.nodes = order.map { nodes[$0] }
    self.initializers = weights
    self.plans = Mutex([:])
    // Counted from here on: every path out of this point (a throw below included) runs deinit.
    Self.live.add(1, ordering: .relaxed)

    // Plan once for the declared shapes (symbolic dimensions = 1): shape errors fail the load.
    _ = try plan(for: inputs.map { $0.dims.map { if case .fixed(let n) = $0 { n } else { 1 } } })
  }

  /// The execution plan for these concrete input shapes (in ``inputs`` order), built on first use and cached.
  public func plan(for shapes: [[Int]]) throws(RuntimeError) -> ExecutionPlan {
    if let cached = plans.withLock({ $0[shapes] }) { return cached }
    guard shapes.count == inputs.count else {
      throw RuntimeError(.invalidInput, "expected \(inputs.count) inputs, got \(shapes.count)")
    }
    for (value, shape) in zip(inputs, shapes) {
      guard value.dims.count == shape.count else {
        throw RuntimeError(
          .invalidInput,
          "input '\(value.name.sanitizedForModelMessage)' has rank \(shape.count), expected \(value.dims.count)")
      }
      for (d, n) in zip(value.dims, shape) {
        switch d {
        case .fixed(let f) where f != n:
          throw RuntimeError(
            .invalidInput, "input '\(value.name.sanitizedForModelMessage)' has shape \(shape), expected \(value.dims)")
        case .symbolic where n < 1 || n > limits.maxSymbolicDimension:
          throw RuntimeError(
            .invalidInput,
            "input '\(value.name.sanitizedForModelMessage)': dimension \(n) out of range 1...\(limits.maxSymbolicDimension)"
          )
        default: break
        }
      }
    }
    var planner = Planner(model: self, inputShapes: shapes)
    let plan = try planner.build()
    plans.withLock { cache in
      if cache.count >= limits.maxCachedPlans, let victim = cache.keys.first { cache[victim] = nil }
      cache[shapes] = plan
    }
    return plan
  }

  /// Runs one inference on the calling thread (GEMMs are split over `pool`). Inputs are matched to ``inputs``
  /// by name; outputs come back in ``outputs`` order.
  public func predict(_ tensors: [Tensor], pool: WorkerPool? = nil) throws(RuntimeError) -> [Tensor] {
    var ordered: [Tensor] = []
    ordered.reserveCapacity(inputs.count)
    for value in inputs {
      guard let t = tensors.first(where: { $0.name == value.name }) else {
        throw RuntimeError(.invalidInput, "missing input '\(value.name.sanitizedForModelMessage)'")
      }
      guard t.datatype == value.elementType.dataType else {
        throw RuntimeError(
          .invalidInput,
          "input '\(value.name.sanitizedForModelMessage)' is \(t.datatype.rawValue), expected \(value.elementType.dataType.rawValue)"
        )
      }
      ordered.append(t)
    }
    var shapes: [[Int]] = []
    for t in ordered {
      var s: [Int] = []
      for d in t.shape {
        guard let i = Int(exactly: d) else { throw RuntimeError(.invalidInput, "dimension out of range") }
        s.append(i)
      }
      shapes.append(s)
    }
    let plan = try plan(for: shapes)
    return try plan.execute(ordered, pool: pool)
  }
}
