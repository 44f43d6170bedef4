public import PalisadeYAML

extension ServerConfig {
  /// `reload:`, how credential and policy files are watched.
  public struct Reload: DefaultedConfigSection {
    /// How often the certificate, key, CA bundle, JWKS and policy files are checked for changes (SIGHUP checks at once).
    public var intervalSeconds: Int
    public init(intervalSeconds: Int) { self.intervalSeconds = intervalSeconds }
    public static let defaults = Reload(intervalSeconds: 5)

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self = .defaults
      try map.int("interval_seconds", in: 1...3600, into: &intervalSeconds)
    }
  }
}
