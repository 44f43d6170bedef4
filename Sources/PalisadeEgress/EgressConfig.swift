import Foundation
public import PalisadeYAML

/// The sidecar's configuration: one strict YAML file (see `deploy/egress.example.yaml`). Every setting has a safe
/// default; the one thing with no default is the allowlist, and an empty allowlist lets nothing out.
public struct EgressConfig: Sendable {
  /// Where the proxy listens.
  public struct Listen: Sendable {
    public var host = "127.0.0.1"
    public var port = 3128
    /// An additional Unix stream socket, when set.
    public var unixSocket: String?
    public init() {}
  }

  /// The admin endpoint (`/metrics`, `/healthz`, `/readyz`).
  public struct Admin: Sendable {
    public var enabled = true
    public var host = "127.0.0.1"
    public var port = 9465
    /// Connections open at once; more are answered 503 and closed.
    public var maxConnections = 16
    /// Connections open at once from one source address.
    public var maxConnectionsPerAddress = 8
    /// Fresh `/metrics` renders per second; requests beyond it get the last render again.
    public var maxMetricsRendersPerSecond = 20
    public init() {}
  }

  /// Client-side TLS for connections the sidecar originates.
  public struct TLS: Sendable {
    /// PEM bundle of trusted roots; nil means the system trust store.
    public var caFile: String?
    /// Client certificate chain (PEM) presented to destinations that ask for one.
    public var clientCertificate: String?
    /// Its private key (PEM).
    public var clientKey: String?
    public init() {}
  }

  /// A byte budget: at most `bytes` of requests (head and body) per `windowSeconds` fixed window.
  public struct ByteBudget: Sendable {
    public var bytes: Int
    public var windowSeconds: Int
    public init(bytes: Int, windowSeconds: Int) {
      self.bytes = bytes
      self.windowSeconds = windowSeconds
    }
  }

  /// One allowlisted destination.
  public struct Destination: Sendable {
    /// A name for logs, metrics and events (bounded label).
    public var name: String
    /// `https` (default; TLS originated by the sidecar) or `http`.
    public var scheme = "https"
    /// Host name or IP literal, lower case, without a trailing dot.
    public var host: String
    public var port: Int
    /// Upper-case HTTP methods allowed.
    public var methods: [String] = ["POST"]
    /// Allowed path prefixes (`/` allows every path).
    public var pathPrefixes: [String] = ["/"]
    /// Allows addresses that are private, loopback, link-local, CGNAT, ULA. Metadata addresses stay refused.
    public var allowPrivate = false
    /// Allows CONNECT tunnels to this host and port. A tunnel cannot be inspected: every one is logged and counted.
    public var allowConnect = false
    public var byteBudget: ByteBudget?
    public init(name: String, host: String, port: Int) {
      self.name = name
      self.host = host
      self.port = port
    }
  }

  /// High-entropy run detection on text.
  public struct HighEntropy: Sendable {
    public var enabled = true
    /// Runs of base64/base64url/hex characters at least this long are measured.
    public var minLength = 512
    /// A run is refused when its Shannon entropy is at least this many bits per character.
    public var minBitsPerChar = 5.0
    public init() {}
  }

  /// Model weight fingerprinting.
  public struct Weights: Sendable {
    public var enabled = true
    /// W: bytes per hashed window.
    public var windowBytes = 64
    /// S: the weight file is indexed at every S-th offset; any leaked run of W+S-1 bytes contains an indexed window.
    public var strideBytes = 32
    /// Windows with fewer distinct byte values than this (zero padding, constant tensors) are not indexed: they
    /// would match innocent traffic.
    public var minDistinctBytes = 16
    /// Refuse to start when the weight files together exceed this (the index costs about 8 bytes per stride).
    public var maxIndexedBytes = 1 << 30
    public init() {}
  }

  /// What the inspector looks for.
  public struct Inspection: Sendable {
    public var canaryTokens: [String] = []
    /// Directories holding bundles (`<dir>/<name>/<version>/manifest.json`, or the bundle itself).
    public var bundleDirectories: [String] = []
    /// SHA-256 (hex) of secrets that must never leave, matched against every token of the request.
    public var secretSHA256: [String] = []
    public var blockPrivateKeys = true
    public var blockJWTs = true
    public var decodeBase64 = true
    public var decodeHex = true
    public var highEntropy = HighEntropy()
    public var weights = Weights()
    public init() {}
  }

