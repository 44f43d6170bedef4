import Foundation
public import GRPCCore
public import Logging
public import PalisadeCore
public import PalisadeProto
public import PalisadeIdentity

/// `inference.GRPCInferenceService`: the Open Inference Protocol over the pipeline.
///
/// Handlers stay thin: they read the ``CallContext``, call the pipeline or the repository, and throw
/// ``PalisadeError``s that ``CallObserverInterceptor`` maps to statuses.
public struct InferenceService: Inference_GRPCInferenceService.SimpleServiceProtocol {
  public static let serverName = "palisade"
  /// Extensions advertised in `ServerMetadata`.
  public static let extensions = ["binary_tensor_data", "statistics", "model_repository"]

  let repository: ModelRepository
  let pipeline: InferencePipeline
  let statistics: ModelStatisticsStore
  let authorizer: Authorizer
  let bundles: BundleLoader?
  let credentials: StreamCredentials
  let logger: Logger

  public init(
    repository: ModelRepository, pipeline: InferencePipeline, bundles: BundleLoader?, tokens: TokenVerifier? = nil,
    logger: Logger
  ) {
    self.bundles = bundles
    self.credentials = StreamCredentials(verifier: tokens)
    self.repository = repository
    self.statistics = pipeline.statistics
    self.authorizer = pipeline.authorizer
    self.pipeline = pipeline
    self.logger = logger
  }

  /// Authorises an RPC for the call in `context` (stage 3).
  @discardableResult
  private func authorize(_ context: ServerContext, model: String? = nil) async throws -> CallContext {
    let call = try context.callContext()
    try await authorizer.authorize(call, rpc: context.descriptor.method, model: model, auditor: pipeline.auditor)
    return call
  }

  public func serverLive(request: Inference_ServerLiveRequest, context: ServerContext) async throws
    -> Inference_ServerLiveResponse
  {
    try await authorize(context)
    return .with { $0.live = true }
  }

  public func serverReady(request: Inference_ServerReadyRequest, context: ServerContext) async throws
    -> Inference_ServerReadyResponse
  {
    try await authorize(context)
    return .with { $0.ready = repository.isServerReady }
  }

  public func modelReady(request: Inference_ModelReadyRequest, context: ServerContext) async throws
    -> Inference_ModelReadyResponse
  {
    guard !request.name.isEmpty else { throw PalisadeError(.invalidArgument, "model name is required") }
    let call = try context.callContext()
    let decision = try await authorizer.authorize(
      call, rpc: context.descriptor.method, model: request.name, version: request.version, auditor: pipeline.auditor)
    // The rule's version constraint holds here as for inference: a caller limited to some versions learns
    // nothing about the others, not even whether they exist (a named version is checked before it is looked up).
    if !request.version.isEmpty {
      try authorizer.checkVersion(decision, version: request.version, model: request.name)
    }
    if let model = try? pipeline.resolver.resolve(name: request.name, version: request.version) {
      try authorizer.checkVersion(decision, version: model.descriptor.version, model: request.name)
    }
    return .with { $0.ready = repository.isReady(name: request.name, version: request.version) }
  }

  public func serverMetadata(request: Inference_ServerMetadataRequest, context: ServerContext) async throws
    -> Inference_ServerMetadataResponse
  {
    try await authorize(context)
    return .with {
      $0.name = Self.serverName
      $0.version = PalisadeVersion.current
      $0.extensions = Self.extensions
    }
  }

  public func modelMetadata(request: Inference_ModelMetadataRequest, context: ServerContext) async throws
    -> Inference_ModelMetadataResponse
  {
    let call = try context.callContext()
    let decision = try await authorizer.authorize(
      call, rpc: context.descriptor.method, model: request.name, version: request.version, auditor: pipeline.auditor)
    if !request.version.isEmpty {
      try authorizer.checkVersion(decision, version: request.version, model: request.name)
    }
    let model = try pipeline.resolver.resolve(name: request.name, version: request.version)
    try authorizer.checkVersion(decision, version: model.descriptor.version, model: request.name)
    let d = model.descriptor
    func spec(_ s: TensorSpec) -> Inference_ModelMetadataResponse.TensorMetadata {
      .with {
        $0.name = s.name
        $0.datatype = s.datatype.rawValue
        $0.shape = s.shape
      }
    }
    return .with {
      $0.name = d.name
      // Only the versions the caller's rule allows.
      $0.versions = repository.versions(of: d.name).filter { decision?.versions?.allows($0) ?? true }
      $0.platform = d.platform
      $0.inputs = d.inputs.map(spec)
      // What callers receive after output hardening (top-k and label-only change datatypes and shapes).
      $0.outputs = pipeline.hardener.publishedOutputs(d).map(spec)
      $0.properties = d.properties
    }
  }

  public func modelInfer(request: Inference_ModelInferRequest, context: ServerContext) async throws
    -> Inference_ModelInferResponse
  {
    let call = try context.callContext()
    let rpc = context.descriptor.method
    return try await Self.cancellable { [pipeline] in try await pipeline.infer(request, call: call, rpc: rpc) }
  }

