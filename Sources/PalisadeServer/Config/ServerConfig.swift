import Crypto
import Foundation
public import PalisadeYAML
import PalisadePolicy

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
  /// Token checks.
  public var auth: Auth
  /// The authorisation policy file.
  public var policy: PolicySettings
  /// How credential and policy files are watched.
  public var reload: Reload
  /// Admission control, queues, dynamic batching and circuit breakers (pipeline stage 7).
  public var scheduling: Scheduler.Settings = .defaults
  /// Drift windows and the extraction monitor (pipeline stage 6).
  public var screening: InputScreener.Settings = .defaults
  /// Remote attestation (`palisade.v1.Attestation`).
  public var attestation: Attestation = .defaults
  /// The tamper-evident audit log; nil (no `audit` section): no audit records.
  public var audit: Audit?
  /// The egress sidecar: where its block reports arrive, and the proxy the server's own outbound traffic uses.
  public var egress: Egress = .defaults

  public struct Egress: Sendable, Equatable {
    /// Unix datagram socket the sidecar's `report_socket` points at; nil: reports are not received.
    public var reportSocket: String?
    /// Permissions of the socket file (the sidecar's user must be able to write to it).
    public var reportSocketMode: Int = 0o660
    /// UIDs whose reports are accepted, checked against the kernel's per-datagram sender credentials; nil: the
    /// server's own UID only. Set it to the sidecar's UID when the sidecar runs as its own user (Kubernetes).
    public var reportSenderUIDs: [UInt32]?
    /// The sidecar's forward proxy, `host:port`: the only way out for checkpoint shipping.
    public var proxy: String?
    /// Where signed audit checkpoints are POSTed (through `proxy`); nil: not shipped.
    public var checkpointURL: String?
    public init(reportSocket: String? = nil, proxy: String? = nil, checkpointURL: String? = nil) {
      self.reportSocket = reportSocket
      self.proxy = proxy
      self.checkpointURL = checkpointURL
    }
    public static let defaults = Egress()
  }

  /// `audit:` in the file; see ``PalisadeAudit/AuditConfiguration`` for each field.
  public struct Audit: Sendable, Equatable {
    public var directory: String
    public var key: String
    public var durability: String = "sync"
    public var segmentMaxBytes: Int = 64 << 20
    public var batchIntervalMs: Int = 100
    public var checkpointEveryRecords: Int = 1000
    public var checkpointIntervalSeconds: Int = 10
    public var origin: String = "palisade.dev/audit"
    public init(directory: String, key: String) {
      self.directory = directory
      self.key = key
    }
  }
  /// SHA-256 of the file this configuration was read from (attestation evidence carries it).
  public var sourceDigest: String?

  public struct Attestation: Sendable, Equatable {
    /// PEM private key (P-256, P-384 or Ed25519) that signs evidence; without it `Attest` answers
    /// FAILED_PRECONDITION. Refused when group or others can read it.
    public var key: String?
    /// The CycloneDX SBOM of this build, whose SHA-256 the evidence reports as `sbom_sha256`. Default:
    /// `share/palisade/sbom.cdx.json` beside the executable's `bin/` (where the image puts it), when present.
    public var sbom: String?
    /// The TPM that roots the evidence (`attestation.tpm`); nil: software-signed evidence only.
    public var tpm: TPMAttestationConfig?
    public init(key: String?, sbom: String? = nil) {
      self.key = key
      self.sbom = sbom
    }
    public static let defaults = Attestation(key: nil)
  }

  public init(
    server: Server, auth: Auth, policy: PolicySettings, admin: Admin = .defaults, models: Models = .defaults,
    logging: Logging = .defaults, reload: Reload = .defaults
  ) {
    self.server = server
    self.auth = auth
    self.policy = policy
    self.admin = admin
    self.models = models
    self.logging = logging
    self.reload = reload
  }

  /// Every call except the exempt RPCs must carry `authorization: Bearer <JWT>`; see ``TokenVerifier``.
  public struct Auth: Sendable, Equatable {
    public struct Issuer: Sendable, Equatable {
      public enum Kind: String, Sendable { case oauth, spiffe }
      /// The token's `iss`.
      public var issuer: String
      public var kind: Kind
      /// JWKS file with this issuer's public keys.
      public var jwks: String
      /// SPIFFE issuers: the trust domain of the JWT-SVIDs (tokens without `iss` are matched by it).
      public var trustDomain: String?
      /// RFC 8705 binding required (default: yes for oauth, no for spiffe, whose `sub` must equal the
      /// certificate's SPIFFE ID instead).
      public var requireCertificateBinding: Bool

      public init(issuer: String, kind: Kind, jwks: String, trustDomain: String? = nil, requireCertificateBinding: Bool? = nil) {
        self.issuer = issuer
        self.kind = kind
        self.jwks = jwks
        self.trustDomain = trustDomain
        self.requireCertificateBinding = requireCertificateBinding ?? (kind == .oauth)
      }
    }
    /// This server's audience: tokens must name it in `aud`.
    public var audience: String
    public var issuers: [Issuer]
    /// RPCs that need no token (still mTLS): by default liveness and health.
    public var exemptRPCs: [String]
    public var algorithms: [String]
    public var types: [String]
    public var leewaySeconds: Int
    public var maxLifetimeSeconds: Int

    public init(
      audience: String, issuers: [Issuer], exemptRPCs: [String] = ["ServerLive", "Check", "Watch"],
      algorithms: [String] = ["ES256", "ES384", "EdDSA"], types: [String] = ["JWT", "at+jwt"], leewaySeconds: Int = 30,
      maxLifetimeSeconds: Int = 900
    ) {
      self.audience = audience
      self.issuers = issuers
      self.exemptRPCs = exemptRPCs
      self.algorithms = algorithms
      self.types = types
      self.leewaySeconds = leewaySeconds
      self.maxLifetimeSeconds = maxLifetimeSeconds
    }
  }

  public struct PolicySettings: Sendable, Equatable {
    /// The policy YAML file (see `palisade policy check`).
    public var file: String
    public init(file: String) { self.file = file }
  }

  public struct Reload: Sendable, Equatable {
    /// How often the certificate, key, CA bundle, JWKS and policy files are checked for changes (SIGHUP checks at once).
    public var intervalSeconds: Int
    public init(intervalSeconds: Int) { self.intervalSeconds = intervalSeconds }
    public static let defaults = Reload(intervalSeconds: 5)
  }

  public struct Server: Sendable, Equatable {
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
  }

  /// HTTP/2 abuse guards: swift-nio-http2's flood limits and Palisade's own; exceeding one sends
  /// GOAWAY(ENHANCE_YOUR_CALM) and closes the connection. Meanings in `TransportConfiguration.Protections`.
  public struct HTTP2: Sendable, Equatable {
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
    public init() {}
    public static let defaults = HTTP2()
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
  }

  public struct Admin: Sendable, Equatable {
    public var enabled: Bool
    public var listen: HostPort
    /// Open admin connections at once; beyond: closed at once.
    public var maxConnections: Int = 64
    /// A request must arrive whole within this of the connection opening or the previous response.
    public var requestTimeoutSeconds: Int = 10
    public init(enabled: Bool, listen: HostPort) {
      self.enabled = enabled
      self.listen = listen
    }
    public static let defaults = Admin(enabled: true, listen: HostPort(host: "127.0.0.1", port: 9464))
  }

  public struct Models: Sendable, Equatable {
    /// Who may sign bundles for which model names: the first rule whose pattern matches decides.
    public struct TrustRule: Sendable, Equatable {
      /// Model-name glob (`*` within a path segment, `**` across).
      public var models: String
      /// PEM public keys (the model_signing "key" method).
      public var publicKeys: [String]
      /// PEM CA roots for the "certificate" method; the leaf must also match `signerSubject` / `signerSAN`.
      public var certificateRoots: [String]
      /// Glob on the signing certificate's subject common name.
      public var signerSubject: String?
      /// `dns:GLOB`, `uri:GLOB` or `email:GLOB` on the signing certificate's SANs.
      public var signerSAN: String?
      public init(
        models: String, publicKeys: [String] = [], certificateRoots: [String] = [], signerSubject: String? = nil,
        signerSAN: String? = nil
      ) {
        self.models = models
        self.publicKeys = publicKeys
        self.certificateRoots = certificateRoots
        self.signerSubject = signerSubject
        self.signerSAN = signerSAN
      }
    }
    /// Names that must have a ready version before `/readyz` and `ServerReady` report ready.
    public var required: [String]
    /// Directories holding signed bundles as `<name>/<version>/` or `<name>/<version>.tar.zst`.
    public var directories: [String]
    public var trust: [TrustRule]
    /// Highest accepted version per model (rollback protection), written atomically.
    public var stateFile: String?
    /// Where packed bundles are unpacked: each load gets its own new 0700 directory inside, removed afterwards.
    public var unpackDirectory: String?
    /// How often loaded model files are re-hashed in memory against their signed digests (0: never).
    public var integrityCheckSeconds: Int = 60
    public init(
      required: [String], directories: [String] = [], trust: [TrustRule] = [], stateFile: String? = nil,
      unpackDirectory: String? = nil
    ) {
      self.required = required
      self.directories = directories
      self.trust = trust
      self.stateFile = stateFile
      self.unpackDirectory = unpackDirectory
    }
    public static let defaults = Models(required: [])
  }

  public struct Logging: Sendable, Equatable {
    public enum Format: String, Sendable, Equatable { case json, text }
    public var level: String
    public var format: Format
    /// One line per inference (request id, principal, model, status, latency), at info level.
    public var accessLog: Bool
    public init(level: String, format: Format, accessLog: Bool = true) {
      self.level = level
      self.format = format
      self.accessLog = accessLog
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
    var config = try parse(text, file: path, baseDirectory: base)
    config.sourceDigest = hexString(SHA256.hash(data: Array(text.utf8)))
    return config
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
      limits.maxHeaderListBytes = try m.int("max_header_list_bytes", in: 1024...(256 << 10)) ?? limits.maxHeaderListBytes
      limits.maxInflightBytesPerConnection =
        try m.int("max_inflight_bytes_per_connection", in: 1024...(1 << 34)) ?? limits.maxInflightBytesPerConnection
      limits.maxInflightBytesPerPrincipal =
        try m.int("max_inflight_bytes_per_principal", in: 1024...(1 << 36)) ?? limits.maxInflightBytesPerPrincipal
      limits.messageTimeoutSeconds = try m.int("message_timeout_seconds", in: 1...3600) ?? limits.messageTimeoutSeconds
      limits.maxWatchesPerConnection =
        try m.int("max_watches_per_connection", in: 1...1000) ?? limits.maxWatchesPerConnection
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
      connection.handshakeTimeoutSeconds =
        try m.int("handshake_timeout_seconds", in: 1...300) ?? connection.handshakeTimeoutSeconds
      connection.maxConnections = try m.int("max_connections", in: 1...1_000_000) ?? connection.maxConnections
      connection.maxConnectionsPerAddress =
        try m.int("max_connections_per_address", in: 1...1_000_000) ?? connection.maxConnectionsPerAddress
      try m.finish()
    }
    var http2 = HTTP2.defaults
    if let m = try server.map("http2") {
      http2.maxResetFrames = try m.int("max_reset_frames", in: 1...100_000) ?? http2.maxResetFrames
      http2.maxStreamErrors = try m.int("max_stream_errors", in: 1...100_000) ?? http2.maxStreamErrors
      http2.maxControlFrames = try m.int("max_control_frames", in: 1...100_000) ?? http2.maxControlFrames
      http2.rateWindowSeconds = try m.int("rate_window_seconds", in: 1...3600) ?? http2.rateWindowSeconds
      http2.maxSequentialContinuationFrames =
        try m.int("max_sequential_continuation_frames", in: 1...1000) ?? http2.maxSequentialContinuationFrames
      http2.maxBufferedControlFrames =
        try m.int("max_buffered_control_frames", in: 1...1_000_000) ?? http2.maxBufferedControlFrames
      http2.maxSequentialEmptyDataFrames =
        try m.int("max_sequential_empty_data_frames", in: 0...1000) ?? http2.maxSequentialEmptyDataFrames
      http2.maxRecentlyResetStreams =
        try m.int("max_recently_reset_streams", in: 0...10_000) ?? http2.maxRecentlyResetStreams
      http2.maxConnectionGlitches = try m.int("max_connection_glitches", in: 0...1_000_000) ?? http2.maxConnectionGlitches
      http2.maxOversizedHeaderBlocks =
        try m.int("max_oversized_header_blocks", in: 0...10_000) ?? http2.maxOversizedHeaderBlocks
      http2.maxOutboundBytesPerConnection =
        try m.int("max_outbound_bytes_per_connection", in: (64 << 10)...(1 << 34)) ?? http2.maxOutboundBytesPerConnection
      http2.writeStallTimeoutSeconds =
        try m.int("write_stall_timeout_seconds", in: 1...3600) ?? http2.writeStallTimeoutSeconds
      try m.finish()
    }
    let grace = try server.int("shutdown_grace_seconds", in: 0...600) ?? 20
    try server.finish()

    var admin = Admin.defaults
    if let m = try root.map("admin") {
      admin.enabled = try m.bool("enabled") ?? admin.enabled
      if let s = try m.string("listen") { admin.listen = try hostPort(s, key: "listen", in: m) }
      admin.maxConnections = try m.int("max_connections", in: 1...100_000) ?? admin.maxConnections
      admin.requestTimeoutSeconds = try m.int("request_timeout_seconds", in: 1...3600) ?? admin.requestTimeoutSeconds
      try m.finish()
    }
    var models = Models.defaults
    if let m = try root.map("models") {
      models.required = try m.strings("required") ?? []
      models.directories = (try m.strings("directories") ?? []).map(resolve)
      models.stateFile = try m.string("state_file").map(resolve)
      models.unpackDirectory = try m.string("unpack_directory").map(resolve)
      models.integrityCheckSeconds = try m.int("integrity_check_seconds", in: 0...86_400) ?? models.integrityCheckSeconds
      for t in try m.maps("trust") ?? [] {
        guard let pattern = try t.string("models"), !pattern.isEmpty else { throw t.error("models", "is required") }
        var rule = Models.TrustRule(models: pattern)
        rule.publicKeys = (try t.strings("public_keys") ?? []).map(resolve)
        rule.certificateRoots = (try t.strings("certificate_roots") ?? []).map(resolve)
        rule.signerSubject = try t.string("signer_subject")
        rule.signerSAN = try t.string("signer_san")
        if let san = rule.signerSAN, !["dns:", "uri:", "email:"].contains(where: { san.hasPrefix($0) }) {
          throw t.error("signer_san", "must start with dns:, uri: or email:")
        }
        if rule.publicKeys.isEmpty && rule.certificateRoots.isEmpty {
          throw t.error(nil, "needs public_keys or certificate_roots")
        }
        if !rule.certificateRoots.isEmpty && rule.signerSubject == nil && rule.signerSAN == nil {
          throw t.error("certificate_roots", "needs signer_subject or signer_san: a CA alone does not say who may sign")
        }
        try t.finish()
        models.trust.append(rule)
      }
      if !models.directories.isEmpty {
        if models.trust.isEmpty { throw m.error("trust", "is required when directories are set") }
        if models.stateFile == nil { throw m.error("state_file", "is required when directories are set") }
      }
      try m.finish()
    }
    guard let authMap = try root.map("auth") else { throw root.error("auth", "is required") }
    guard let audience = try authMap.string("audience"), !audience.isEmpty else {
      throw authMap.error("audience", "is required")
    }
    var issuers: [Auth.Issuer] = []
    for m in try authMap.maps("issuers") ?? [] {
      guard let iss = try m.string("issuer"), !iss.isEmpty else { throw m.error("issuer", "is required") }
      let kind = Auth.Issuer.Kind(rawValue: try m.choice("kind", ["oauth", "spiffe"]) ?? "oauth") ?? .oauth
      guard let jwks = try m.string("jwks"), !jwks.isEmpty else { throw m.error("jwks", "is required") }
      let trustDomain = try m.string("trust_domain")
      if kind == .spiffe && trustDomain == nil { throw m.error("trust_domain", "is required for spiffe issuers") }
      let binding = try m.bool("require_certificate_binding")
      try m.finish()
      issuers.append(
        Auth.Issuer(
          issuer: iss, kind: kind, jwks: resolve(jwks), trustDomain: trustDomain, requireCertificateBinding: binding))
    }
    guard !issuers.isEmpty else { throw authMap.error("issuers", "is required: at least one token issuer") }
    var auth = Auth(audience: audience, issuers: issuers)
    if let exempt = try authMap.strings("exempt_rpcs") {
      for rpc in exempt where !Policy.knownRPCs.contains(rpc) {
        throw authMap.error("exempt_rpcs", "unknown RPC '\(rpc)' (known: \(Policy.knownRPCs.sorted().joined(separator: ", ")))")
      }
      auth.exemptRPCs = exempt
    }
    if let algs = try authMap.strings("algorithms") {
      for alg in algs where !["ES256", "ES384", "EdDSA"].contains(alg) {
        throw authMap.error("algorithms", "'\(alg)' is not allowed (ES256, ES384, EdDSA; none and HS* never)")
      }
      auth.algorithms = algs
    }
    if let types = try authMap.strings("types") { auth.types = types }
    auth.leewaySeconds = try authMap.int("leeway_seconds", in: 0...60) ?? auth.leewaySeconds
    auth.maxLifetimeSeconds = try authMap.int("max_lifetime_seconds", in: 60...86_400) ?? auth.maxLifetimeSeconds
    try authMap.finish()

    guard let policyMap = try root.map("policy") else { throw root.error("policy", "is required") }
    guard let policyFile = try policyMap.string("file"), !policyFile.isEmpty else {
      throw policyMap.error("file", "is required")
    }
    try policyMap.finish()
    var reload = Reload.defaults
    if let m = try root.map("reload") {
      reload.intervalSeconds = try m.int("interval_seconds", in: 1...3600) ?? reload.intervalSeconds
      try m.finish()
    }

    var scheduling = Scheduler.Settings.defaults
    if let m = try root.map("scheduling") {
      let cores = ProcessInfo.processInfo.activeProcessorCount
      if let v = try m.int("max_concurrent_executions", in: 0...4096) { scheduling.maxConcurrentExecutions = v == 0 ? cores : v }
      if let v = try m.int("model_max_concurrent_executions", in: 0...4096) {
        scheduling.modelMaxConcurrentExecutions = v == 0 ? cores : v
      }
      scheduling.queueLimit = try m.int("queue_limit", in: 1...1_000_000) ?? scheduling.queueLimit
      scheduling.modelQueueLimit = try m.int("model_queue_limit", in: 1...1_000_000) ?? scheduling.modelQueueLimit
      scheduling.principalQueueShare =
        try m.double("principal_queue_share", in: 0.001...1) ?? scheduling.principalQueueShare
      if let b = try m.map("batching") {
        scheduling.batching = try b.bool("enabled") ?? scheduling.batching
        scheduling.maxBatch = try b.int("max_batch", in: 1...4096) ?? scheduling.maxBatch
        if let us = try b.int("max_delay_us", in: 0...1_000_000) { scheduling.maxDelay = .microseconds(us) }
        try b.finish()
      }
      if let c = try m.map("circuit_breaker") {
        scheduling.breaker.failureThreshold = try c.int("failure_threshold", in: 1...10_000) ?? scheduling.breaker.failureThreshold
        if let v = try c.int("open_ms", in: 1...3_600_000) { scheduling.breaker.openDuration = .milliseconds(v) }
        scheduling.breaker.halfOpenProbes = try c.int("half_open_probes", in: 1...1000) ?? scheduling.breaker.halfOpenProbes
        if let v = try c.int("slow_call_ms", in: 0...3_600_000) { scheduling.breaker.slowCall = v == 0 ? nil : .milliseconds(v) }
        try c.finish()
      }
      try m.finish()
    }
    var screening = InputScreener.Settings.defaults
    if let m = try root.map("screening") {
      screening.driftWindow = try m.int("drift_window", in: 10...1_000_000) ?? screening.driftWindow
      if let e = try m.map("extraction_monitor") {
        screening.extractionMonitor = try e.bool("enabled") ?? screening.extractionMonitor
        screening.extraction.history = try e.int("history", in: 1...100_000) ?? screening.extraction.history
        screening.extraction.window = try e.int("window", in: 20...5000) ?? screening.extraction.window
        if let v = try e.double("normality_threshold", in: 0...1) { screening.extraction.normalityThreshold = v }
        if let v = try e.double("ood_share_threshold", in: 0...1) { screening.extraction.oodShareThreshold = v }
        screening.extraction.maxPrincipals = try e.int("max_principals", in: 1...10_000_000) ?? screening.extraction.maxPrincipals
        try e.finish()
      }
      try m.finish()
    }

    var audit: Audit? = nil
    if let m = try root.map("audit") {
      guard let directory = try m.string("directory"), !directory.isEmpty else { throw m.error("directory", "is required") }
      guard let key = try m.string("key"), !key.isEmpty else { throw m.error("key", "is required (an Ed25519 key: palisade audit keygen)") }
      var a = Audit(directory: resolve(directory), key: resolve(key))
      a.durability = try m.choice("durability", ["sync", "batched"]) ?? a.durability
      a.segmentMaxBytes = try m.int("segment_max_bytes", in: 4096...(1 << 40)) ?? a.segmentMaxBytes
      a.batchIntervalMs = try m.int("batch_interval_ms", in: 1...60_000) ?? a.batchIntervalMs
      a.checkpointEveryRecords = try m.int("checkpoint_every_records", in: 1...10_000_000) ?? a.checkpointEveryRecords
      a.checkpointIntervalSeconds = try m.int("checkpoint_interval_seconds", in: 1...86_400) ?? a.checkpointIntervalSeconds
      a.origin = try m.string("origin") ?? a.origin
      try m.finish()
      audit = a
    }
    var egress = Egress.defaults
    if let m = try root.map("egress") {
      egress.reportSocket = try m.string("report_socket").map(resolve)
      if let mode = try m.string("report_socket_mode") {
        guard let v = Int(mode, radix: 8), (0...0o777).contains(v) else {
          throw m.error("report_socket_mode", "must be octal permissions like \"0660\"")
        }
        egress.reportSocketMode = v
      }
      if let uids = try m.strings("report_sender_uids") {
        guard !uids.isEmpty else {
          throw m.error("report_sender_uids", "must list at least one UID (omit it for the server's own UID)")
        }
        egress.reportSenderUIDs = try uids.map { (text: String) throws(YAMLError) -> UInt32 in
          // 4294967295 is (uid_t)-1, "no user".
          guard let uid = UInt32(text), uid != UInt32.max else {
            throw m.error("report_sender_uids", "'\(text)' is not a UID (an integer from 0 to 4294967294)")
          }
          return uid
        }
      }
      egress.proxy = try m.string("proxy")
      if let proxy = egress.proxy, !proxy.hasPrefix("unix:/") {
        _ = try hostPort(proxy, key: "proxy", in: m)
      }
      egress.checkpointURL = try m.string("checkpoint_url")
      if egress.checkpointURL != nil && egress.proxy == nil {
        throw m.error("proxy", "is required with checkpoint_url: nothing leaves except through the egress sidecar")
      }
      if let url = egress.checkpointURL, !(url.hasPrefix("https://") || url.hasPrefix("http://")) {
        throw m.error("checkpoint_url", "must be an http(s) URL")
      }
      try m.finish()
    }
    var attestation = Attestation.defaults
    if let m = try root.map("attestation") {
      attestation.key = try m.string("key").map(resolve)
      attestation.sbom = try m.string("sbom").map(resolve)
      attestation.tpm = try m.map("tpm").map { t throws(YAMLError) in try TPMAttestationConfig(yaml: t) }
      try m.finish()
    }

    var logging = Logging.defaults
    if let m = try root.map("logging") {
      logging.level =
        try m.choice("level", ["trace", "debug", "info", "notice", "warning", "error", "critical"]) ?? logging.level
      if let f = try m.choice("format", ["json", "text"]) { logging.format = Logging.Format(rawValue: f) ?? .json }
      logging.accessLog = try m.bool("access_log") ?? logging.accessLog
      try m.finish()
    }
    try root.finish()
    var config = ServerConfig(
      server: Server(
        listen: listen ?? HostPort(host: "127.0.0.1", port: 8443), tls: tls, limits: limits,
        connection: connection, shutdownGraceSeconds: grace),
      auth: auth, policy: PolicySettings(file: resolve(policyFile)), admin: admin, models: models, logging: logging,
      reload: reload)
    config.server.http2 = http2
    config.scheduling = scheduling
    config.screening = screening
    config.attestation = attestation
    config.audit = audit
    config.egress = egress
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
