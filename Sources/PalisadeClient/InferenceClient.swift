public import GRPCCore
public import GRPCNIOTransportHTTP2
public import PalisadeProto

/// The client side of mTLS: this caller's certificate and key, and the CA bundle that signs the server.
public struct ClientTLSFiles: Sendable {
  public var certificate: String
  public var privateKey: String
  public var serverCA: String
  public init(certificate: String, privateKey: String, serverCA: String) {
    self.certificate = certificate
    self.privateKey = privateKey
    self.serverCA = serverCA
  }
}

/// Opens an mTLS gRPC connection to a Palisade (or any Open Inference Protocol) server and runs `body` with a
/// typed client; the connection closes when `body` returns. The server certificate must name `host`.
public func withInferenceClient<Result: Sendable>(
  host: String, port: Int, tls: ClientTLSFiles, token: String? = nil,
  _ body: @Sendable (Inference_GRPCInferenceService.Client<HTTP2ClientTransport.Posix>) async throws -> Result
) async throws -> Result {
  try await withPalisadeConnection(host: host, port: port, tls: tls, token: token) { client in
    try await body(Inference_GRPCInferenceService.Client(wrapping: client))
  }
}

/// Like ``withInferenceClient(host:port:tls:token:_:)`` for Palisade's own `palisade.v1.Admin` service.
public func withAdminClient<Result: Sendable>(
  host: String, port: Int, tls: ClientTLSFiles, token: String? = nil,
  _ body: @Sendable (Palisade_V1_Admin.Client<HTTP2ClientTransport.Posix>) async throws -> Result
) async throws -> Result {
  try await withPalisadeConnection(host: host, port: port, tls: tls, token: token) { client in
    try await body(Palisade_V1_Admin.Client(wrapping: client))
  }
}

/// Opens an mTLS gRPC connection (with the bearer token on every call) and runs `body` with the raw client, from
/// which any generated service client can be made.
public func withPalisadeConnection<Result: Sendable>(
  host: String, port: Int, tls: ClientTLSFiles, token: String? = nil,
  _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
) async throws -> Result {
  try await withPalisadeConnection(host: host, port: port, tls: tls, token: token, configureTLS: { _ in }, body)
}

/// The connection every client helper uses; `configureTLS` may add to the mTLS settings (attestation installs
/// its own server-certificate verification there).
func withPalisadeConnection<Result: Sendable>(
  host: String, port: Int, tls: ClientTLSFiles, token: String?,
  configureTLS: (inout HTTP2ClientTransport.Posix.TransportSecurity.TLS) -> Void,
  _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
) async throws -> Result {
  let transport = try HTTP2ClientTransport.Posix(
    target: target(host: host, port: port),
    transportSecurity: .mTLS(
      certificateChain: [.file(path: tls.certificate, format: .pem)],
      privateKey: .file(path: tls.privateKey, format: .pem)
    ) {
      $0.trustRoots = .certificates([.file(path: tls.serverCA, format: .pem)])
      configureTLS(&$0)
    },
    config: .defaults { $0.connection.maxIdleTime = nil }
  )
  let interceptors: [any ClientInterceptor] = token.map { [BearerTokenInterceptor(token: $0)] } ?? []
  return try await withGRPCClient(transport: transport, interceptors: interceptors) { client in
    try await body(client)
  }
}

/// An IP literal must not be sent as SNI, so literals get IP targets and names get DNS targets.
func target(host: String, port: Int) -> any ResolvableTarget {
  if host.contains(":") { return .ipv6(address: host, port: port) }
  if host.split(separator: ".").count == 4, host.allSatisfy({ $0.isNumber || $0 == "." }) {
    return .ipv4(address: host, port: port)
  }
  return .dns(host: host, port: port)
}

/// Adds `authorization: Bearer <token>` to every call.
public struct BearerTokenInterceptor: ClientInterceptor {
  let token: String
  public init(token: String) { self.token = token }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingClientRequest<Input>,
    context: ClientContext,
    next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
  ) async throws -> StreamingClientResponse<Output> {
    var request = request
    request.metadata.addString("Bearer \(token)", forKey: "authorization")
    return try await next(request, context)
  }
}
