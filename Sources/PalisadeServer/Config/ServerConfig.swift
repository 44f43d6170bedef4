public import Foundation
public import PalisadeYAML

/// Everything `palisade serve` needs, read from one YAML file. Every setting has a safe default; see
/// `deploy/palisade.example.yaml` for the annotated reference.
public struct ServerConfig: Sendable, Equatable {
  /// The gRPC listener.
  public var server: Server
  /// The loopback admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
  public var admin: Admin
  /// Which models must be loaded before the server reports ready.
  public var models: Models
  /// Log output.
  public var logging: Logging

  public init(server: Server, admin: Admin = .defaults, models: Models = .defaults, logging: Logging = .defaults) {
    self.server = server
    self.admin = admin
    self.models = models
    self.logging = logging
  }

  public struct Server: Sendable, Equatable {
    /// Host and port of the gRPC listener.
    public var listen: HostPort
    public var tls: TLS
    public var limits: Limits
    public var connection: Connection
    /// How long SIGTERM waits for in-flight calls before cancelling them.
    public var shutdownGraceSeconds: Int

    public init(
      listen: HostPort = HostPort(host: "127.0.0.1", port: 8443), tls: TLS, limits: Limits = .defaults,
      connection: Connection = .defaults, shutdownGraceSeconds: Int = 20
    ) {
      self.listen = listen
      self.tls = tls
      self.limits = limits
      self.connection = connection
      self.shutdownGraceSeconds = shutdownGraceSeconds
    }
  }

  /// TLS material. TLS 1.3 and a verified client certificate are always required; there is no setting to relax it.
  public struct TLS: Sendable, Equatable {
    /// PEM: the server certificate followed by its intermediates.
    public var certificateChain: String
    /// PEM private key; refused when group or others can read it.
    public var privateKey: String
    /// PEM bundle of the CAs whose client certificates are accepted.
    public var clientCABundle: String

    public init(certificateChain: String, privateKey: String, clientCABundle: String) {
      self.certificateChain = certificateChain
      self.privateKey = privateKey
      self.clientCABundle = clientCABundle
    }
  }

  public struct Limits: Sendable, Equatable {
    /// Largest request message accepted; larger ones get RESOURCE_EXHAUSTED.
    public var maxMessageBytes: Int
    /// HTTP/2 concurrent streams per connection.
    public var maxConcurrentStreams: Int
    public init(maxMessageBytes: Int, maxConcurrentStreams: Int) {
      self.maxMessageBytes = maxMessageBytes
      self.maxConcurrentStreams = maxConcurrentStreams
    }
    public static let defaults = Limits(maxMessageBytes: 64 << 20, maxConcurrentStreams: 128)
  }

  public struct Connection: Sendable, Equatable {
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
  }

  public struct Admin: Sendable, Equatable {
    public var enabled: Bool
    public var listen: HostPort
    public init(enabled: Bool, listen: HostPort) {
      self.enabled = enabled
      self.listen = listen
    }
    public static let defaults = Admin(enabled: true, listen: HostPort(host: "127.0.0.1", port: 9464))
  }

  public struct Models: Sendable, Equatable {
    /// Names that must have a ready version before `/readyz` and `ServerReady` report ready.
    public var required: [String]
    public init(required: [String]) { self.required = required }
    public static let defaults = Models(required: [])
  }

  public struct Logging: Sendable, Equatable {
    public enum Format: String, Sendable, Equatable { case json, text }
    public var level: String
    public var format: Format
    public init(level: String, format: Format) {
      self.level = level
      self.format = format
    }
    public static let defaults = Logging(level: "info", format: .json)
  }

  public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
      self.host = host
      self.port = port
    }
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
  }
}

