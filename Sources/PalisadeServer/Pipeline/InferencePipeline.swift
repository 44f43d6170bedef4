import Foundation
public import Logging
public import PalisadeCore
public import PalisadeProto
import PalisadePolicy
import PalisadeWire

/// The stages of one inference after authentication, in the order of the design brief: authorise, resolve (with
/// the circuit breaker), validate, screen, schedule (queue, batching) and compute, harden, encode. Each stage is a
/// small type of its own; this type only strings them together, times them and keeps the model statistics.
public struct InferencePipeline: Sendable {
  public let authorizer: Authorizer
  public let resolver: ModelResolver
  public let validator: InputValidator
  public let screener: InputScreener
  public let scheduler: Scheduler
  public let hardener: OutputHardener
  public let encoder: ResponseEncoder
  public let padding: ResponsePadding
  public let statistics: ModelStatisticsStore
  let metrics: ServerMetrics
  let logger: Logger
  let accessLog: AccessLog
  public let auditor: Auditor

  public init(
    repository: ModelRepository, statistics: ModelStatisticsStore, authorizer: Authorizer, screener: InputScreener,
    scheduler: Scheduler, metrics: ServerMetrics, logger: Logger, accessLog: Bool = false, auditor: Auditor? = nil,
    rollouts: RolloutController? = nil
  ) {
    self.auditor = auditor ?? Auditor(log: nil, metrics: metrics, logger: logger)
    self.accessLog = AccessLog(logger: logger, enabled: accessLog)
    self.authorizer = authorizer
    self.resolver = ModelResolver(repository: repository, rollouts: rollouts)
    self.validator = InputValidator()
    self.screener = screener
    self.scheduler = scheduler
    self.hardener = OutputHardener()
    self.encoder = ResponseEncoder()
    self.padding = ResponsePadding()
    self.statistics = statistics
    self.metrics = metrics
    self.logger = logger
    // A version that leaves the repository (unloaded, replaced by a hot swap) takes its per-version state with it.
    repository.onRetire { [weak scheduler, weak screener, weak statistics] models in
      let descriptors = models.map(\.descriptor)
      scheduler?.release(descriptors)
      screener?.release(descriptors)
      statistics?.release(descriptors)
    }
  }

  /// Releases the per-version state of `descriptor` made by a call that resolved its version just before it left
  /// the repository (the retirement already ran, so nothing else would).
  func releaseIfRetired(_ descriptor: ModelDescriptor) {
    guard !resolver.repository.holds(descriptor) else { return }
    scheduler.release([descriptor])
    screener.release([descriptor])
    statistics.release([descriptor])
  }

  /// Runs one `ModelInfer` request for `call`, untraced.
  public func infer(_ request: Inference_ModelInferRequest, call: CallContext, rpc: String) async throws
    -> Inference_ModelInferResponse
  {
    try await infer(request, call: call, rpc: rpc, spans: nil)
  }

  /// Runs one `ModelInfer` request for `call`; `spans` (nil when tracing is off) records each stage.
  package func infer(_ request: Inference_ModelInferRequest, call: CallContext, rpc: String, spans: CallSpans?)
    async throws
    -> Inference_ModelInferResponse
  {
    let started = ContinuousClock.now
    let trace = CallTrace(spans: spans)
    // No audit, no answer: while the log is failed nothing runs.
    do { try auditor.requireAvailable() } catch {
      spans?.failed(error, stage: .audit)
      throw error
    }
    do {
      let response = try await run(request, call: call, rpc: rpc, trace: trace)
      let latency = ContinuousClock.now - started
      accessLog.record(
        call: call, model: response.modelName, version: response.modelVersion, status: "OK",
        latency: latency, oodScore: response.parameters["palisade_ood_score"]?.doubleParam)
      // The answer leaves only once its record is written (and, in sync durability, fsynced).
      try await auditor.callOrRefuse(
        call, rpc: rpc, model: response.modelName, version: response.modelVersion,
        manifestDigest: trace.descriptor?.properties["manifest_digest"], inputs: trace.inputs, outputs: trace.outputs,
        status: "OK", reason: trace.servedReason,
        latency: latency)
      spans?.ended(.audit)
      return response
    } catch let error as PalisadeError where error == Auditor.unavailable {
      spans?.failed(error, stage: .audit)
      throw error
    } catch {
      spans?.failed(error)
      let latency = ContinuousClock.now - started
      let code = StatusMapping.codeName(for: error)
      accessLog.record(
        call: call, model: request.modelName, version: request.modelVersion, status: code, latency: latency,
        oodScore: nil)
      await auditor.call(
        call, rpc: rpc, model: request.modelName, version: trace.descriptor?.version ?? request.modelVersion,
        manifestDigest: trace.descriptor?.properties["manifest_digest"], inputs: trace.inputs, status: code,
        reason: (error as? PalisadeError)?.message, latency: latency)
      spans?.ended(.audit)
      throw error
    }
  }

