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
    /// the connection; it is advertised in SETTINGS and much larger than ``maxHeaderListBytes``. It is also what
    /// one HPACK bomb (a large dynamic-table entry referenced once per byte) can make the server decode, hence
    /// 256 KiB rather than more, with ``Protections/maxOversizedHeaderBlocks`` bounding how often per connection.
    public var headerDecoderLimit: Int

    public init(
      maxConcurrentStreams: Int = 128, targetWindowSize: Int = 1 << 20, maxHeaderListBytes: Int = 16 << 10,
      headerDecoderLimit: Int = 256 << 10
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

  /// HTTP/2 abuse guards: swift-nio-http2's own, set explicitly here (the defaults are NIOHTTP2 1.46's, so that
  /// an upgrade cannot silently change them), and Palisade's for what NIOHTTP2 does not cover (header-block
  /// abuse, clients that do not read). Exceeding any of them sends GOAWAY(ENHANCE_YOUR_CALM), closes the
  /// connection and counts `palisade_transport_refusals_total{reason}` (reasons in ``TransportObserver``).
  public struct Protections: Sendable, Equatable {
    /// Rapid reset (CVE-2023-44487): RST_STREAM frames a client may send per ``rateWindow``
    /// (NIOHTTP2 `streamResetFrameRateLimit`, default 200 per 30 s). Reason `rapid_reset`.
    public var maxResetFrames: Int
    /// Stream errors the client causes per ``rateWindow``, e.g. REFUSED_STREAM for streams beyond
    /// MAX_CONCURRENT_STREAMS (NIOHTTP2 `streamErrorRateLimit`, default 200 per 30 s). Reason `stream_errors`.
    public var maxStreamErrors: Int
    /// PING, SETTINGS, PRIORITY, ALTSVC and ORIGIN frames per ``rateWindow`` (NIOHTTP2 `controlFrameRateLimit`,
    /// default 200 per 30 s): PING and SETTINGS floods. Reason `control_frame_flood`.
    public var maxControlFrames: Int
    /// The window of the three rates above (default 30 s).
    public var rateWindow: Duration
    /// CONTINUATION frames in a row without END_HEADERS (NIOHTTP2 `maximumSequentialContinuationFrames`,
    /// default 5): the CONTINUATION flood. Reason `continuation_flood`.
    public var maxSequentialContinuationFrames: Int
    /// Control frames (PING and SETTINGS acks) queued for a peer that does not read them
    /// (NIOHTTP2 `maximumBufferedControlFrames`, default 10,000). Reason `outbound_control_frames`.
    public var maxBufferedControlFrames: Int
    /// Empty DATA frames in a row (NIOHTTP2 `maximumSequentialEmptyDataFrames`, default 1). Reason
    /// `empty_data_flood`.
    public var maxSequentialEmptyDataFrames: Int
    /// Streams remembered after they were reset, so that frames the client had in flight for them are ignored
    /// rather than treated as errors (NIOHTTP2 `maximumRecentlyResetStreams`, default 32).
    public var maxRecentlyResetStreams: Int
    /// Suspicious events (stream errors) over a connection's life (NIOHTTP2 `maximumConnectionGlitches`,
    /// default 200). Reason `glitches`.
    public var maxConnectionGlitches: Int
    /// Request header blocks over ``Streams/maxHeaderListBytes`` refused on one connection before the connection
    /// itself is closed (Palisade, default 8). Each such block costs decoding up to
    /// ``Streams/headerDecoderLimit`` bytes from a few hundred bytes on the wire (an HPACK bomb), so a client
    /// that keeps sending them is cut off. Reason `header_list_abuse`.
    public var maxOversizedHeaderBlocks: Int
    /// Response bytes written on a connection and not yet taken by the peer (held by HTTP/2 flow control or
    /// the socket) (Palisade, default 64 MiB; a single response larger than this is let through when it is all
    /// that is pending). Reason `outbound_buffer`.
    public var maxOutboundBytesPerConnection: Int
    /// Response bytes pending with no progress for this long: the peer does not read (a zero flow-control
    /// window, or a full socket). The connection is closed (Palisade, default 30 s). Reason `write_stalled`.
    public var writeStallTimeout: Duration
    /// Calls that do no authorized work, per principal (SPIFFE ID) across its connections, per second
    /// (Palisade, default 200): token-exempt RPCs (``TransportConfiguration/tokenExemptMethods``, served without a
    /// token and so without the policy's rate limits) and calls answered UNAUTHENTICATED, PERMISSION_DENIED or
    /// UNIMPLEMENTED. Each costs about what serving a small call does. A principal over its budget has the
    /// connection that asked closed; its calls with a valid token are not counted. Reason `unauthorized_call_flood`.
    public var unauthorizedCallsPerSecond: Int
    /// The burst of the budget above (default 1,000).
    public var unauthorizedCallBurst: Int

    public init(
      maxResetFrames: Int = 200, maxStreamErrors: Int = 200, maxControlFrames: Int = 200,
      rateWindow: Duration = .seconds(30), maxSequentialContinuationFrames: Int = 5,
      maxBufferedControlFrames: Int = 10_000, maxSequentialEmptyDataFrames: Int = 1, maxRecentlyResetStreams: Int = 32,
      maxConnectionGlitches: Int = 200, maxOversizedHeaderBlocks: Int = 8,
      maxOutboundBytesPerConnection: Int = 64 << 20, writeStallTimeout: Duration = .seconds(30),
      unauthorizedCallsPerSecond: Int = 200, unauthorizedCallBurst: Int = 1000
    ) {
      self.maxResetFrames = max(1, maxResetFrames)
      self.maxStreamErrors = max(1, maxStreamErrors)
      self.maxControlFrames = max(1, maxControlFrames)
      self.rateWindow = max(.seconds(1), rateWindow)
      self.maxSequentialContinuationFrames = max(1, maxSequentialContinuationFrames)
      self.maxBufferedControlFrames = max(1, maxBufferedControlFrames)
      self.maxSequentialEmptyDataFrames = max(0, maxSequentialEmptyDataFrames)
      self.maxRecentlyResetStreams = max(0, maxRecentlyResetStreams)
      self.maxConnectionGlitches = max(0, maxConnectionGlitches)
      self.maxOversizedHeaderBlocks = max(0, maxOversizedHeaderBlocks)
      self.maxOutboundBytesPerConnection = max(64 << 10, maxOutboundBytesPerConnection)
      self.writeStallTimeout = max(.seconds(1), writeStallTimeout)
      self.unauthorizedCallsPerSecond = max(1, unauthorizedCallsPerSecond)
      self.unauthorizedCallBurst = max(1, unauthorizedCallBurst)
    }
    public static let defaults = Protections()
  }

  public var host: String
  public var port: Int
  public var connections: Connections
  public var streams: Streams
  public var messages: Messages
  public var protections: Protections
  /// Methods (the last `:path` component, as `auth.exempt_rpcs` names them) served without a token: each call
  /// counts against ``Protections/unauthorizedCallsPerSecond``.
  public var tokenExemptMethods: Set<String>

  public init(
    host: String = "127.0.0.1", port: Int = 8443, connections: Connections = .defaults, streams: Streams = .defaults,
    messages: Messages = .defaults, protections: Protections = .defaults,
    tokenExemptMethods: Set<String> = ["ServerLive", "Check", "Watch"]
  ) {
    self.host = host
    self.port = port
    self.connections = connections
    self.streams = streams
    self.messages = messages
    self.protections = protections
    self.tokenExemptMethods = tokenExemptMethods
  }
}

