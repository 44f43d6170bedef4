public import PalisadeYAML

extension ServerConfig {
  /// `policy:`, the authorisation policy file.
  public struct PolicySettings: ConfigSection {
    /// The policy YAML file (see `palisade policy check`).
    public var file: String
    public init(file: String) { self.file = file }

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self.init(file: context.resolve(try map.requiredString("file")))
    }
  }
}
