import Crypto
import Foundation
public import PalisadeYAML
import PalisadeSupport

/// Everything `palisade serve` needs, read from one YAML file. Every setting has a safe default; see
/// `deploy/palisade.example.yaml` for the annotated reference. Each top-level mapping is a ``ConfigSection`` in a
/// file of its own beside this one (`ServerSection.swift`, `AuthSection.swift`, ...) that reads and checks its
/// keys; this type only puts them together and checks what spans sections.
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
  /// Canary and shadow rollouts: defaults, the shadow bound, rollouts started at boot.
  public var rollouts: RolloutSettings = .defaults
  /// OpenTelemetry spans for inference calls; off by default.
  public var tracing: TracingSettings = .defaults
  /// SHA-256 of the file this configuration was read from (attestation evidence carries it).
  public var sourceDigest: String?

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
    try parse(try YAMLMap.parse(text, file: file), baseDirectory: baseDirectory)
  }

  /// Reads the sections of a parsed file, in this order (the first error found is the one reported), then
  /// refuses unknown top-level keys.
  public static func parse(_ root: YAMLMap, baseDirectory: String) throws(YAMLError) -> ServerConfig {
    let context = ConfigContext(baseDirectory: baseDirectory)
    let server: Server = try root.requiredSection("server", in: context)
    let admin: Admin = try root.section("admin", in: context)
    let models: Models = try root.section("models", in: context)
    let auth: Auth = try root.requiredSection("auth", in: context)
    let policy: PolicySettings = try root.requiredSection("policy", in: context)
    var config = ServerConfig(server: server, auth: auth, policy: policy, admin: admin, models: models)
    config.reload = try root.section("reload", in: context)
    config.scheduling = try root.section("scheduling", in: context)
    config.screening = try root.section("screening", in: context)
    config.audit = try root.optionalSection("audit", in: context)
    config.egress = try root.section("egress", in: context)
    config.attestation = try root.section("attestation", in: context)
    config.logging = try root.section("logging", in: context)
    config.rollouts = try root.section("rollouts", in: context)
    config.tracing = try root.section("tracing", in: context)
    try root.finish()
    try config.checkAcrossSections()
    return config
  }

  /// Rules that involve more than one section.
  func checkAcrossSections() throws(YAMLError) {
    if admin.enabled, admin.listen == server.listen, admin.listen.port != 0 {
      throw YAMLError(path: "admin.listen", line: nil, message: "must differ from server.listen")
    }
  }
}