  func run(_ request: Inference_ModelInferRequest, call: CallContext, rpc: String, trace: CallTrace) async throws
    -> Inference_ModelInferResponse
  {
    var clock = StageClock(metrics: metrics, spans: trace.spans)
    let decision = try authorizer.authorize(call, rpc: rpc, model: request.modelName, version: request.modelVersion)
    clock.lap(.authorise)
    let principal = call.identity.spiffeID.description
    let (model, route) = try resolver.resolve(
      name: request.modelName, version: request.modelVersion, principal: principal,
      allows: { v in decision?.versions?.allows(v) ?? true })
    try authorizer.checkVersion(decision, version: model.descriptor.version, model: request.modelName)
    // One lookup of the model's queue serves the breaker here and scheduling below.
    let (queue, madeQueue) = scheduler.lookup(model)
    let descriptor = model.descriptor
    // Per-version state made by this call for a version that left meanwhile is released when the call ends.
    var made = madeQueue
    defer { if made { releaseIfRetired(descriptor) } }
    let permit: CircuitBreaker.Permit
    do { permit = try queue.breaker.admit(principal: principal) } catch {
      // An open breaker (for every caller, or for this one after its calls made the model fail) is the candidate
      // failing: the circuit opens on the model's own failures only, never on a caller's refusals or load.
      if let route, let rollouts = resolver.rollouts {
        rollouts.record(
          route,
          outcome: .init(
            principal: principal, latency: .zero, failed: true, outOfDistribution: false, labels: nil))
      }
      throw error
    }
    // A half-open probe that ends before the model ran (refused, cancelled) is handed back.
    defer { queue.breaker.release(permit) }
    trace.spans?.resolved(model: descriptor.name, version: descriptor.version)
    clock.lap(.resolve)
    trace.descriptor = descriptor
    let started = ContinuousClock.now
    // Set once the call reached the model: only what the model does counts in a rollout's windows.
    var reachedModel = false
    var modelStarted = started
    var outOfDistribution = false
    do {
      let (inputs, requested) = try validate(request, descriptor: descriptor)
      trace.inputs = inputs
      clock.lap(.validate)
      let (screenState, madeScreen) = screener.lookup(descriptor)
      made = made || madeScreen
      let screening = try await screener.screen(inputs, descriptor: descriptor, call: call, state: screenState)
      trace.outOfDistribution = screening.outOfDistribution
      outOfDistribution = screening.outOfDistribution
      clock.lap(.screen)
      let computeStart = ContinuousClock.now
      reachedModel = true
      modelStarted = computeStart
      let completed = try await queue.submit(inputs: inputs, requestedOutputs: requested, principal: principal)
      let outputs = completed.outputs
      let computeEnd = ContinuousClock.now
      if let route, let rollouts = resolver.rollouts {
        let (labels, finite) = RolloutController.labels(outputs)
        // Non-finite scores count as the model's error in the rollout (the caller still gets them). The latency
        // judged is the model's own: the queue wait is everyone's load, which one caller can raise.
        rollouts.record(
          route,
          outcome: .init(
            principal: principal, latency: computeEnd - computeStart - completed.waited, failed: !finite,
            outOfDistribution: outOfDistribution, labels: labels))
        if route.shadow != nil {
          trace.shadowVersion = rollouts.shadow(
            route, principal: principal, validatedFor: descriptor, inputs: inputs,
            outOfDistribution: outOfDistribution, stableLabels: labels)
        }
        reachedModel = false
      }
      clock.lapCompute(queued: completed.waited)
      let selected = try encoder.select(outputs, requested: requested, descriptor: descriptor)
      let hardened = try hardener.harden(selected, descriptor: descriptor)
      trace.outputs = hardened
      clock.lap(.harden)
      var response = try encoder.encode(
        outputs: hardened, raw: !request.rawInputContents.isEmpty, descriptor: descriptor,
        requestID: request.id.isEmpty ? call.requestID : request.id)
      response.id = request.id
      if let score = screening.score {
        response.parameters["palisade_ood_score"] = .with { $0.doubleParam = score.mahalanobis }
        response.parameters["palisade_ood_flag"] = .with { $0.boolParam = screening.outOfDistribution }
      }
      if let bucket = descriptor.outputPolicy.padToBucketBytes { padding.pad(&response, bucket: bucket) }
      clock.lap(.encode)
      made =
        statistics.recordSuccess(
          descriptor, total: ContinuousClock.now - started, inputPhase: computeStart - started,
          compute: computeEnd - computeStart, outputPhase: ContinuousClock.now - computeEnd) || made
      return response
    } catch {
      let total = ContinuousClock.now - started
      made = statistics.recordFailure(descriptor, total: total) || made
      // Only the model's own failures count: a full queue, the caller's share, a cancellation or a deadline is
      // the caller's doing (or everyone's load), and must not let one caller roll a candidate back.
      if reachedModel, let route, let rollouts = resolver.rollouts, CircuitBreaker.Outcome(error) == .modelFailure {
        rollouts.record(
          route,
          outcome: .init(
            principal: principal, latency: ContinuousClock.now - modelStarted, failed: true,
            outOfDistribution: outOfDistribution, labels: nil))
      }
      throw error
    }
  }
}

