public import GRPCCore
public import Logging
import PalisadeCore
public import PalisadeIdentity
public import PalisadeTransport
import Synchronization

/// Pipeline stage 1 (transport identity): turns the connection's verified client certificate into the call's
/// ``CallContext``, or refuses the call with UNAUTHENTICATED.
///
/// The TLS layer already proved possession of a certificate chaining to a trusted client CA; this stage insists
/// that the certificate names exactly one SPIFFE ID. The precise reason goes to the log and a metric; the caller
/// only learns that its certificate identity was refused.
public struct CallerIdentityInterceptor: ServerInterceptor {
  private let registry: ConnectionRegistry
  private let metrics: ServerMetrics
  private let logger: Logger
  private let counter = RequestCounter()
  private let auditor: Auditor?

  public init(registry: ConnectionRegistry, metrics: ServerMetrics, logger: Logger, auditor: Auditor? = nil) {
    self.auditor = auditor
    self.registry = registry
    self.metrics = metrics
    self.logger = logger
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    let header = request.metadata[stringValues: ConnectionRegistry.connectionHeader].first { _ in true }
    switch registry.identity(forHeader: header) {
    case .success(let identity):
      var context = context
      context.transportSpecific = CallContext(identity: identity, requestID: counter.next(), token: nil)
      var request = request
      request.metadata.removeAllValues(forKey: ConnectionRegistry.connectionHeader)
      return try await next(request, context)
    case .failure(let failure):
      metrics.recordIdentityRefused(reason: failure.metricLabel)
      logger.notice(
        "caller identity refused",
        metadata: ["rpc": "\(context.descriptor.method)", "peer": "\(context.remotePeer)", "reason": "\(failure)"])
      await auditor?.call(
        nil, rpc: context.descriptor.method, status: "UNAUTHENTICATED", reason: "client certificate identity refused: \(failure)")
      throw PalisadeError(.unauthenticated, "client certificate identity refused")
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
