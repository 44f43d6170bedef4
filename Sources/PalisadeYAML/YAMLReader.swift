import Yams

/// A configuration or policy file problem, naming where it is.
public struct YAMLError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The file, when known.
  public var file: String?
  /// The key path, e.g. `server.tls.private_key` or `rules[2].models`.
  public var path: String
  /// 1-based line of the offending node, when known.
  public var line: Int?
  /// What is wrong.
  public var message: String

  public init(file: String? = nil, path: String, line: Int?, message: String) {
    self.file = file
    self.path = path
    self.line = line
    self.message = message
  }

  public var description: String {
    var location = file ?? ""
    if let line { location += location.isEmpty ? "line \(line)" : ":\(line)" }
    let key = path.isEmpty ? "" : "\(path): "
    return location.isEmpty ? "\(key)\(message)" : "\(location): \(key)\(message)"
  }
}

/// The settings a reader asked for and the ones a document holds, as key paths with list positions written `[]`
/// (`models.trust[].public_keys`), so that a test can check that an annotated example and its parser know the
/// same keys. Pass one to ``YAMLMap/parse(_:file:keyLog:)``.
public final class YAMLKeyLog {
  /// Every key some reader asked for, present or not.
  public private(set) var asked: Set<String> = []
  /// Every key of every mapping that was read.
  public private(set) var present: Set<String> = []
  public init() {}
  fileprivate func ask(_ path: String) { asked.insert(path) }
  fileprivate func hold(_ paths: [String]) { present.formUnion(paths) }
}

/// A YAML mapping read key by key. Every key must be consumed: ``finish()`` refuses the ones nobody asked for,
/// so a misspelt setting is an error instead of a silently ignored default.
public final class YAMLMap {
  public let path: String
  private let mapping: Node.Mapping
  private let node: Node
  private var consumed: Set<String> = []
  private let file: String?
  private let keyLog: YAMLKeyLog?
  /// ``path`` with list positions written `[]`, for the key log.
  private let pattern: String

  /// Parses `text` whose top level must be a mapping (an empty document is an empty mapping). `keyLog` records
  /// the keys read and present.
  public static func parse(_ text: String, file: String? = nil, keyLog: YAMLKeyLog? = nil) throws(YAMLError)
    -> YAMLMap
  {
    let root: Node?
    // The basic resolver: every implicit scalar stays a string and this reader types values itself (`int`, `bool`),
    // so YAML 1.1's implicit types (`yes`, `0x1F`, timestamps) never decide anything and no regular expression runs
    // per scalar. UTF-8 named explicitly: Yams's default encoding reads `YAMS_DEFAULT_ENCODING` from the environment
    // on every parse (and prints when it is set), and how a file is read must not depend on the environment.
    do { root = try Yams.compose(yaml: text, .basic, .default, .utf8) } catch {
      throw YAMLError(file: file, path: "", line: Self.line(of: error), message: "not valid YAML (\(error))")
    }
    guard let root else {
      return YAMLMap(path: "", node: Node.mapping(Node.Mapping([])), file: file, keyLog: keyLog, pattern: "")
    }
    guard case .mapping = root else {
      throw YAMLError(file: file, path: "", line: root.mark?.line, message: "the top level must be a mapping")
    }
    return YAMLMap(path: "", node: root, file: file, keyLog: keyLog, pattern: "")
  }

  init(path: String, node: Node, file: String?, keyLog: YAMLKeyLog?, pattern: String) {
    self.path = path
    self.node = node
    if case .mapping(let m) = node { self.mapping = m } else { self.mapping = Node.Mapping([]) }
    self.file = file
    self.keyLog = keyLog
    self.pattern = pattern
    keyLog?.hold(mapping.compactMap { $0.key.string.map(patternPath) })
  }

  private static func line(of error: any Error) -> Int? {
    if let yaml = error as? YamlError {
      switch yaml {
      case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
        return mark.line
      default: return nil
      }
    }
    return nil
  }

  private static let nulls: Set<String> = ["", "~", "null", "Null", "NULL"]

  private func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
  private func patternPath(_ key: String) -> String { pattern.isEmpty ? key : "\(pattern).\(key)" }

  /// An error about `key` (or about this mapping when `key` is nil).
  public func error(_ key: String?, _ message: String) -> YAMLError {
    let line = key.flatMap { k in mapping.first { $0.key.string == k }?.value.mark?.line } ?? node.mark?.line
    return YAMLError(file: file, path: key.map(keyPath) ?? path, line: line, message: message)
  }

  /// The 1-based line where this mapping starts.
  public var line: Int? { node.mark?.line }

  /// The keys present, in file order.
  public var keys: [String] { mapping.compactMap { $0.key.string } }

