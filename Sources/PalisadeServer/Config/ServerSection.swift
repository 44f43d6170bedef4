public import PalisadeYAML

extension ServerConfig {
  /// `server:`, the gRPC listener. Its mappings `tls`, `limits`, `connection` and `http2` are sections of their own.
  public struct Server: ConfigSection {
    public static let defaultListen = HostPort(host: "127.0.0.1", port: 8443)
    /// Host and port of the gRPC listener.
    public var listen: HostPort
    public var tls: TLS
    public var limits: Limits
    public var connection: Connection
    /// HTTP/2 abuse guards (`server.http2`).
    public var http2: HTTP2 = .defaults
    /// How long SIGTERM waits for in-flight calls before cancelling them.
    public var shutdownGraceSeconds: Int

    public init(
      listen: HostPort = Server.defaultListen, tls: TLS, limits: Limits = .defaults,
      connection: Connection = .defaults, shutdownGraceSeconds: Int = 20
    ) {
      self.listen = listen
      self.tls = tls
      self.limits = limits
      self.connection = connection
      self.shutdownGraceSeconds = shutdownGraceSeconds
    }

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      let listen = try map.string("listen").map { s throws(YAMLError) in try context.hostPort(s, key: "listen", in: map)
      }
      self.init(listen: listen ?? Self.defaultListen, tls: try map.requiredSection("tls", in: context))
      limits = try map.section("limits", in: context)
      connection = try map.section("connection", in: context)
      http2 = try map.section("http2", in: context)
      try map.int("shutdown_grace_seconds", in: 0...600, into: &shutdownGraceSeconds)
    }
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
