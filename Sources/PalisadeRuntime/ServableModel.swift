public import PalisadeCore
public import PalisadeKernels
import Foundation

extension ONNXModel {
  /// The input shapes used when a caller gives none: symbolic dimensions taken as 1.
  var defaultInputShapes: [[Int]] {
    inputs.map { $0.dims.map { if case .fixed(let n) = $0 { n } else { 1 } } }
  }

  /// The graph inputs as Open Inference Protocol tensor specs (`-1` for symbolic dimensions), e.g. for
  /// `palisade bundle init`.
  public var inputSpecs: [TensorSpec] {
    inputs.map { TensorSpec(name: $0.name, datatype: $0.elementType.dataType, shape: $0.dims.map(\.specValue)) }
  }

  /// The graph outputs as tensor specs. An output whose file declares no shape gets the rank found by shape
  /// inference, with every dimension `-1`.
  public var outputSpecs: [TensorSpec] {
    let planned = try? plan(for: defaultInputShapes)
    return outputs.enumerated().map { i, value in
      var shape = value.dims.map(\.specValue)
      if !value.shapeDeclared, let planned, i < planned.outputShapes.count {
        shape = [Int64](repeating: -1, count: planned.outputShapes[i].count)
      }
      return TensorSpec(name: value.name, datatype: value.elementType.dataType, shape: shape)
    }
  }

  /// A descriptor for this model with the given identity.
  public func descriptor(name: String, version: String, properties: [String: String] = [:]) -> ModelDescriptor {
    ModelDescriptor(
      name: name, version: version, platform: "onnx", inputs: inputSpecs, outputs: outputSpecs,
      properties: properties)
  }
}

extension Dimension {
  var specValue: Int64 {
    if case .fixed(let n) = self { return Int64(n) }
    return -1
  }
}

/// An ONNX model behind Palisade's model seam. Inference runs on the kernel worker pool (the calling task is
/// suspended, never blocking Swift's cooperative pool); plans are specialised per input shape and cached.
public struct ONNXServableModel: ServableModel {
  public let descriptor: ModelDescriptor
  public let model: ONNXModel
  let pool: WorkerPool

  /// Checks that `descriptor` agrees with the graph: the same input and output names, datatypes and ranks, and
  /// no fixed dimension where the graph has a different fixed one.
  /// Multiply-adds (parameters × rows) below which a request is computed on the calling thread: handing a
  /// few microseconds of work to the pool and back costs more than the work (two thread wake-ups).
  public static let inlineWorkLimit = 262_144
  let parameters: Int

  public init(model: ONNXModel, descriptor: ModelDescriptor, pool: WorkerPool = .shared) throws(RuntimeError) {
    func check(_ declared: [TensorSpec], _ graph: [TensorSpec], _ role: String) throws(RuntimeError) {
      guard declared.count == graph.count else {
        throw .shape("the descriptor declares \(declared.count) \(role)s, the graph has \(graph.count)")
      }
      for spec in declared {
        guard let g = graph.first(where: { $0.name == spec.name }) else {
          throw .shape("\(role) '\(spec.name.sanitizedForModelMessage)' is not in the graph")
        }
        guard g.datatype == spec.datatype else {
          throw .shape(
            "\(role) '\(spec.name.sanitizedForModelMessage)' is \(g.datatype.rawValue) in the graph, \(spec.datatype.rawValue) in the descriptor"
          )
        }
        guard g.shape.isEmpty && role == "output" || g.shape.count == spec.shape.count else {
          throw .shape(
            "\(role) '\(spec.name.sanitizedForModelMessage)' has rank \(g.shape.count) in the graph, \(spec.shape.count) in the descriptor"
          )
        }
        for (a, b) in zip(g.shape, spec.shape) where a >= 0 && b >= 0 && a != b {
          throw .shape(
            "\(role) '\(spec.name.sanitizedForModelMessage)' has shape \(g.shape) in the graph, \(spec.shape) in the descriptor"
          )
        }
      }
    }
    try check(descriptor.inputs, model.inputSpecs, "input")
    try check(descriptor.outputs, model.outputSpecs, "output")
    self.model = model
    self.descriptor = descriptor
    self.pool = pool
    self.parameters = model.parameterCount
  }

  public func infer(_ request: InferenceRequest) async throws -> [Tensor] {
    let model = self.model
    let pool = self.pool
    let inputs = request.inputs
    let rows = inputs.first.flatMap { $0.shape.first }.map { Int(clamping: max(1, $0)) } ?? 1
    if parameters.multipliedReportingOverflow(by: rows).partialValue <= Self.inlineWorkLimit,
      !parameters.multipliedReportingOverflow(by: rows).overflow
    {
      do {
        return try model.predict(inputs, pool: nil)
      } catch {
        throw error.asPalisadeError
      }
    }
    do {
      return try await pool.run { () throws -> [Tensor] in
        do {
          return try model.predict(inputs, pool: pool)
        } catch let error as RuntimeError {
          throw error.asPalisadeError
        }
      }
    } catch let error as PalisadeError {
      throw error
    } catch {
      throw PalisadeError(.unavailable, "the model's worker pool is not running")
    }
  }
}

extension RuntimeError {
  /// The server-facing error: input problems are the caller's (INVALID_ARGUMENT); anything else is ours.
  public var asPalisadeError: PalisadeError {
    switch kind {
    case .invalidInput: PalisadeError(.invalidArgument, message)
    default: PalisadeError(.internal, "model execution failed", detail: description)
    }
  }
}

/// The ONNX runtime behind Palisade's ``ModelRuntime`` seam (bundle loading): parses and plans the verified
/// model file (and its verified external data, in memory) on the worker pool, then serves it as an ``ONNXServableModel``. A model that fails to load is a
/// FAILED_PRECONDITION carrying the runtime's reason (it names nodes and tensors, never data).
public struct ONNXModelRuntime: ModelRuntime {
  public let limits: LoadLimits
  let pool: WorkerPool

  public init(limits: LoadLimits = .default, pool: WorkerPool = .shared) {
    self.limits = limits
    self.pool = pool
  }

  public var fileExtensions: [String] { ["onnx"] }

  public var modelsInMemory: Int? { ONNXModel.inMemory }

  /// Parses `files.modelFile`; external data resolves only against the other verified files below the model file's
  /// directory (`ModelFiles.siblingsOfModelFile`), never against the file system.
  public func load(files: ModelFiles, descriptor: ModelDescriptor) async throws -> any ServableModel {
    let limits = self.limits
    let pool = self.pool
    guard let modelFile = files.modelFile else {
      throw PalisadeError(
        .failedPrecondition,
        "model '\(descriptor.name.sanitizedForMessage)' cannot be loaded: its model file is not among the verified files"
      )
    }
    let external = files.siblingsOfModelFile
    do {
      return try await pool.run { () throws -> ONNXServableModel in
        do {
          let model = try ONNXModel.load(model: modelFile, externalData: external, limits: limits)
          return try ONNXServableModel(model: model, descriptor: descriptor, pool: pool)
        } catch let error as RuntimeError {
          throw PalisadeError(
            .failedPrecondition, "model '\(descriptor.name.sanitizedForMessage)' cannot be loaded: \(error.description)"
          )
        }
      }
    } catch let error as PalisadeError {
      throw error
    } catch {
      throw PalisadeError(.unavailable, "the model worker pool is not running")
    }
  }
}