extension ServerConfig {
  /// Reads and validates the YAML file at `path`. Relative file paths inside it are resolved against the
  /// directory that holds it. Errors name the file, line and key.
  public static func load(path: String) throws(YAMLError) -> ServerConfig {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
      throw YAMLError(file: path, path: "", line: nil, message: "cannot be read")
    }
    let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
    return try parse(text, file: path, baseDirectory: base)
  }

  /// Parses configuration text; `baseDirectory` anchors relative paths.
  public static func parse(_ text: String, file: String? = nil, baseDirectory: String) throws(YAMLError)
    -> ServerConfig
  {
    let root = try YAMLMap.parse(text, file: file)
    func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : "\(baseDirectory)/\(p)" }

    guard let server = try root.map("server") else { throw root.error("server", "is required") }
    let listen = try server.string("listen").map { s throws(YAMLError) in try hostPort(s, key: "listen", in: server) }
    guard let tlsMap = try server.map("tls") else { throw server.error("tls", "is required") }
    func requiredFile(_ key: String) throws(YAMLError) -> String {
      guard let p = try tlsMap.string(key), !p.isEmpty else { throw tlsMap.error(key, "is required") }
      return resolve(p)
    }
    let tls = TLS(
      certificateChain: try requiredFile("certificate_chain"), privateKey: try requiredFile("private_key"),
      clientCABundle: try requiredFile("client_ca_bundle"))
    try tlsMap.finish()

    var limits = Limits.defaults
    if let m = try server.map("limits") {
      limits.maxMessageBytes = try m.int("max_message_bytes", in: 1024...(1 << 30)) ?? limits.maxMessageBytes
      limits.maxConcurrentStreams = try m.int("max_concurrent_streams", in: 1...10_000) ?? limits.maxConcurrentStreams
      try m.finish()
    }
    var connection = Connection.defaults
    if let m = try server.map("connection") {
      connection.keepaliveSeconds = try m.int("keepalive_seconds", in: 1...86_400) ?? connection.keepaliveSeconds
      connection.keepaliveTimeoutSeconds =
        try m.int("keepalive_timeout_seconds", in: 1...3600) ?? connection.keepaliveTimeoutSeconds
      connection.maxIdleSeconds = try m.int("max_idle_seconds", in: 1...604_800) ?? connection.maxIdleSeconds
      connection.maxAgeSeconds = try m.int("max_age_seconds", in: 1...604_800) ?? connection.maxAgeSeconds
      connection.maxAgeGraceSeconds =
        try m.int("max_age_grace_seconds", in: 0...3600) ?? connection.maxAgeGraceSeconds
      try m.finish()
    }
    let grace = try server.int("shutdown_grace_seconds", in: 0...600) ?? 20
    try server.finish()

    var admin = Admin.defaults
    if let m = try root.map("admin") {
      admin.enabled = try m.bool("enabled") ?? admin.enabled
      if let s = try m.string("listen") { admin.listen = try hostPort(s, key: "listen", in: m) }
      try m.finish()
    }
    var models = Models.defaults
    if let m = try root.map("models") {
      models.required = try m.strings("required") ?? []
      try m.finish()
    }
    var logging = Logging.defaults
    if let m = try root.map("logging") {
      logging.level =
        try m.choice("level", ["trace", "debug", "info", "notice", "warning", "error", "critical"]) ?? logging.level
      if let f = try m.choice("format", ["json", "text"]) { logging.format = Logging.Format(rawValue: f) ?? .json }
      try m.finish()
    }
    try root.finish()
    let config = ServerConfig(
      server: Server(
        listen: listen ?? HostPort(host: "127.0.0.1", port: 8443), tls: tls, limits: limits,
        connection: connection, shutdownGraceSeconds: grace),
      admin: admin, models: models, logging: logging)
    if admin.enabled, admin.listen == config.server.listen, admin.listen.port != 0 {
      throw root.map_error("admin.listen", "must differ from server.listen")
    }
    return config
  }

  private static func hostPort(_ s: String, key: String, in map: YAMLMap) throws(YAMLError) -> HostPort {
    // "host:port" or "[v6]:port".
    let host: Substring
    let portText: Substring
    if s.hasPrefix("["), let close = s.firstIndex(of: "]") {
      host = s[s.index(after: s.startIndex)..<close]
      let rest = s[s.index(after: close)...]
      guard rest.hasPrefix(":") else { throw map.error(key, "must be host:port, got '\(s)'") }
      portText = rest.dropFirst()
    } else {
      guard let colon = s.lastIndex(of: ":") else { throw map.error(key, "must be host:port, got '\(s)'") }
      host = s[..<colon]
      portText = s[s.index(after: colon)...]
    }
    guard !host.isEmpty, let port = Int(portText), (0...65_535).contains(port) else {
      throw map.error(key, "must be host:port with a port from 0 to 65535, got '\(s)'")
    }
    return HostPort(host: String(host), port: port)
  }
}

extension YAMLMap {
  fileprivate func map_error(_ path: String, _ message: String) -> YAMLError {
    YAMLError(path: path, line: nil, message: message)
  }
}