/// What the transport reports to the server's metrics (the transport knows nothing of Prometheus).
public protocol TransportObserver: Sendable {
  /// A connection or stream was refused before reaching the service; `reason` is a short metric label:
  /// `max_connections`, `max_connections_per_address`, `handshake_timeout`, `handshake_failed`,
  /// `header_list_too_large`, `message_too_large`, `inflight_connection_budget`, `inflight_principal_budget`,
  /// `message_timeout`, `bad_request`, `unauthorized_call_budget` (a token-exempt call over its principal's budget), `connection_closing` (a stream taken up before its connection was closed for abuse, whose headers were read after); connections closed for abuse (GOAWAY ENHANCE_YOUR_CALM, see
  /// ``TransportConfiguration/Protections``): `rapid_reset`, `stream_errors`, `glitches`, `control_frame_flood`,
  /// `continuation_flood`, `outbound_control_frames`, `empty_data_flood`, `header_list_abuse`, `outbound_buffer`,
  /// `write_stalled`, `unauthorized_call_flood`, `max_concurrent_streams` (a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS: NIOHTTP2 sends
  /// GOAWAY(PROTOCOL_ERROR), then ENHANCE_YOUR_CALM follows); and `header_block_too_large`, `protocol_error` (GOAWAY with that code), `keepalive_timeout`
  /// (a server PING not answered: also the end of a slowloris that stops sending whole frames), `idle_timeout`.
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
