public import GRPCCore
public import PalisadeIdentity
import Synchronization

/// One accepted TLS connection, as the services see it.
///
/// The caller's identity is computed once, in the TLS handshake's verification callback, from the verified leaf
/// certificate; every stream on the connection shares it. It reaches handlers as
/// `ServerContext.transportSpecific` (``StreamInfo``), set by the transport itself, so no header a client sends can
/// claim another connection's identity.
public final class PeerConnection: Sendable {
  /// A number unique for the life of the process.
  public let id: UInt64
  /// `ipv4:1.2.3.4:5678` or `ipv6:[::1]:5678`.
  public let remoteAddress: String
  /// The source IP address alone, for per-address limits.
  public let remoteHost: String
  private let identityResult = Mutex<Result<PeerIdentity, PeerIdentity.Failure>?>(nil)

  init(id: UInt64, remoteAddress: String, remoteHost: String) {
    self.id = id
    self.remoteAddress = remoteAddress
    self.remoteHost = remoteHost
  }

  /// The identity bound in the handshake; ``PeerIdentity/Failure/noClientCertificate`` if none was.
  public var identity: Result<PeerIdentity, PeerIdentity.Failure> {
    identityResult.withLock { $0 } ?? .failure(.noClientCertificate)
  }

  func bind(_ identity: Result<PeerIdentity, PeerIdentity.Failure>) {
    identityResult.withLock { $0 = identity }
  }

  /// The principal budgets are keyed by: the SPIFFE ID, or the connection when it has none.
  var principalKey: String {
    switch identity {
    case .success(let id): id.spiffeID.description
    case .failure: "connection:\(self.id)"
    }
  }

  /// The key of the unauthorized-call budget (``CallBudget``): the SPIFFE ID, or the source address for a peer
  /// without one, so that reconnecting does not buy a fresh budget.
  var callBudgetKey: String {
    switch identity {
    case .success(let id): id.spiffeID.description
    case .failure: "address:\(remoteHost)"
    }
  }
}

/// What the transport tells a handler about the stream it serves (in `ServerContext.transportSpecific`).
public struct StreamInfo: ServerContext.TransportSpecific {
  public let connection: PeerConnection
  public init(connection: PeerConnection) { self.connection = connection }
}
