public import GRPCCore
public import Logging
import PalisadeCore
public import PalisadeIdentity

/// Pipeline stage 2: the call's `authorization: Bearer <JWT>` must verify (``TokenVerifier``) and be bound to the
/// connection's client certificate. RPCs listed as exempt (liveness, health) pass without a token.
///
/// Refusals are UNAUTHENTICATED with one generic message, whatever the reason: the reason goes to the log and the
/// `palisade_token_refusals_total{reason}` metric, never to the caller, and the token itself goes nowhere.
public struct TokenAuthenticationInterceptor: ServerInterceptor {
  private let verifier: TokenVerifier
  private let exempt: Set<String>
  private let metrics: ServerMetrics
  private let logger: Logger

  private let auditor: Auditor?

  public init(
    verifier: TokenVerifier, exemptRPCs: Set<String>, metrics: ServerMetrics, logger: Logger, auditor: Auditor? = nil
  ) {
    self.auditor = auditor
    self.verifier = verifier
    self.exempt = exemptRPCs
    self.metrics = metrics
    self.logger = logger
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    if exempt.contains(context.descriptor.method) { return try await next(request, context) }
    var call = try context.callContext()
    let header = request.metadata[stringValues: "authorization"].first { _ in true }
    do {
      call.token = try verifier.verify(authorization: header, identity: call.identity)
    } catch {
      metrics.recordTokenRefused(reason: error.label)
      logger.notice(
        "token refused",
        metadata: [
          "rpc": "\(context.descriptor.method)", "principal": "\(call.identity)", "request_id": "\(call.requestID)",
          "reason": "\(error)",
        ])
      await auditor?.call(call, rpc: context.descriptor.method, status: "UNAUTHENTICATED", reason: "token refused: \(error.label)")
      throw PalisadeError(.unauthenticated, "missing or invalid credentials")
    }
    var context = context
    context.transportSpecific = call
    var request = request
    request.metadata.removeAllValues(forKey: "authorization")
    return try await next(request, context)
  }
}
