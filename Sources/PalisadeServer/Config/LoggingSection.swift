public import PalisadeYAML

extension ServerConfig {
  /// `logging:`, log output.
  public struct Logging: DefaultedConfigSection {
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

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self = .defaults
      level = try map.choice("level", ["trace", "debug", "info", "notice", "warning", "error", "critical"]) ?? level
      if let f = try map.choice("format", ["json", "text"]) { format = Format(rawValue: f) ?? .json }
      try map.bool("access_log", into: &accessLog)
    }
  }
}
