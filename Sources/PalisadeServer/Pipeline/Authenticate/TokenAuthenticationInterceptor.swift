public import GRPCCore
import PalisadeCore

/// Pipeline stage 2 for calls served through grpc-swift: the call's `authorization: Bearer <JWT>` must verify and
/// be bound to the connection's client certificate (``CallAuthenticator/authenticate(_:authorization:rpc:)``).
/// RPCs listed as exempt (liveness, health) pass without a token. The header is removed before any handler runs.
public struct TokenAuthenticationInterceptor: ServerInterceptor {
  private let authenticator: CallAuthenticator

  public init(authenticator: CallAuthenticator) {
    self.authenticator = authenticator
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    var call = try context.callContext()
    let header = request.metadata[stringValues: "authorization"].first { _ in true }
    try await authenticator.authenticate(&call, authorization: header, rpc: context.descriptor.method)
    var context = context
    context.transportSpecific = call
    var request = request
    request.metadata.removeAllValues(forKey: "authorization")
    return try await next(request, context)
  }
}