  public var listen = Listen()
  public var admin = Admin()
  public var tls = TLS()
  public var destinations: [Destination] = []
  /// Largest request body accepted (buffered for inspection); larger is 413.
  public var maxBodyBytes = 8 << 20
  /// Largest request head (URI plus headers).
  public var maxHeaderBytes = 64 << 10
  /// Largest upstream response relayed.
  public var maxResponseBytes = 64 << 20
  public var connectTimeoutSeconds = 10
  public var upstreamTimeoutSeconds = 60
  /// A request head must arrive whole within this long of the connection opening (or of the previous response):
  /// a client sending half a request line is closed. Applies to the proxy and the admin endpoint.
  public var headerTimeoutSeconds = 10
  /// The whole request (head and body) must arrive within this long, however steadily it trickles in.
  public var requestTimeoutSeconds = 60
  /// No byte from the client while its request is being read (or no progress writing our response) for this
  /// long closes the connection.
  public var idleTimeoutSeconds = 30
  /// Proxy connections open at once (TCP and Unix socket together); more are answered 503 and closed.
  public var maxConnections = 256
  /// Proxy connections open at once from one source address (all Unix socket clients count as one).
  public var maxConnectionsPerAddress = 64
  /// Request body bytes buffered across all connections at once; a body that would pass it is answered 503
  /// (`x-palisade-egress-error: overloaded`, retried by the server's client). Bounds memory under many slow
  /// uploads. Nil: 64 MiB, or `maxBodyBytes` when that is larger.
  public var maxInflightBodyBytes: Int?
  /// The in-flight body budget in effect.
  public var inflightBodyBudget: Int { maxInflightBodyBytes ?? max(64 << 20, maxBodyBytes) }
  public var inspection = Inspection()
  /// A Unix datagram socket where block events are sent as JSON (the server's audit log listens there).
  public var reportSocket: String?
  /// A URL (which must match a destination) where block events are POSTed through the sidecar itself.
  public var alertWebhook: String?
  public var logLevel = "info"

  public init() {}

