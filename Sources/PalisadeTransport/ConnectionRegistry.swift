import NIOCore
import Synchronization
public import PalisadeIdentity

/// The identity of every open TLS connection, keyed by a connection number that is never reused.
///
/// The handshake computes the caller's identity once per connection and stores it here; each HTTP/2 stream on
/// that connection carries the connection number in a header that the transport writes (any client-sent copy
/// is removed first), and the server looks it up. Entries are removed when the connection closes.
public final class ConnectionRegistry: Sendable {
  /// The request header the transport sets on every stream; clients cannot set it.
  public static let connectionHeader = "palisade-internal-connection"

  private let connections = Mutex<[UInt64: Result<PeerIdentity, PeerIdentity.Failure>]>([:])
  private let counter = Atomic<UInt64>(0)

  public init() {}

  /// A number for a new connection; unique for the life of the process.
  func nextConnectionID() -> UInt64 {
    counter.add(1, ordering: .relaxed).newValue
  }

  func record(_ identity: Result<PeerIdentity, PeerIdentity.Failure>, for connection: UInt64) {
    connections.withLock { $0[connection] = identity }
  }

  func remove(_ connection: UInt64) {
    _ = connections.withLock { $0.removeValue(forKey: connection) }
  }

  /// The identity for the connection number in a stream's ``connectionHeader``; a missing, unknown or closed
  /// connection yields ``PeerIdentity/Failure/noClientCertificate``.
  public func identity(forHeader value: String?) -> Result<PeerIdentity, PeerIdentity.Failure> {
    guard let value, let id = UInt64(value) else { return .failure(.noClientCertificate) }
    return connections.withLock { $0[id] } ?? .failure(.noClientCertificate)
  }

  /// Open connections, for metrics.
  public var openConnections: Int { connections.withLock { $0.count } }
}
