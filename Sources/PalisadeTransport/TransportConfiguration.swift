/// How the gRPC listener treats connections, streams and messages. Every field has a safe default; the server's
/// YAML configuration maps onto it (`server.connection`, `server.limits`).
///
/// The limits exist so that nothing a peer does before it is authenticated, and nothing one authenticated peer
/// does, can hold unbounded resources: connections are capped per source address and in total, a handshake must
/// finish in time, header blocks and messages are bounded, partially sent messages are budgeted per connection and
/// per principal and must complete within a deadline.
public struct TransportConfiguration: Sendable, Equatable {
  public struct Connections: Sendable, Equatable {
    /// A TCP connection that has not completed the TLS handshake within this is closed.
    public var handshakeTimeout: Duration
    /// Open connections in total (handshaking included); further connections are closed at once.
    public var maxConnections: Int
    /// Open connections from one source IP address.
    public var maxConnectionsPerAddress: Int
    /// Every connection is sent GOAWAY after this long, so rotated or revoked credentials take effect.
    public var maxAge: Duration?
    /// Time in-flight calls get on a connection that reached its maximum age (or is idle-closed) before it closes.
    public var maxGrace: Duration
    /// A connection without open streams for this long is closed.
    public var maxIdle: Duration?
    /// Server PING after this long without frames from the client; nil: never.
    public var keepaliveTime: Duration?
    /// A server PING not answered within this closes the connection.
    public var keepaliveTimeout: Duration

    public init(
      handshakeTimeout: Duration = .seconds(10), maxConnections: Int = 1024, maxConnectionsPerAddress: Int = 256,
      maxAge: Duration? = .seconds(3600), maxGrace: Duration = .seconds(60), maxIdle: Duration? = .seconds(1800),
      keepaliveTime: Duration? = .seconds(60), keepaliveTimeout: Duration = .seconds(20)
    ) {
      self.handshakeTimeout = handshakeTimeout
      self.maxConnections = max(1, maxConnections)
      self.maxConnectionsPerAddress = max(1, maxConnectionsPerAddress)
      self.maxAge = maxAge
      self.maxGrace = maxGrace
      self.maxIdle = maxIdle
      self.keepaliveTime = keepaliveTime
      self.keepaliveTimeout = keepaliveTimeout
    }
    public static let defaults = Connections()
  }

  public struct Streams: Sendable, Equatable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    public var maxConcurrentStreams: Int
    /// HTTP/2 flow-control window per stream and for the connection.
    public var targetWindowSize: Int
    /// A request whose header block (names and values, RFC 7541 sizes) exceeds this is refused with
    /// RESOURCE_EXHAUSTED on that stream only; the connection goes on.
    public var maxHeaderListBytes: Int
    /// The HPACK decoder's own bound. A block beyond it cannot be skipped (HPACK state would be lost), so it ends
    /// the connection; it is advertised in SETTINGS and much larger than ``maxHeaderListBytes``.
    public var headerDecoderLimit: Int

    public init(
      maxConcurrentStreams: Int = 128, targetWindowSize: Int = 1 << 20, maxHeaderListBytes: Int = 16 << 10,
      headerDecoderLimit: Int = 1 << 20
    ) {
      self.maxConcurrentStreams = max(1, maxConcurrentStreams)
      self.targetWindowSize = min(max(65_535, targetWindowSize), Int(Int32.max))
      self.maxHeaderListBytes = max(1024, maxHeaderListBytes)
      self.headerDecoderLimit = max(self.maxHeaderListBytes * 2, headerDecoderLimit)
    }
    public static let defaults = Streams()
  }

  public struct Messages: Sendable, Equatable {
    /// Largest request message; a larger declared length is refused with RESOURCE_EXHAUSTED before it is read.
    public var maxMessageBytes: Int
    /// Bytes of request messages received but not yet complete, per connection. Beyond it the stream whose bytes
    /// overflow the budget is refused (RESOURCE_EXHAUSTED).
    public var maxInflightBytesPerConnection: Int
    /// The same budget per principal (SPIFFE ID), across all of its connections.
    public var maxInflightBytesPerPrincipal: Int
    /// A request message must arrive whole within this of its first byte, or its stream is refused.
    public var messageTimeout: Duration

    public init(
      maxMessageBytes: Int = 64 << 20, maxInflightBytesPerConnection: Int = 64 << 20,
      maxInflightBytesPerPrincipal: Int = 128 << 20, messageTimeout: Duration = .seconds(30)
    ) {
      self.maxMessageBytes = max(1024, maxMessageBytes)
      self.maxInflightBytesPerConnection = max(1024, maxInflightBytesPerConnection)
      self.maxInflightBytesPerPrincipal = max(1024, maxInflightBytesPerPrincipal)
      self.messageTimeout = messageTimeout
    }
    public static let defaults = Messages()
  }

  public var host: String
  public var port: Int
  public var connections: Connections
  public var streams: Streams
  public var messages: Messages

  public init(
    host: String = "127.0.0.1", port: Int = 8443, connections: Connections = .defaults, streams: Streams = .defaults,
    messages: Messages = .defaults
  ) {
    self.host = host
    self.port = port
    self.connections = connections
    self.streams = streams
    self.messages = messages
  }
}

/// What the transport reports to the server's metrics (the transport knows nothing of Prometheus).
public protocol TransportObserver: Sendable {
  /// A connection or stream was refused before reaching the service; `reason` is a short metric label:
  /// `max_connections`, `max_connections_per_address`, `handshake_timeout`, `handshake_failed`,
  /// `header_list_too_large`, `message_too_large`, `inflight_connection_budget`, `inflight_principal_budget`,
  /// `message_timeout`, `bad_request`.
  func transportRefused(reason: String)
  /// Connections currently open.
  func connectionsOpen(_ count: Int)
}

/// An observer that records nothing.
public struct NoTransportObserver: TransportObserver {
  public init() {}
  public func transportRefused(reason: String) {}
  public func connectionsOpen(_ count: Int) {}
}
