import Foundation
public import Logging
public import PalisadeCore
public import PalisadeIdentity
public import PalisadeTransport
import Synchronization

/// Pipeline stages 1 and 2 as one small type, so that both ways a call arrives (grpc-swift's interceptors, and the
/// transport's fast path for `ModelInfer`) run exactly the same checks in the same order.
///
/// Stage 1 turns the connection's handshake identity into the call's ``CallContext`` (or refuses: a certificate
/// without exactly one valid SPIFFE URI SAN). Stage 2 verifies the bearer token against that identity. Refusals
/// are UNAUTHENTICATED with one generic message; the reason goes to the log, a metric and the audit log.
public struct CallAuthenticator: Sendable {
  let verifier: TokenVerifier?
  let exempt: Set<String>
  let metrics: ServerMetrics
  let logger: Logger
  let auditor: Auditor?
  private let counter = RequestCounter()

  public init(
    verifier: TokenVerifier?, exemptRPCs: Set<String>, metrics: ServerMetrics, logger: Logger, auditor: Auditor?
  ) {
    self.verifier = verifier
    self.exempt = exemptRPCs
    self.metrics = metrics
    self.logger = logger
    self.auditor = auditor
  }

  /// Stage 1: the caller's certificate identity, bound to its connection in the TLS handshake.
  public func identify(_ connection: PeerConnection, rpc: String) async throws(PalisadeError) -> CallContext {
    switch connection.identity {
    case .success(let identity):
      return CallContext(identity: identity, requestID: counter.next(), token: nil, connection: connection.id)
    case .failure(let failure):
      metrics.recordIdentityRefused(reason: failure.metricLabel)
      logger.notice(
        "caller identity refused",
        metadata: ["rpc": "\(rpc)", "peer": "\(connection.remoteAddress)", "reason": "\(failure)"])
      await auditor?.call(
        nil, rpc: rpc, status: "UNAUTHENTICATED", reason: "client certificate identity refused: \(failure)")
      throw PalisadeError(.unauthenticated, "client certificate identity refused")
    }
  }

  /// Stage 2: the `authorization` header's token, verified and bound to `call`'s certificate. RPCs exempt from
  /// tokens pass unchanged.
  public func authenticate(_ call: inout CallContext, authorization: String?, rpc: String) async throws(PalisadeError) {
    guard let verifier, !exempt.contains(rpc) else { return }
    do {
      call.token = try verifier.verify(authorization: authorization, identity: call.identity)
    } catch {
      metrics.recordTokenRefused(reason: error.label)
      logger.notice(
        "token refused",
        metadata: [
          "rpc": "\(rpc)", "principal": "\(call.identity)", "request_id": "\(call.requestID)", "reason": "\(error)",
        ])
      await auditor?.call(call, rpc: rpc, status: "UNAUTHENTICATED", reason: "token refused: \(error.label)")
      throw PalisadeError(.unauthenticated, "missing or invalid credentials")
    }
  }
}

extension PeerIdentity.Failure {
  var metricLabel: String {
    switch self {
    case .noClientCertificate: "no_certificate"
    case .noURISAN: "no_uri_san"
    case .multipleURISANs: "multiple_uri_sans"
    case .notSPIFFE: "not_spiffe"
    case .malformedExtensions: "malformed"
    }
  }
}

/// Request ids: a per-process random prefix and a counter, cheap and unique.
final class RequestCounter: Sendable {
  private let prefix = String(UInt32.random(in: .min ... .max), radix: 16)
  private let value = Atomic<UInt64>(0)
  func next() -> String { "\(prefix)-\(value.add(1, ordering: .relaxed).newValue)" }
}
