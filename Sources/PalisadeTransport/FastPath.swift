public import GRPCCore
public import NIOCore
public import NIOHPACK

/// A unary RPC served straight from the HTTP/2 stream, without grpc-swift's per-call machinery (the request is a
/// `ByteBuffer` slice of what arrived, the response is written as three frames and one flush).
///
/// The transport still does everything it does for every stream first: TLS identity, header and message limits,
/// in-flight budgets, `grpc-timeout`, cancellation when the client resets the stream or the connection goes. The
/// handler runs the same pipeline stages as the grpc-swift path (authentication, authorisation, ...), in the same
/// order; see `PalisadeServer`'s `InferenceFastPath`.
public protocol FastUnaryHandler: Sendable {
  /// The `:path` values this handler serves, e.g. `/inference.GRPCInferenceService/ModelInfer`.
  var paths: [String] { get }
  /// Serves one call. Task cancellation means the caller went away or its deadline passed: stop early.
  func handle(_ call: FastUnaryCall) async -> FastUnaryResponse
}

/// One unary call on the fast path.
public struct FastUnaryCall: Sendable {
  /// The `:path`.
  public let path: String
  /// The request headers (pseudo-headers included), as received.
  public let headers: HPACKHeaders
  /// The one request message (without its 5-byte gRPC prefix).
  public let message: ByteBuffer
  /// The connection the call arrived on, with the caller's certificate identity.
  public let connection: PeerConnection
  /// When the client's `grpc-timeout` runs out, if it sent one.
  public let deadline: ContinuousClock.Instant?

  /// The first value of header `name` (lowercase).
  public func header(_ name: String) -> String? { headers.first(name: name) }
}

/// What a fast-path handler answers.
public enum FastUnaryResponse: Sendable {
  /// One response message (serialized, without prefix) and status OK.
  case message(ByteBuffer)
  /// No message: the status (never `.ok`) and a caller-safe message.
  case failure(RPCError.Code, String)
}

/// A bidirectional streaming RPC served straight from the HTTP/2 stream (`ModelStreamInfer`): each request message
/// arrives as a `ByteBuffer`, each response is written as one DATA frame, with no grpc-swift machinery per message.
///
/// The transport delivers messages in order through `messages` (at most ``maxMessagesInFlight`` not yet answered;
/// beyond that it stops reading and HTTP/2 flow control holds the client), ends `messages` when the client
/// half-closes, and cancels the task serving the stream when the client resets it, the connection goes or
/// `grpc-timeout` passes. The handler answers with `respond` (in order) and returns the stream's final status.
public protocol FastStreamHandler: Sendable {
  /// The `:path` values this handler serves.
  var paths: [String] { get }
  func serve(
    _ call: FastStreamCall, messages: AsyncStream<ByteBuffer>, respond: @escaping @Sendable (ByteBuffer) -> Void
  ) async -> FastStreamEnd
}

/// One stream on the fast path.
public struct FastStreamCall: Sendable {
  public let path: String
  public let headers: HPACKHeaders
  public let connection: PeerConnection
  public let deadline: ContinuousClock.Instant?

  /// The first value of header `name` (lowercase).
  public func header(_ name: String) -> String? { headers.first(name: name) }
}

/// How a fast-path stream ends.
public enum FastStreamEnd: Sendable {
  case ok
  case failure(RPCError.Code, String)
}

/// Request messages of one fast-path stream that may be waiting for their answers before the transport stops
/// reading from the client.
public let maxMessagesInFlight = 32

/// Fast-path requests up to this size are served on the event loop that read them (no thread wake-up to start the
/// call or to write its answer); larger ones run on the concurrency pool, so that decoding and screening a large
/// tensor never holds up the other connections of that event loop.
public let eventLoopRequestLimit = 64 << 10
