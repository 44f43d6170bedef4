public import PalisadeBundle
public import PalisadeYAML

extension ServerConfig {
  /// `models:`: signed bundle directories, who may sign them, and which models readiness waits for.
  public struct Models: DefaultedConfigSection {
    /// Who may sign bundles for which model names: the first rule whose pattern matches decides. The same type
    /// `palisade bundle verify` builds its policy from (`TrustPolicy.load`).
    public typealias TrustRule = TrustPolicy.RuleFiles
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

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self = .defaults
      try map.strings("required", into: &required)
      directories = (try map.strings("directories") ?? []).map(context.resolve)
      stateFile = try map.string("state_file").map(context.resolve)
      unpackDirectory = try map.string("unpack_directory").map(context.resolve)
      try map.int("integrity_check_seconds", in: 0...86_400, into: &integrityCheckSeconds)
      trust = try map.sections("trust", in: context) ?? []
      if !directories.isEmpty {
        if trust.isEmpty { throw map.error("trust", "is required when directories are set") }
        if stateFile == nil { throw map.error("state_file", "is required when directories are set") }
      }
    }
  }
}

extension TrustPolicy.RuleFiles: ConfigSection {
  public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
    self.init(models: try map.requiredString("models"))
    publicKeys = (try map.strings("public_keys") ?? []).map(context.resolve)
    certificateRoots = (try map.strings("certificate_roots") ?? []).map(context.resolve)
    signerSubject = try map.string("signer_subject")
    signerSAN = try map.string("signer_san")
    if let san = signerSAN, !["dns:", "uri:", "email:"].contains(where: { san.hasPrefix($0) }) {
      throw map.error("signer_san", "must start with dns:, uri: or email:")
    }
    if publicKeys.isEmpty && certificateRoots.isEmpty {
      throw map.error(nil, "needs public_keys or certificate_roots")
    }
    if !certificateRoots.isEmpty && signerSubject == nil && signerSAN == nil {
      throw map.error(
        "certificate_roots", "needs signer_subject or signer_san: a CA alone does not say who may sign")
    }
  }
}