  /// Runs `work` so that the RPC's cancellation (its deadline passing, or the client resetting the stream) cancels
  /// it: grpc-swift signals these through the RPC cancellation handle, not through task cancellation, and a request
  /// waiting in a queue must leave it when its caller has gone.
  private static func cancellable<R: Sendable>(_ work: @escaping @Sendable () async throws -> R) async throws -> R {
    let task = Task { try await work() }
    return try await withRPCCancellationHandler {
      try await withTaskCancellationHandler {
        try await task.value
      } onCancel: {
        task.cancel()
      }
    } onCancelRPC: {
      task.cancel()
    }
  }

  public func modelStreamInfer(
    request: RPCAsyncSequence<Inference_ModelInferRequest, any Error>,
    response: RPCWriter<Inference_ModelStreamInferResponse>,
    context: ServerContext
  ) async throws {
    let call = try context.callContext()
    let rpc = context.descriptor.method
    let (pipeline, credentials, logger) = (self.pipeline, self.credentials, self.logger)
    do {
      // The stream lives only as long as its token: re-checked before each message and on a timer.
      try await credentials.whileValid(call) {
        // Triton semantics: a failed request yields a message with error_message set and the stream goes on.
        for try await message in request {
          try credentials.check(call)
          do {
            let result = try await Self.cancellable { try await pipeline.infer(message, call: call, rpc: rpc) }
            try await response.write(.with { $0.inferResponse = result })
          } catch let error where !(error is CancellationError) {
            let status = StatusMapping.rpcError(for: error, logger: logger)
            try await response.write(
              .with {
                $0.errorMessage = "\(StatusMapping.codeName(status.code)): \(status.message)"
                $0.inferResponse.id = message.id
                $0.inferResponse.modelName = message.modelName
              })
          }
        }
      }
    } catch let error as PalisadeError where error.code == .unauthenticated {
      logger.notice(
        "stream ended: credentials lapsed",
        metadata: [
          "rpc": "\(rpc)", "principal": "\(call.identity)", "request_id": "\(call.requestID)",
          "reason": "\(error.detail ?? "")",
        ])
      await pipeline.auditor.call(
        call, rpc: rpc, status: "UNAUTHENTICATED", reason: "stream ended: token expired or its key retired")
      throw error
    }
  }

  public func modelStatistics(request: Inference_ModelStatisticsRequest, context: ServerContext) async throws
    -> Inference_ModelStatisticsResponse
  {
    let call = try await authorize(context, model: request.name.isEmpty ? nil : request.name)
    // Only the models (and versions) the policy lets this caller ask statistics of: an unscoped request from a
    // model-scoped caller must not list the other tenants' models.
    let rpc = context.descriptor.method
    let index = repository.index().filter {
      authorizer.permits(call, rpc: rpc, model: $0.name, version: $0.version.isEmpty ? nil : $0.version)
    }
    if !request.name.isEmpty, !index.contains(where: { $0.name == request.name }) {
      throw PalisadeError(.notFound, "unknown model '\(request.name.sanitizedForMessage)'")
    }
    return .with { $0.modelStats = statistics.statistics(for: index, name: request.name, version: request.version) }
  }

  public func repositoryIndex(request: Inference_RepositoryIndexRequest, context: ServerContext) async throws
    -> Inference_RepositoryIndexResponse
  {
    let call = try await authorize(context)
    // Scoped to the models the policy lets this caller list (name, version, state and refusal reason are all
    // another tenant's business).
    let rpc = context.descriptor.method
    let entries = repository.index().filter {
      (!request.ready || $0.state == .ready)
        && authorizer.permits(call, rpc: rpc, model: $0.name, version: $0.version.isEmpty ? nil : $0.version)
    }
    return .with {
      $0.models = entries.map { entry in
        .with {
          $0.name = entry.name
          $0.version = entry.version
          $0.state = entry.state.rawValue
          $0.reason = entry.reason
        }
      }
    }
  }

  public func repositoryModelLoad(request: Inference_RepositoryModelLoadRequest, context: ServerContext)
    async throws -> Inference_RepositoryModelLoadResponse
  {
    let call = try await authorize(context, model: request.modelName)
    guard let bundles else {
      throw PalisadeError(.failedPrecondition, "no model directories are configured (models.directories)")
    }
    logger.notice("model load requested", metadata: ["model": "\(request.modelName)", "principal": "\(call.identity)"])
    try await bundles.load(name: request.modelName)
    return .init()
  }

  public func repositoryModelUnload(request: Inference_RepositoryModelUnloadRequest, context: ServerContext)
    async throws -> Inference_RepositoryModelUnloadResponse
  {
    let call = try await authorize(context, model: request.modelName)
    guard repository.remove(name: request.modelName) else {
      throw PalisadeError(.notFound, "unknown model '\(request.modelName.sanitizedForMessage)'")
    }
    logger.notice("model unloaded", metadata: ["model": "\(request.modelName)", "principal": "\(call.identity)"])
    bundles?.integrity?.forget(model: request.modelName)
    await pipeline.auditor.event(.modelUnload, principal: call.identity.spiffeID.description, model: request.modelName)
    return .init()
  }
}

/// The build's version string.
public enum PalisadeVersion {
  public static let current = "0.1.0"
}
