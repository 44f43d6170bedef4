public import PalisadeYAML

extension ServerConfig {
  /// `server.connection`: keepalive, idle and age limits, handshake deadline and connection caps.
  public struct Connection: DefaultedConfigSection {
    /// Server-initiated keepalive ping interval.
    public var keepaliveSeconds: Int
    /// A connection whose ping is not answered within this time is closed.
    public var keepaliveTimeoutSeconds: Int
    /// Idle connections are closed after this long.
    public var maxIdleSeconds: Int
    /// Every connection is closed (GOAWAY) after this long, so rotated or revoked credentials take effect within
    /// `maxAgeSeconds + maxAgeGraceSeconds`.
    public var maxAgeSeconds: Int
    /// Time given to in-flight calls on a connection that reached its maximum age.
    public var maxAgeGraceSeconds: Int
    /// A connection must complete its TLS handshake within this (before it, the peer is anonymous).
    public var handshakeTimeoutSeconds: Int = 10
    /// Open connections in total, and from one source address; beyond: closed at once.
    public var maxConnections: Int = 1024
    public var maxConnectionsPerAddress: Int = 256
    public init(
      keepaliveSeconds: Int, keepaliveTimeoutSeconds: Int, maxIdleSeconds: Int, maxAgeSeconds: Int,
      maxAgeGraceSeconds: Int
    ) {
      self.keepaliveSeconds = keepaliveSeconds
      self.keepaliveTimeoutSeconds = keepaliveTimeoutSeconds
      self.maxIdleSeconds = maxIdleSeconds
      self.maxAgeSeconds = maxAgeSeconds
      self.maxAgeGraceSeconds = maxAgeGraceSeconds
    }
    public static let defaults = Connection(
      keepaliveSeconds: 60, keepaliveTimeoutSeconds: 20, maxIdleSeconds: 1800, maxAgeSeconds: 3600,
      maxAgeGraceSeconds: 60)

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self = .defaults
      try map.int("keepalive_seconds", in: 1...86_400, into: &keepaliveSeconds)
      try map.int("keepalive_timeout_seconds", in: 1...3600, into: &keepaliveTimeoutSeconds)
      try map.int("max_idle_seconds", in: 1...604_800, into: &maxIdleSeconds)
      try map.int("max_age_seconds", in: 1...604_800, into: &maxAgeSeconds)
      try map.int("max_age_grace_seconds", in: 0...3600, into: &maxAgeGraceSeconds)
      try map.int("handshake_timeout_seconds", in: 1...300, into: &handshakeTimeoutSeconds)
      try map.int("max_connections", in: 1...1_000_000, into: &maxConnections)
      try map.int("max_connections_per_address", in: 1...1_000_000, into: &maxConnectionsPerAddress)
    }
  }
}
