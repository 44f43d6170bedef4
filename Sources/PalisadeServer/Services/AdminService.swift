import Foundation
public import GRPCCore
public import Logging
import PalisadeCore
import PalisadeIdentity
public import PalisadeProto

/// `palisade.v1.Admin`: operator actions on a running server. Every RPC is administrative in the policy (granted
/// only by rules naming it), and each action is logged with the principal that took it.
public struct AdminService: Palisade_V1_Admin.SimpleServiceProtocol {
  let authorizer: Authorizer
  let metrics: ServerMetrics
  let logger: Logger
  let auditor: Auditor
  /// Model rollouts; nil: the rollout RPCs answer UNIMPLEMENTED.
  let rollouts: RolloutController?

  public init(
    authorizer: Authorizer, metrics: ServerMetrics, logger: Logger, auditor: Auditor, rollouts: RolloutController? = nil
  ) {
    self.rollouts = rollouts
    self.auditor = auditor
    self.authorizer = authorizer
    self.metrics = metrics
    self.logger = logger
  }

  public func listQuarantines(request: Palisade_V1_ListQuarantinesRequest, context: ServerContext) async throws
    -> Palisade_V1_ListQuarantinesResponse
  {
    let call = try context.callContext()
    try await authorizer.authorize(call, rpc: context.descriptor.method, model: nil, auditor: auditor)
    let fromPolicy = authorizer.store.policy.quarantine.map { id in
      Palisade_V1_Quarantine.with {
        $0.principal = id.description
        $0.source = "policy"
        $0.reason = "listed in the policy file"
      }
    }
    let automatic = authorizer.quarantines.list().map { e in
      Palisade_V1_Quarantine.with {
        $0.principal = e.principal.description
        $0.source = "extraction_monitor"
        $0.reason = e.reason
        $0.sinceUnix = Int64(e.since.timeIntervalSince1970)
        $0.untilUnix = Int64(e.until.timeIntervalSince1970)
        $0.model = e.model ?? ""
      }
    }
    return .with { $0.quarantines = fromPolicy + automatic }
  }

  public func liftQuarantine(request: Palisade_V1_LiftQuarantineRequest, context: ServerContext) async throws
    -> Palisade_V1_LiftQuarantineResponse
  {
    let call = try context.callContext()
    try await authorizer.authorize(call, rpc: context.descriptor.method, model: nil, auditor: auditor)
    let principal: SPIFFEID
    do { principal = try SPIFFEID(parsing: request.principal) } catch {
      throw PalisadeError(.invalidArgument, "principal must be a SPIFFE ID (spiffe://trust-domain/path)")
    }
    let lifted = authorizer.quarantines.lift(principal)
    if lifted {
      await auditor.event(
        .quarantineLifted, principal: principal.description, reason: "lifted by \(call.identity.spiffeID)")
    }
    metrics.setQuarantinesActive(authorizer.quarantines.list().count)
    logger.notice(
      "quarantine lift requested",
      metadata: [
        "principal": "\(principal)", "by": "\(call.identity)", "lifted": "\(lifted)", "request_id": "\(call.requestID)",
      ])
    return .with { $0.lifted = lifted }
  }

  // MARK: rollouts (administrative, like the repository RPCs: authorised per model)

