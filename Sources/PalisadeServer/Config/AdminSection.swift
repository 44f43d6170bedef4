public import PalisadeYAML

extension ServerConfig {
  /// `admin:`, the loopback HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
  public struct Admin: DefaultedConfigSection {
    public var enabled: Bool
    public var listen: HostPort
    /// Open admin connections at once; beyond: closed at once.
    public var maxConnections: Int = 64
    /// Open admin connections at once from one source address, so that one client cannot take every slot from
    /// the kubelet's probes and the scraper; unset in the file, it follows a lowered `max_connections`.
    public var maxConnectionsPerAddress: Int = 16
    /// A request must arrive whole within this of the connection opening or the previous response, and answers may
    /// not sit unread in a full socket for longer.
    public var requestTimeoutSeconds: Int = 10
    /// Fresh `/metrics` renders per second; requests beyond it get the last render again.
    public var maxMetricsRendersPerSecond: Int = 20
    public init(enabled: Bool, listen: HostPort) {
      self.enabled = enabled
      self.listen = listen
    }
    public static let defaults = Admin(enabled: true, listen: HostPort(host: "127.0.0.1", port: 9464))

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self = .defaults
      try map.bool("enabled", into: &enabled)
      if let s = try map.string("listen") { listen = try context.hostPort(s, key: "listen", in: map) }
      try map.int("max_connections", in: 1...100_000, into: &maxConnections)
      maxConnectionsPerAddress =
        try map.int("max_connections_per_address", in: 1...100_000) ?? min(maxConnectionsPerAddress, maxConnections)
      if maxConnectionsPerAddress > maxConnections {
        throw map.error("max_connections_per_address", "must not exceed max_connections (\(maxConnections))")
      }
      try map.int("request_timeout_seconds", in: 1...3600, into: &requestTimeoutSeconds)
      try map.int("max_metrics_renders_per_second", in: 1...10_000, into: &maxMetricsRendersPerSecond)
    }
  }
}
