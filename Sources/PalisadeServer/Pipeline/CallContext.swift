public import GRPCCore
public import PalisadeIdentity
public import PalisadeCore

/// What every stage knows about the current call, set by ``CallerIdentityInterceptor`` before any handler runs.
///
/// Carried in `ServerContext.transportSpecific`, so handlers, including streaming ones whose bodies run after
/// the interceptors return, read it from their own context.
public struct CallContext: ServerContext.TransportSpecific {
  /// The verified caller.
  public let identity: PeerIdentity
  /// A server-assigned id for correlating logs (and, later, audit records).
  public let requestID: String
  /// The verified token; nil only on RPCs exempt from tokens.
  public var token: TokenVerifier.Verified?
  /// The transport's number for the call's connection (unique for the life of the process).
  public let connection: UInt64

  public init(identity: PeerIdentity, requestID: String, token: TokenVerifier.Verified? = nil, connection: UInt64 = 0) {
    self.identity = identity
    self.requestID = requestID
    self.token = token
    self.connection = connection
  }
}

extension ServerContext {
  /// The call's ``CallContext``. Its absence means the identity stage did not run, a bug: fail closed.
  public func callContext() throws(PalisadeError) -> CallContext {
    guard let call = transportSpecific as? CallContext else {
      throw PalisadeError(.internal, "call context missing", detail: "identity interceptor not installed")
    }
    return call
  }
}
