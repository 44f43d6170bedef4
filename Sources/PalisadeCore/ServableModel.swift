/// The declared contract of one model input or output.
public struct TensorSpec: Sendable, Equatable, Hashable {
  public var name: String
  public var datatype: DataType
  /// Dimensions; `-1` marks a variable dimension.
  public var shape: [Int64]

  public init(name: String, datatype: DataType, shape: [Int64]) {
    self.name = name
    self.datatype = datatype
    self.shape = shape
  }
}

/// What a model's manifest promises about its inputs, enforced before any compute.
public struct ModelContract: Sendable, Equatable {
  /// Inclusive per-feature bounds for a floating-point input, indexed along its last dimension.
  public struct FeatureRange: Sendable, Equatable {
    public var min: [Double]
    public var max: [Double]
    public init(min: [Double], max: [Double]) {
      self.min = min
      self.max = max
    }
  }
  /// Largest first (batch) dimension accepted, when the declared one is variable.
  public var maxBatch: Int?
  /// Per-input feature ranges.
  public var featureRanges: [String: FeatureRange]
  /// Whether NaN and ±Inf may be sent in floating-point inputs.
  public var allowNonFinite: Bool
  /// Longest BYTES element accepted.
  public var maxBytesElementLength: Int
  /// Whether an input may have a zero-sized dimension (an empty batch). Off by default: most runtimes and kernels
  /// are not written for empty tensors, and a caller must not be able to make the model fail for everyone.
  public var allowEmptyDimensions: Bool

  public init(
    maxBatch: Int? = nil, featureRanges: [String: FeatureRange] = [:], allowNonFinite: Bool = true,
    maxBytesElementLength: Int = 64 << 20, allowEmptyDimensions: Bool = false
  ) {
    self.maxBatch = maxBatch
    self.featureRanges = featureRanges
    self.allowNonFinite = allowNonFinite
    self.maxBytesElementLength = maxBytesElementLength
    self.allowEmptyDimensions = allowEmptyDimensions
  }

  /// No constraints beyond datatype and shape (models built in code, e.g. by tests).
  public static let unconstrained = ModelContract()
}

/// What a model tells callers about itself (`ModelMetadata`).
public struct ModelDescriptor: Sendable, Equatable {
  public var name: String
  /// A positive integer version, as a string on the wire.
  public var version: String
  /// The runtime family, e.g. `onnx`.
  public var platform: String
  public var inputs: [TensorSpec]
  public var outputs: [TensorSpec]
  /// Free-form properties (OIP `ModelMetadataResponse.properties`).
  public var properties: [String: String]
  /// Input constraints from the manifest.
  public var contract: ModelContract
  /// Output hardening from the manifest.
  public var outputPolicy: OutputPolicy
  /// Out-of-distribution screening from the manifest.
  public var screening: ScreeningProfile

  public init(
    name: String, version: String, platform: String, inputs: [TensorSpec], outputs: [TensorSpec],
    properties: [String: String] = [:], contract: ModelContract = .unconstrained,
    outputPolicy: OutputPolicy = .passThrough, screening: ScreeningProfile = .none
  ) {
    self.contract = contract
    self.outputPolicy = outputPolicy
    self.screening = screening
    self.name = name
    self.version = version
    self.platform = platform
    self.inputs = inputs
    self.outputs = outputs
    self.properties = properties
  }
}

/// One inference: validated inputs in declaration order, and the outputs the caller wants.
public struct InferenceRequest: Sendable {
  /// The inputs, exactly one per declared input, already checked against the model's ``TensorSpec``s.
  public var inputs: [Tensor]
  /// The outputs the caller asked for; `nil` means every declared output.
  public var requestedOutputs: [String]?

  public init(inputs: [Tensor], requestedOutputs: [String]? = nil) {
    self.inputs = inputs
    self.requestedOutputs = requestedOutputs
  }

  /// The input called `name`.
  public func input(_ name: String) -> Tensor? {
    inputs.first { $0.name == name }
  }
}

/// The seam between the RPC layer and whatever computes: the inference engine and signed bundles plug in here.
///
/// Implementations must be safe to call concurrently. They receive only inputs that passed validation against
/// ``descriptor`` and return one tensor per declared output (the server filters to the requested ones).
public protocol ServableModel: Sendable {
  /// Name, version, inputs and outputs.
  var descriptor: ModelDescriptor { get }
  /// Runs one inference.
  func infer(_ request: InferenceRequest) async throws -> [Tensor]
}
