public import PalisadeCore
public import PalisadeProto
import PalisadeWire

/// The stages of one inference, in the order of the design brief: resolve, validate, compute, encode.
///
/// Authentication already happened in ``CallerIdentityInterceptor`` and ``TokenAuthenticationInterceptor``;
/// screening, scheduling, hardening and audit slot in here as they land, each a small type of its own.
public struct InferencePipeline: Sendable {
  public let resolver: ModelResolver
  public let validator: InputValidator
  public let executor: ModelExecutor
  public let encoder: ResponseEncoder
  public let statistics: ModelStatisticsStore
  public let authorizer: Authorizer

  public init(repository: ModelRepository, statistics: ModelStatisticsStore, authorizer: Authorizer) {
    self.authorizer = authorizer
    self.resolver = ModelResolver(repository: repository)
    self.validator = InputValidator()
    self.executor = ModelExecutor()
    self.encoder = ResponseEncoder()
    self.statistics = statistics
  }

  /// Runs one `ModelInfer` request for `call`.
  public func infer(_ request: Inference_ModelInferRequest, call: CallContext, rpc: String) async throws
    -> Inference_ModelInferResponse
  {
    let decision = try authorizer.authorize(call, rpc: rpc, model: request.modelName)
    let model = try resolver.resolve(name: request.modelName, version: request.modelVersion)
    try authorizer.checkVersion(decision, version: model.descriptor.version, model: request.modelName)
    let descriptor = model.descriptor
    let started = ContinuousClock.now
    do {
      let decoded = try WireTensorDecoder.decode(request)
      let inputs = try validator.validate(decoded, against: descriptor)
      let requested = try encoder.requestedOutputs(request, descriptor: descriptor)
      let computeStart = ContinuousClock.now
      let outputs = try await executor.run(model, inputs: inputs, requestedOutputs: requested)
      let computeEnd = ContinuousClock.now
      var response = try encoder.encode(
        outputs: outputs, requested: requested, raw: !request.rawInputContents.isEmpty, descriptor: descriptor,
        requestID: request.id.isEmpty ? call.requestID : request.id)
      response.id = request.id
      statistics.recordSuccess(
        descriptor, total: ContinuousClock.now - started, inputPhase: computeStart - started,
        compute: computeEnd - computeStart, outputPhase: ContinuousClock.now - computeEnd)
      return response
    } catch {
      statistics.recordFailure(descriptor, total: ContinuousClock.now - started)
      throw error
    }
  }
}
