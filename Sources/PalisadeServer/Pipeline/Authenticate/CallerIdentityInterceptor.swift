public import GRPCCore
import PalisadeCore
import PalisadeTransport

/// Pipeline stage 1 for calls served through grpc-swift: the connection's verified client certificate becomes the
/// call's ``CallContext`` (``CallAuthenticator/identify(_:rpc:)``), or the call is refused with UNAUTHENTICATED.
///
/// The TLS layer already proved possession of a certificate chaining to a trusted client CA; this stage insists
/// that the certificate names exactly one SPIFFE ID. The transport binds the identity to the connection in the
/// handshake and hands it over in `transportSpecific`, so nothing a client sends can claim another identity.
public struct CallerIdentityInterceptor: ServerInterceptor {
  private let authenticator: CallAuthenticator

  public init(authenticator: CallAuthenticator) {
    self.authenticator = authenticator
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    guard let stream = context.transportSpecific as? StreamInfo else {
      throw PalisadeError(.internal, "call context missing", detail: "not served by the mTLS transport")
    }
    var context = context
    context.transportSpecific = try await authenticator.identify(stream.connection, rpc: context.descriptor.method)
    return try await next(request, context)
  }
}