  public func rolloutStart(request: Palisade_V1_RolloutStartRequest, context: ServerContext) async throws
    -> Palisade_V1_RolloutStatusResponse
  {
    let (call, rollouts) = try await admit(context, model: request.model)
    var plan = rollouts.settings.defaults
    switch request.mode {
    case "": break
    case "canary": plan.mode = .canary
    case "shadow": plan.mode = .shadow
    default: throw PalisadeError(.invalidArgument, "mode must be canary or shadow")
    }
    if request.share != 0 {
      guard request.share > 0, request.share <= 1 else {
        throw PalisadeError(.invalidArgument, "share must be in (0, 1]")
      }
      plan.share = request.share
    }
    if request.promoteAfterCalls != 0 {
      guard request.promoteAfterCalls > 0, let n = Int(exactly: request.promoteAfterCalls) else {
        throw PalisadeError(.invalidArgument, "promote_after_calls must be positive")
      }
      plan.promoteAfterCalls = n
      plan.minCalls = min(plan.minCalls, n)
    }
    if request.promoteAfterSeconds != 0 {
      guard request.promoteAfterSeconds > 0, let n = Int(exactly: request.promoteAfterSeconds) else {
        throw PalisadeError(.invalidArgument, "promote_after_seconds must be positive")
      }
      plan.promoteAfterSeconds = n
    }
    let status = try await rollouts.start(
      model: request.model, candidate: request.candidateVersion.isEmpty ? nil : request.candidateVersion, plan: plan,
      by: call.identity.spiffeID.description)
    return .with { $0.rollouts = [Self.message(status)] }
  }

  public func rolloutStatus(request: Palisade_V1_RolloutStatusRequest, context: ServerContext) async throws
    -> Palisade_V1_RolloutStatusResponse
  {
    let (call, rollouts) = try await admit(context, model: request.model.isEmpty ? nil : request.model)
    // Every model's rollouts: only those of models the policy lets the caller see.
    let visible = rollouts.status(model: request.model.isEmpty ? nil : request.model).filter {
      authorizer.permits(call, rpc: context.descriptor.method, model: $0.model, version: nil)
    }
    return .with { $0.rollouts = visible.map(Self.message) }
  }

  public func rolloutPromote(request: Palisade_V1_RolloutPromoteRequest, context: ServerContext) async throws
    -> Palisade_V1_RolloutStatusResponse
  {
    let (call, rollouts) = try await admit(context, model: request.model)
    let status = try await rollouts.promote(model: request.model, by: call.identity.spiffeID.description)
    return .with { $0.rollouts = [Self.message(status)] }
  }

  public func rolloutAbort(request: Palisade_V1_RolloutAbortRequest, context: ServerContext) async throws
    -> Palisade_V1_RolloutStatusResponse
  {
    let (call, rollouts) = try await admit(context, model: request.model)
    let reason = String(request.reason.sanitizedForMessage.prefix(200))
    let status = try await rollouts.abort(model: request.model, reason: reason, by: call.identity.spiffeID.description)
    return .with { $0.rollouts = [Self.message(status)] }
  }

  /// Authorises a rollout RPC on `model` (audited like every admin RPC).
  private func admit(_ context: ServerContext, model: String?) async throws -> (CallContext, RolloutController) {
    let call = try context.callContext()
    try await authorizer.authorize(call, rpc: context.descriptor.method, model: model, auditor: auditor)
    guard let rollouts else { throw PalisadeError(.unimplemented, "rollouts are not enabled on this server") }
    return (call, rollouts)
  }

  static func message(_ s: RolloutController.Status) -> Palisade_V1_Rollout {
    func window(_ w: RolloutController.WindowStatus) -> Palisade_V1_RolloutVersionWindow {
      .with {
        $0.version = w.version
        $0.calls = Int64(w.calls)
        $0.errors = Int64(w.errors)
        $0.errorRate = w.errorRate
        $0.p99Ms = w.p99Milliseconds
        $0.oodRate = w.oodRate
      }
    }
    return .with {
      $0.model = s.model
      $0.rolloutID = s.id
      $0.mode = s.plan.mode.rawValue
      $0.state = s.state.rawValue
      $0.stableVersion = s.stable.version
      $0.candidateVersion = s.candidate.version
      $0.share = s.plan.share
      $0.startedUnix = Int64(s.started.timeIntervalSince1970)
      $0.endedUnix = s.ended.map { Int64($0.timeIntervalSince1970) } ?? 0
      $0.reason = s.reason
      $0.stable = window(s.stable)
      $0.candidate = window(s.candidate)
      $0.labelPsi = s.labelPSI
      $0.shadowCompared = Int64(s.shadowCompared)
      $0.shadowAgreement = s.shadowAgreement
      $0.shadowSkipped = Int64(s.shadowSkipped)
    }
  }
}