  /// `key`'s node, nil when absent. With `nullIsEmptySection`, a null value reads as an empty mapping (``map(_:)``).
  private func value(_ key: String, nullIsEmptySection: Bool = false) throws(YAMLError) -> Node? {
    consumed.insert(key)
    keyLog?.ask(patternPath(key))
    let matches = mapping.filter { $0.key.string == key }
    if matches.count > 1 { throw error(key, "appears more than once") }
    guard let node = matches.first?.value else { return nil }
    // A key written without a value (`key:`, `key: ~`, `key: null`) is refused rather than read as "absent":
    // absent often means a permissive default (no rate limit, every model, audit off), so a value lost to a
    // templating mistake must not quietly become one. Sections are the exception (``map(_:)``).
    if case .scalar(let s) = node, s.tag == Tag(.null) || (s.style == .plain && Self.nulls.contains(s.string)) {
      guard nullIsEmptySection else {
        throw error(key, "has no value (YAML null): give it one, or remove the key to use its default")
      }
      return .mapping(Node.Mapping([], .implicit, .any, node.mark))
    }
    return node
  }

  /// A string value.
  public func string(_ key: String) throws(YAMLError) -> String? {
    guard let node = try value(key) else { return nil }
    guard case .scalar(let scalar) = node else { throw error(key, "must be a string") }
    return scalar.string
  }

  /// An integer in `range`.
  public func int(_ key: String, in range: ClosedRange<Int>) throws(YAMLError) -> Int? {
    guard let node = try value(key) else { return nil }
    guard case .scalar = node, let v = node.int else { throw error(key, "must be an integer") }
    guard range.contains(v) else {
      throw error(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(v)")
    }
    return v
  }

  /// A number (integer or decimal) in `range`.
  public func double(_ key: String, in range: ClosedRange<Double>) throws(YAMLError) -> Double? {
    guard let node = try value(key) else { return nil }
    guard case .scalar = node, let v = node.float, v.isFinite else { throw error(key, "must be a number") }
    guard range.contains(v) else {
      throw error(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(v)")
    }
    return v
  }

  /// A boolean (`true`/`false`).
  public func bool(_ key: String) throws(YAMLError) -> Bool? {
    guard let node = try value(key) else { return nil }
    guard case .scalar(let s) = node, s.string == "true" || s.string == "false" else {
      throw error(key, "must be true or false")
    }
    return s.string == "true"
  }

  /// One of `choices`.
  public func choice(_ key: String, _ choices: [String]) throws(YAMLError) -> String? {
    guard let v = try string(key) else { return nil }
    guard choices.contains(v) else {
      throw error(key, "must be one of \(choices.joined(separator: ", ")), got '\(v)'")
    }
    return v
  }

  /// A list of strings.
  public func strings(_ key: String) throws(YAMLError) -> [String]? {
    guard let node = try value(key) else { return nil }
    guard case .sequence(let seq) = node else { throw error(key, "must be a list of strings") }
    var out: [String] = []
    for (i, item) in seq.enumerated() {
      guard case .scalar(let s) = item else {
        throw YAMLError(file: file, path: "\(keyPath(key))[\(i)]", line: item.mark?.line, message: "must be a string")
      }
      out.append(s.string)
    }
    return out
  }

  /// A nested mapping. A section written without a value (`tls:` with every setting commented out) is an empty
  /// mapping: present, each setting at its default, its required settings still required.
  public func map(_ key: String) throws(YAMLError) -> YAMLMap? {
    guard let node = try value(key, nullIsEmptySection: true) else { return nil }
    guard case .mapping = node else { throw error(key, "must be a mapping") }
    return YAMLMap(path: keyPath(key), node: node, file: file, keyLog: keyLog, pattern: patternPath(key))
  }

  /// A list of mappings.
  public func maps(_ key: String) throws(YAMLError) -> [YAMLMap]? {
    guard let node = try value(key) else { return nil }
    guard case .sequence(let seq) = node else { throw error(key, "must be a list") }
    var out: [YAMLMap] = []
    for (i, item) in seq.enumerated() {
      guard case .mapping = item else {
        throw YAMLError(file: file, path: "\(keyPath(key))[\(i)]", line: item.mark?.line, message: "must be a mapping")
      }
      out.append(
        YAMLMap(
          path: "\(keyPath(key))[\(i)]", node: item, file: file, keyLog: keyLog, pattern: "\(patternPath(key))[]"))
    }
    return out
  }

  /// Refuses keys that were never read.
  public func finish() throws(YAMLError) {
    for (key, _) in mapping {
      guard let name = key.string else {
        throw YAMLError(file: file, path: path, line: key.mark?.line, message: "keys must be strings")
      }
      if !consumed.contains(name) {
        let known = consumed.sorted().joined(separator: ", ")
        throw YAMLError(
          file: file, path: keyPath(name), line: key.mark?.line, message: "unknown setting (known here: \(known))")
      }
    }
  }
}
