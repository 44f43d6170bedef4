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

  public init(authorizer: Authorizer, metrics: ServerMetrics, logger: Logger, auditor: Auditor) {
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
      await auditor.event(.quarantineLifted, principal: principal.description, reason: "lifted by \(call.identity.spiffeID)")
    }
    metrics.setQuarantinesActive(authorizer.quarantines.list().count)
    logger.notice(
      "quarantine lift requested",
      metadata: ["principal": "\(principal)", "by": "\(call.identity)", "lifted": "\(lifted)", "request_id": "\(call.requestID)"])
    return .with { $0.lifted = lifted }
  }
}