extension InferencePipeline {
  /// Stage 5: the wire decoding rules, then the model's contract.
  func validate(_ request: Inference_ModelInferRequest, descriptor: ModelDescriptor) throws(PalisadeError)
    -> ([Tensor], [String]?)
  {
    do {
      let decoded = try WireTensorDecoder.decode(request)
      return (
        try validator.validate(decoded, against: descriptor),
        try encoder.requestedOutputs(request, descriptor: descriptor)
      )
    } catch {
      metrics.recordRejection(reason: "invalid_input")
      throw error
    }
  }
}

/// What the stages learned about one call, for its audit record (one task writes it, then reads it).
final class CallTrace: @unchecked Sendable {
  /// The call's spans; nil when tracing is off.
  let spans: CallSpans?
  var descriptor: ModelDescriptor?
  var inputs: [Tensor]?
  var outputs: [Tensor]?
  var outOfDistribution = false
  /// The rollout candidate that was also given this call's inputs (shadow mode), for the call's audit record.
  var shadowVersion: String?

  init(spans: CallSpans?) { self.spans = spans }

  /// The reason of a served call's audit record: what else happened to its inputs.
  var servedReason: String? {
    var notes: [String] = []
    if outOfDistribution { notes.append("inputs flagged out of distribution") }
    if let shadowVersion { notes.append("inputs also run on candidate version \(shadowVersion) (shadow rollout)") }
    return notes.isEmpty ? nil : (["served"] + notes).joined(separator: "; ")
  }
}

/// Times consecutive pipeline stages into the per-stage histograms, and into the call's spans when it is traced.
struct StageClock {
  let metrics: ServerMetrics
  let spans: CallSpans?
  var last = ContinuousClock.now

  init(metrics: ServerMetrics, spans: CallSpans? = nil) {
    self.metrics = metrics
    self.spans = spans
  }

  mutating func lap(_ stage: ServerMetrics.Stage) {
    let now = ContinuousClock.now
    metrics.recordStage(stage, now - last)
    last = now
    spans?.ended(CallSpans.Stage(stage))
  }

  /// Ends stages 7 and 8 together: `queued` of the lap was the wait in the model's queue (the `queue` histogram),
  /// the rest was compute. One `compute` span covers both.
  mutating func lapCompute(queued: Duration) {
    let now = ContinuousClock.now
    let lap = now - last
    let waited = min(max(queued, .zero), lap)
    metrics.recordStage(.queue, waited)
    metrics.recordStage(.compute, lap - waited)
    last = now
    spans?.ended(.compute)
  }
}
