public import PalisadeYAML

extension ServerConfig {
  /// `server.limits`: what one request, stream and connection may hold.
  public struct Limits: DefaultedConfigSection {
    /// Largest request message accepted; larger ones get RESOURCE_EXHAUSTED.
    public var maxMessageBytes: Int
    /// HTTP/2 concurrent streams per connection.
    public var maxConcurrentStreams: Int
    /// Largest request header block (RFC 7541 sizes); larger: RESOURCE_EXHAUSTED on that stream only.
    public var maxHeaderListBytes: Int = 16 << 10
    /// Bytes of incomplete request messages per connection, and per principal across its connections.
    public var maxInflightBytesPerConnection: Int = 64 << 20
    public var maxInflightBytesPerPrincipal: Int = 128 << 20
    /// A request message must arrive whole within this many seconds of its first byte.
    public var messageTimeoutSeconds: Int = 30
    /// Health `Watch` streams one connection may hold.
    public var maxWatchesPerConnection: Int = 4
    public init(maxMessageBytes: Int, maxConcurrentStreams: Int) {
      self.maxMessageBytes = maxMessageBytes
      self.maxConcurrentStreams = maxConcurrentStreams
    }
    public static let defaults = Limits(maxMessageBytes: 64 << 20, maxConcurrentStreams: 128)

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self = .defaults
      try map.int("max_message_bytes", in: 1024...(1 << 30), into: &maxMessageBytes)
      try map.int("max_concurrent_streams", in: 1...10_000, into: &maxConcurrentStreams)
      try map.int("max_header_list_bytes", in: 1024...(256 << 10), into: &maxHeaderListBytes)
      try map.int("max_inflight_bytes_per_connection", in: 1024...(1 << 34), into: &maxInflightBytesPerConnection)
      try map.int("max_inflight_bytes_per_principal", in: 1024...(1 << 36), into: &maxInflightBytesPerPrincipal)
      try map.int("message_timeout_seconds", in: 1...3600, into: &messageTimeoutSeconds)
      try map.int("max_watches_per_connection", in: 1...1000, into: &maxWatchesPerConnection)
    }
  }
}