  /// Reads and validates `path`; relative paths in it are resolved against its directory.
  public static func load(path: String) throws -> EgressConfig {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
      throw YAMLError(file: path, path: "", line: nil, message: "cannot read the file (\(error.localizedDescription))")
    }
    let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
    return try parse(text, file: path, baseDirectory: base)
  }

  /// Parses configuration text.
  public static func parse(_ text: String, file: String? = nil, baseDirectory: String = ".") throws(YAMLError)
    -> EgressConfig
  {
    let root = try YAMLMap.parse(text, file: file)
    var c = EgressConfig()
    func resolve(_ p: String?) -> String? {
      guard let p else { return nil }
      return p.hasPrefix("/") ? p : URL(fileURLWithPath: baseDirectory).appendingPathComponent(p).path
    }
    if let m = try root.map("listen") {
      c.listen.host = try m.string("host") ?? c.listen.host
      c.listen.port = try m.int("port", in: 0...65535) ?? c.listen.port
      c.listen.unixSocket = resolve(try m.string("unix_socket"))
      try m.finish()
    }
    if let m = try root.map("admin") {
      c.admin.enabled = try m.bool("enabled") ?? c.admin.enabled
      c.admin.host = try m.string("host") ?? c.admin.host
      c.admin.port = try m.int("port", in: 0...65535) ?? c.admin.port
      c.admin.maxConnections = try m.int("max_connections", in: 1...65_536) ?? c.admin.maxConnections
      // An unset per-address cap follows a lowered total.
      c.admin.maxConnectionsPerAddress =
        try m.int("max_connections_per_address", in: 1...65_536)
        ?? min(c.admin.maxConnectionsPerAddress, c.admin.maxConnections)
      if c.admin.maxConnectionsPerAddress > c.admin.maxConnections {
        throw m.error("max_connections_per_address", "must not exceed max_connections (\(c.admin.maxConnections))")
      }
      c.admin.maxMetricsRendersPerSecond =
        try m.int("max_metrics_renders_per_second", in: 1...10_000) ?? c.admin.maxMetricsRendersPerSecond
      try m.finish()
    }
    if let m = try root.map("tls") {
      c.tls.caFile = resolve(try m.string("ca_file"))
      c.tls.clientCertificate = resolve(try m.string("client_certificate"))
      c.tls.clientKey = resolve(try m.string("client_key"))
      if (c.tls.clientCertificate == nil) != (c.tls.clientKey == nil) {
        throw m.error("client_certificate", "client_certificate and client_key go together")
      }
      try m.finish()
    }
    if let m = try root.map("limits") {
      c.maxBodyBytes = try m.int("max_body_bytes", in: 0...(1 << 30)) ?? c.maxBodyBytes
      c.maxHeaderBytes = try m.int("max_header_bytes", in: 1024...(1 << 20)) ?? c.maxHeaderBytes
      c.maxResponseBytes = try m.int("max_response_bytes", in: 0...(1 << 32)) ?? c.maxResponseBytes
      c.connectTimeoutSeconds = try m.int("connect_timeout_seconds", in: 1...300) ?? c.connectTimeoutSeconds
      c.upstreamTimeoutSeconds = try m.int("upstream_timeout_seconds", in: 1...3600) ?? c.upstreamTimeoutSeconds
      c.headerTimeoutSeconds = try m.int("header_timeout_seconds", in: 1...300) ?? c.headerTimeoutSeconds
      c.requestTimeoutSeconds = try m.int("request_timeout_seconds", in: 1...3600) ?? c.requestTimeoutSeconds
      c.idleTimeoutSeconds = try m.int("idle_timeout_seconds", in: 1...3600) ?? c.idleTimeoutSeconds
      c.maxConnections = try m.int("max_connections", in: 1...65_536) ?? c.maxConnections
      c.maxConnectionsPerAddress =
        try m.int("max_connections_per_address", in: 1...65_536) ?? min(c.maxConnectionsPerAddress, c.maxConnections)
      if c.maxConnectionsPerAddress > c.maxConnections {
        throw m.error("max_connections_per_address", "must not exceed max_connections (\(c.maxConnections))")
      }
      c.maxInflightBodyBytes = try m.int("max_inflight_body_bytes", in: 1...(1 << 34))
      if let budget = c.maxInflightBodyBytes, budget < c.maxBodyBytes {
        throw m.error(
          "max_inflight_body_bytes", "must be at least max_body_bytes (\(c.maxBodyBytes)): no body could be accepted")
      }
      try m.finish()
    }
    var names = Set<String>()
    for m in try root.maps("destinations") ?? [] {
      guard let rawHost = try m.string("host") else { throw m.error(nil, "host is required") }
      let host = Self.normalizeHost(rawHost)
      guard !host.isEmpty, !host.contains("/"), !host.contains("@"), !host.contains("*") else {
        throw m.error("host", "must be a host name or IP address (no wildcards, paths or user info)")
      }
      let scheme = try m.choice("scheme", ["https", "http"]) ?? "https"
      let port = try m.int("port", in: 1...65535) ?? (scheme == "https" ? 443 : 80)
      let name = try m.string("name") ?? "\(host):\(port)"
      guard names.insert(name).inserted else { throw m.error("name", "another destination has this name") }
      var d = Destination(name: name, host: host, port: port)
      d.scheme = scheme
      if let methods = try m.strings("methods") {
        let allowed = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        for method in methods where !allowed.contains(method.uppercased()) {
          throw m.error("methods", "unknown method '\(method)' (one of \(allowed.joined(separator: ", ")))")
        }
        guard !methods.isEmpty else { throw m.error("methods", "must not be empty") }
        d.methods = methods.map { $0.uppercased() }
      }
      if let prefixes = try m.strings("path_prefixes") {
        guard !prefixes.isEmpty else { throw m.error("path_prefixes", "must not be empty") }
        for p in prefixes where !p.hasPrefix("/") { throw m.error("path_prefixes", "'\(p)' must start with /") }
        d.pathPrefixes = prefixes
      }
      d.allowPrivate = try m.bool("allow_private") ?? false
      d.allowConnect = try m.bool("allow_connect") ?? false
      if let b = try m.map("byte_budget") {
        guard let bytes = try b.int("bytes", in: 1...Int.max) else { throw b.error(nil, "bytes is required") }
        let window = try b.int("window_seconds", in: 1...(30 * 86_400)) ?? 3600
        d.byteBudget = ByteBudget(bytes: bytes, windowSeconds: window)
        try b.finish()
        // A tunnel's bytes are relayed uninspected and uncounted: a budget beside it would promise a bound the
        // tunnel walks around.
        if d.allowConnect {
          throw m.error("byte_budget", "cannot be combined with allow_connect (CONNECT tunnels are not counted)")
        }
      }
      try m.finish()
      c.destinations.append(d)
    }
    if let m = try root.map("inspection") {
      c.inspection.canaryTokens = try m.strings("canary_tokens") ?? []
      if c.inspection.canaryTokens.contains(where: { $0.utf8.count < 8 }) {
        throw m.error("canary_tokens", "tokens must be at least 8 bytes (short ones match innocent traffic)")
      }
      c.inspection.bundleDirectories = (try m.strings("bundle_directories") ?? []).compactMap { resolve($0) }
      c.inspection.secretSHA256 = (try m.strings("secret_sha256") ?? []).map { $0.lowercased() }
      for s in c.inspection.secretSHA256
      where s.utf8.count != 64 || !s.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) {
        throw m.error("secret_sha256", "each entry must be 64 hex digits (a SHA-256)")
      }
      c.inspection.blockPrivateKeys = try m.bool("block_private_keys") ?? true
      c.inspection.blockJWTs = try m.bool("block_jwts") ?? true
      c.inspection.decodeBase64 = try m.bool("decode_base64") ?? true
      c.inspection.decodeHex = try m.bool("decode_hex") ?? true
      if let h = try m.map("high_entropy") {
        c.inspection.highEntropy.enabled = try h.bool("enabled") ?? true
        c.inspection.highEntropy.minLength = try h.int("min_length", in: 32...(1 << 30)) ?? 512
        c.inspection.highEntropy.minBitsPerChar = try h.double("min_bits_per_char", in: 1...8) ?? 5.0
        try h.finish()
      }
      if let w = try m.map("weights") {
        c.inspection.weights.enabled = try w.bool("enabled") ?? true
        c.inspection.weights.windowBytes = try w.int("window_bytes", in: 16...4096) ?? 64
        c.inspection.weights.strideBytes = try w.int("stride_bytes", in: 1...4096) ?? 32
        c.inspection.weights.minDistinctBytes = try w.int("min_distinct_bytes", in: 1...256) ?? 16
        c.inspection.weights.maxIndexedBytes = try w.int("max_indexed_bytes", in: 0...Int.max) ?? (1 << 30)
        try w.finish()
      }
      try m.finish()
    }
    c.reportSocket = resolve(try root.string("report_socket"))
    if let hook = try root.string("alert_webhook") {
      guard let target = ProxyTarget(absoluteURI: hook), c.destinations.contains(where: { $0.matches(target) }) else {
        throw root.error(
          "alert_webhook", "must be an absolute http(s) URL that an entry of destinations allows for POST")
      }
      c.alertWebhook = hook
    }
    if let m = try root.map("logging") {
      c.logLevel =
        try m.choice("level", ["trace", "debug", "info", "notice", "warning", "error", "critical"]) ?? "info"
      try m.finish()
    }
    try root.finish()
    return c
  }

  /// Lower case without a trailing dot; IPv6 brackets removed.
  static func normalizeHost(_ host: String) -> String {
    var h = host.lowercased()
    if h.hasPrefix("["), h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
    while h.hasSuffix(".") { h.removeLast() }
    return h
  }
}

extension EgressConfig.Destination {
  /// Whether scheme, host, port, method and path all match.
  func matches(_ t: ProxyTarget, method: String = "POST") -> Bool {
    scheme == t.scheme && host == t.host && port == t.port && methods.contains(method)
      && pathPrefixes.contains(where: { t.path.hasPrefix($0) })
  }
}
