import Foundation
public import Logging
import PalisadeBundle
import PalisadeSupport
public import PalisadeCore
public import PalisadePolicy
import Synchronization

/// The policy in force, replaceable at runtime by the reloader.
public final class PolicyStore: Sendable {
  private let current: Mutex<Policy>
  public init(_ policy: Policy) { current = Mutex(policy) }
  public var policy: Policy { current.withLock { $0 } }
  public func replace(_ policy: Policy) { current.withLock { $0 = policy } }
}

/// Pipeline stage 3: the policy decides principal × RPC × model; quarantined principals are refused; an allowing
/// rule's rate limit is enforced per principal. PERMISSION_DENIED for policy, RESOURCE_EXHAUSTED with a retry
/// hint for rate limits.
public struct Authorizer: Sendable {
  let store: PolicyStore
  let limiter: RateLimiter
  let metrics: ServerMetrics
  let logger: Logger
  let exempt: Set<String>
  /// Automatic quarantines (extraction monitor), checked before the policy.
  public let quarantines: QuarantineStore

  public init(
    store: PolicyStore, metrics: ServerMetrics, logger: Logger, exemptRPCs: Set<String>,
    quarantines: QuarantineStore = QuarantineStore()
  ) {
    self.store = store
    self.quarantines = quarantines
    self.limiter = RateLimiter()
    self.metrics = metrics
    self.logger = logger
    self.exempt = exemptRPCs
  }

  /// Authorises `rpc` on `model` (nil for model-less RPCs) for `call`. Returns the decision, whose version
  /// constraint the caller checks with ``checkVersion(_:version:model:)`` once the model is resolved.
  @discardableResult
  public func authorize(_ call: CallContext, rpc: String, model: String?, version: String? = nil)
    throws(PalisadeError) -> Policy.Decision?
  {
    try Self.checkNames(model: model, version: version)
    if exempt.contains(rpc) { return nil }
    if !quarantines.isEmpty, let entry = quarantines.active(call.identity.spiffeID) {
      metrics.recordPolicyDenied(rpc: rpc)
      metrics.recordRejection(reason: "quarantined")
      logger.notice(
        "quarantined principal refused",
        metadata: [
          "rpc": "\(rpc)", "principal": "\(call.identity)", "request_id": "\(call.requestID)",
          "until": "\(entry.until)",
        ])
      throw PalisadeError(
        .permissionDenied,
        "this principal is quarantined until \(RFC3339.string(secondsSince1970: entry.until.timeIntervalSince1970))")
    }
    let facts = Policy.CallFacts(
      spiffeID: call.identity.spiffeID, subject: call.token?.subject, scopes: call.token?.scopes ?? [], rpc: rpc,
      model: model)
    let decision = store.policy.decide(facts)
    guard decision.allowed else {
      metrics.recordPolicyDenied(rpc: rpc)
      logger.notice(
        "policy denied",
        metadata: [
          "rpc": "\(rpc)", "principal": "\(call.identity)", "model": "\(model ?? "")",
          "request_id": "\(call.requestID)",
          "reason": "\(decision.reason)",
        ])
      throw PalisadeError(
        .permissionDenied,
        "the policy does not allow \(rpc)\(model.map { " on model '\($0.sanitizedForMessage)'" } ?? "")")
    }
    if let limit = decision.rateLimit, let rule = decision.rule,
      let wait = limiter.acquire("\(rule)\u{0}\(call.identity.spiffeID)", limit: limit)
    {
      metrics.recordRateLimited(rpc: rpc)
      let seconds = (wait * 1000).rounded(.up) / 1000
      throw PalisadeError(.resourceExhausted, "rate limit exceeded; retry after \(seconds)s")
    }
    return decision
  }

  /// Whether the policy lets `call` use `rpc` on `model` (at `version`, when given). For scoping what a listing
  /// shows (repository index, statistics): nothing is consumed, logged or counted; the listing RPC itself was
  /// authorised with ``authorize(_:rpc:model:)``.
  public func permits(_ call: CallContext, rpc: String, model: String, version: String?) -> Bool {
    let facts = Policy.CallFacts(
      spiffeID: call.identity.spiffeID, subject: call.token?.subject, scopes: call.token?.scopes ?? [], rpc: rpc,
      model: model)
    let decision = store.policy.decide(facts)
    guard decision.allowed else { return false }
    if let version, let constraint = decision.versions, !constraint.allows(version) { return false }
    return true
  }

  /// Refuses a resolved version outside the deciding rule's constraint.
  /// A model name no bundle can have, or a version no model can have, is refused before any policy work: the
  /// policy's globs, the audit record and the logs see only short ASCII names, and names that Swift would call
  /// equal (canonically equivalent Unicode) cannot reach a model whose rules name it differently.
  static func checkNames(model: String?, version: String?) throws(PalisadeError) {
    if let model, !BundleManifest.isValidModelName(model) {
      throw PalisadeError(.invalidArgument, "the model name must be \(BundleManifest.modelNameRule)")
    }
    if let version, !version.isEmpty,
      version.utf8.count > 64 || !version.utf8.allSatisfy({ isVersionByte($0) })
    {
      throw PalisadeError(.invalidArgument, "the model version must be 1-64 characters of A-Z a-z 0-9 . _ -")
    }
  }

  private static func isVersionByte(_ b: UInt8) -> Bool {
    switch b {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
      UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
      true
    default: false
    }
  }

  public func checkVersion(_ decision: Policy.Decision?, version: String, model: String) throws(PalisadeError) {
    guard let constraint = decision?.versions, !constraint.allows(version) else { return }
    throw PalisadeError(
      .permissionDenied,
      "the policy does not allow version \(version.sanitizedForMessage) of model '\(model.sanitizedForMessage)'")
  }
}

extension Authorizer {
  /// ``authorize(_:rpc:model:)`` with its decision in the audit log (RPCs exempt from tokens are not recorded:
  /// they are liveness and health probes). `ModelInfer` records its own, richer, record in the pipeline.
  @discardableResult
  public func authorize(
    _ call: CallContext, rpc: String, model: String?, version: String? = nil, auditor: Auditor
  ) async throws -> Policy.Decision? {
    let decision: Policy.Decision?
    do {
      if !exempt.contains(rpc) { try auditor.requireAvailable() }
      decision = try authorize(call, rpc: rpc, model: model, version: version)
    } catch {
      if error == Auditor.unavailable { throw error }
      await auditor.call(
        call, rpc: rpc, model: model, status: StatusMapping.codeName(for: error), reason: error.message)
      throw error
    }
    // Fail closed: an allowed call whose decision cannot be recorded is refused.
    if !exempt.contains(rpc) {
      try await auditor.callOrRefuse(call, rpc: rpc, model: model, status: "OK", reason: decision.map { $0.reason })
    }
    return decision
  }
}
