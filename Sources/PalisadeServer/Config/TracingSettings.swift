public import PalisadeYAML

/// `tracing:` in the config file: OpenTelemetry spans for inference calls, exported over OTLP/gRPC
/// (docs/operations.md, *Tracing*). Off by default; off, nothing is started and the call path makes no tracer call.
///
/// The section reads itself from its YAML node, so a new setting touches this type, the annotated example and a
/// test.
public struct TracingSettings: Sendable, Equatable {
  /// Spans are made and exported only when true.
  public var enabled = false
  /// The OTLP/gRPC collector, `http://host:port` on loopback: a collector beside the server (a sidecar in the pod)
  /// that forwards the spans on. The server's own traffic never leaves the host except through the egress sidecar,
  /// so a remote endpoint is refused.
  public var endpoint = "http://127.0.0.1:4317"
  /// The `service.name` resource attribute.
  public var serviceName = "palisade"
  /// Share of calls traced (0...1). A caller's `traceparent` is continued (same trace), but its sampled flag is
  /// followed only within this share: the span starts before the caller is authenticated, so a caller must not be
  /// able to make the server record every call. A caller's unsampled flag is always followed.
  public var sampleRatio = 1.0
  /// Finished spans are batched and sent this often (the OTel batch span processor's schedule delay).
  public var exportIntervalMs = 1000
  /// Spans kept waiting for export at most; more are dropped (never a call delayed).
  public var maxQueuedSpans = 2048
  /// Spans per export request at most.
  public var maxExportBatch = 512
  /// One export request's timeout.
  public var exportTimeoutSeconds = 10

  public init() {}
  public static let defaults = TracingSettings()

  /// Reads the section; nil (no `tracing` key) is the defaults.
  public init(yaml map: YAMLMap?) throws(YAMLError) {
    self.init()
    guard let m = map else { return }
    enabled = try m.bool("enabled") ?? enabled
    if let e = try m.string("endpoint") {
      guard Self.isLoopbackHTTP(e) else {
        throw m.error(
          "endpoint",
          "must be http://HOST:PORT with a loopback HOST (127.0.0.1, [::1] or localhost), got '\(e)': spans go to a "
            + "collector beside the server, which forwards them")
      }
      endpoint = e
    }
    if let s = try m.string("service_name") {
      guard !s.isEmpty, s.count <= 128 else { throw m.error("service_name", "must be 1 to 128 characters") }
      serviceName = s
    }
    sampleRatio = try m.double("sample_ratio", in: 0...1) ?? sampleRatio
    exportIntervalMs = try m.int("export_interval_ms", in: 10...60_000) ?? exportIntervalMs
    maxQueuedSpans = try m.int("max_queued_spans", in: 1...1_000_000) ?? maxQueuedSpans
    maxExportBatch = try m.int("max_export_batch", in: 1...100_000) ?? maxExportBatch
    exportTimeoutSeconds = try m.int("export_timeout_seconds", in: 1...300) ?? exportTimeoutSeconds
    if maxExportBatch > maxQueuedSpans {
      throw m.error("max_export_batch", "must not exceed max_queued_spans (\(maxQueuedSpans))")
    }
    try m.finish()
  }

  /// `http://` + a loopback host + `:port` (1...65535), nothing after it.
  static func isLoopbackHTTP(_ endpoint: String) -> Bool {
    guard endpoint.hasPrefix("http://") else { return false }
    let rest = endpoint.dropFirst("http://".count)
    let host: Substring
    let port: Substring
    if rest.hasPrefix("[") {
      guard let close = rest.firstIndex(of: "]") else { return false }
      host = rest[rest.index(after: rest.startIndex)..<close]
      let after = rest[rest.index(after: close)...]
      guard after.hasPrefix(":") else { return false }
      port = after.dropFirst()
    } else {
      guard let colon = rest.lastIndex(of: ":") else { return false }
      host = rest[..<colon]
      port = rest[rest.index(after: colon)...]
    }
    guard let p = Int(port), (1...65_535).contains(p), port.allSatisfy(\.isASCII) else { return false }
    if host == "localhost" || host == "::1" { return true }
    let octets = host.split(separator: ".", omittingEmptySubsequences: false)
    guard octets.count == 4, octets.first == "127" else { return false }
    return octets.allSatisfy { o in
      !o.isEmpty && o.count <= 3 && o.allSatisfy(\.isASCII) && (Int(o).map { (0...255).contains($0) } ?? false)
    }
  }
}

extension TracingSettings: DefaultedConfigSection {
  public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
    try self.init(yaml: map)
  }
}
