public import PalisadeYAML

extension ServerConfig {
  /// `server.http2`: HTTP/2 abuse guards, swift-nio-http2's flood limits and Palisade's own; exceeding one sends
  /// GOAWAY(ENHANCE_YOUR_CALM) and closes the connection. Meanings in `TransportConfiguration.Protections`.
  public struct HTTP2: DefaultedConfigSection {
    public var maxResetFrames = 200
    public var maxStreamErrors = 200
    public var maxControlFrames = 200
    public var rateWindowSeconds = 30
    public var maxSequentialContinuationFrames = 5
    public var maxBufferedControlFrames = 10_000
    public var maxSequentialEmptyDataFrames = 1
    public var maxRecentlyResetStreams = 32
    public var maxConnectionGlitches = 200
    public var maxOversizedHeaderBlocks = 8
    public var maxOutboundBytesPerConnection = 64 << 20
    public var writeStallTimeoutSeconds = 30
    public var unauthorizedCallsPerSecond = 200
    public var unauthorizedCallBurst = 1000
    public init() {}
    public static let defaults = HTTP2()

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      try map.int("max_reset_frames", in: 1...100_000, into: &maxResetFrames)
      try map.int("max_stream_errors", in: 1...100_000, into: &maxStreamErrors)
      try map.int("max_control_frames", in: 1...100_000, into: &maxControlFrames)
      try map.int("rate_window_seconds", in: 1...3600, into: &rateWindowSeconds)
      try map.int("max_sequential_continuation_frames", in: 1...1000, into: &maxSequentialContinuationFrames)
      try map.int("max_buffered_control_frames", in: 1...1_000_000, into: &maxBufferedControlFrames)
      try map.int("max_sequential_empty_data_frames", in: 0...1000, into: &maxSequentialEmptyDataFrames)
      try map.int("max_recently_reset_streams", in: 0...10_000, into: &maxRecentlyResetStreams)
      try map.int("max_connection_glitches", in: 0...1_000_000, into: &maxConnectionGlitches)
      try map.int("max_oversized_header_blocks", in: 0...10_000, into: &maxOversizedHeaderBlocks)
      try map.int("max_outbound_bytes_per_connection", in: (64 << 10)...(1 << 34), into: &maxOutboundBytesPerConnection)
      try map.int("write_stall_timeout_seconds", in: 1...3600, into: &writeStallTimeoutSeconds)
      try map.int("unauthorized_calls_per_second", in: 1...1_000_000, into: &unauthorizedCallsPerSecond)
      try map.int("unauthorized_call_burst", in: 1...10_000_000, into: &unauthorizedCallBurst)
    }
  }
}
