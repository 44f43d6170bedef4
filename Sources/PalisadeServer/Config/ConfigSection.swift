public import PalisadeYAML

/// One mapping of the configuration file, as a type that reads itself (nested configuration structs with
/// `.defaults`, the way grpc-swift-2 models them). Adding a setting touches only its section type: a property
/// with its default, one line in `init(reading:in:)`, the annotated example (`deploy/palisade.example.yaml`) and a
/// test (`ConfigExampleTests` checks that the example and the parsers know the same keys).
public protocol ConfigSection: Sendable, Equatable {
  /// Reads the section's settings from `map` (its own mapping), throwing errors that name the key. Every key is
  /// read even when the value ends up unused: the caller refuses the unread ones afterwards (``YAMLMap/finish()``).
  init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError)
}

/// A section whose every setting has a default, so that the section may be left out.
public protocol DefaultedConfigSection: ConfigSection {
  static var defaults: Self { get }
}

/// What a section needs besides its own mapping.
public struct ConfigContext: Sendable {
  /// The directory relative file paths are resolved against (the one holding the configuration file).
  public var baseDirectory: String

  public init(baseDirectory: String) { self.baseDirectory = baseDirectory }

  /// `path`, made absolute against ``baseDirectory``.
  public func resolve(_ path: String) -> String { path.hasPrefix("/") ? path : "\(baseDirectory)/\(path)" }

  /// `host:port` or `[v6]:port`; errors name `key` in `map`.
  public func hostPort(_ s: String, key: String, in map: YAMLMap) throws(YAMLError) -> ServerConfig.HostPort {
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
    return ServerConfig.HostPort(host: String(host), port: port)
  }
}

extension YAMLMap {
  /// The section under `key`, its defaults when the key is absent; its unknown keys are refused.
  public func section<S: DefaultedConfigSection>(_ key: String, in context: ConfigContext) throws(YAMLError) -> S {
    try optionalSection(key, in: context) ?? S.defaults
  }

  /// The section under `key`, which must be there.
  public func requiredSection<S: ConfigSection>(_ key: String, in context: ConfigContext) throws(YAMLError) -> S {
    guard let section: S = try optionalSection(key, in: context) else { throw error(key, "is required") }
    return section
  }

  /// The section under `key`, nil when the key is absent.
  public func optionalSection<S: ConfigSection>(_ key: String, in context: ConfigContext) throws(YAMLError) -> S? {
    guard let m = try map(key) else { return nil }
    let section = try S(reading: m, in: context)
    try m.finish()
    return section
  }

  /// A list of sections under `key` (each read and checked in turn), nil when the key is absent.
  public func sections<S: ConfigSection>(_ key: String, in context: ConfigContext) throws(YAMLError) -> [S]? {
    guard let list = try maps(key) else { return nil }
    var out: [S] = []
    for m in list {
      out.append(try S(reading: m, in: context))
      try m.finish()
    }
    return out
  }

  // One line per setting: the value in the file replaces the default only when the key is there.

  func int(_ key: String, in range: ClosedRange<Int>, into value: inout Int) throws(YAMLError) {
    if let v = try int(key, in: range) { value = v }
  }

  func double(_ key: String, in range: ClosedRange<Double>, into value: inout Double) throws(YAMLError) {
    if let v = try double(key, in: range) { value = v }
  }

  func bool(_ key: String, into value: inout Bool) throws(YAMLError) {
    if let v = try bool(key) { value = v }
  }

  func string(_ key: String, into value: inout String) throws(YAMLError) {
    if let v = try string(key) { value = v }
  }

  func strings(_ key: String, into value: inout [String]) throws(YAMLError) {
    if let v = try strings(key) { value = v }
  }

  /// A required, non-empty string.
  func requiredString(_ key: String, _ message: String = "is required") throws(YAMLError) -> String {
    guard let v = try string(key), !v.isEmpty else { throw error(key, message) }
    return v
  }
}
