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

  /// An integer in `range`, written as YAML 1.2's core schema writes one (``YAMLNumber/integer(_:)``).
  public func int(_ key: String, in range: ClosedRange<Int>) throws(YAMLError) -> Int? {
    guard let node = try value(key) else { return nil }
    guard case .scalar(let s) = node, s.style == .plain else { throw error(key, "must be an integer") }
    let v: Int
    switch YAMLNumber.integer(s.string) {
    case .value(let value): v = value
    case .leadingZero:
      throw error(
        key,
        "must be an integer without leading zeros, got '\(s.string)' (write 0o… for octal; YAML 1.1 reads it as octal)")
    case .tooLarge: throw error(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(s.string)")
    case .invalid: throw error(key, "must be an integer")
    }
    guard range.contains(v) else {
      throw error(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(v)")
    }
    return v
  }

  /// A number (integer or decimal) in `range`.
  public func double(_ key: String, in range: ClosedRange<Double>) throws(YAMLError) -> Double? {
    guard let node = try value(key) else { return nil }
    guard case .scalar(let s) = node, s.style == .plain, let v = YAMLNumber.decimal(s.string) else {
      throw error(key, "must be a number")
    }
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

/// Numbers as this reader accepts them, parsed here rather than by Yams's YAML 1.1 constructors: those read `1:30` as
/// base 60 (and trap on overflow there: a fuzzed `port: +55555557155555555555:12727` stopped the process, so a
/// policy reload could have) and `0443` as octal 291, surprises a configuration file must not hold.
enum YAMLNumber {
  enum Integer: Equatable {
    case value(Int)
    /// Decimal digits after a leading 0: octal to YAML 1.1 tools, decimal to YAML 1.2 ones, so refused.
    case leadingZero
    case tooLarge
    case invalid
  }

  /// YAML 1.2 core schema integers: `[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+`, with `_` allowed between digits
  /// (as YAML 1.1 allowed, `1_000_000`).
  static func integer(_ text: String) -> Integer {
    var body = Substring(text)
    var sign = ""
    if let first = body.first, first == "-" || first == "+" {
      sign = first == "-" ? "-" : ""
      body = body.dropFirst()
    }
    var radix = 10
    if body.hasPrefix("0x") {
      radix = 16
      body = body.dropFirst(2)
    } else if body.hasPrefix("0o") {
      radix = 8
      body = body.dropFirst(2)
    }
    guard let digits = withoutSeparators(body, isDigit: { $0.isHexDigit && Int(String($0), radix: radix) != nil })
    else { return .invalid }
    if radix == 10, digits.count > 1, digits.first == "0" { return .leadingZero }
    guard let value = Int(sign + digits, radix: radix) else { return .tooLarge }
    return .value(value)
  }

  /// A finite decimal, `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`: no `.inf`, `.nan`, hex floats or
  /// base 60.
  static func decimal(_ text: String) -> Double? {
    let chars = Array(text.utf8)
    var i = 0
    func skipDigits() -> Int {
      let start = i
      while i < chars.count, chars[i] >= UInt8(ascii: "0"), chars[i] <= UInt8(ascii: "9") { i += 1 }
      return i - start
    }
    func skipSign() { if i < chars.count, chars[i] == UInt8(ascii: "-") || chars[i] == UInt8(ascii: "+") { i += 1 } }
    skipSign()
    var mantissa = skipDigits()
    if i < chars.count, chars[i] == UInt8(ascii: ".") {
      i += 1
      mantissa += skipDigits()
    }
    guard mantissa > 0 else { return nil }
    if i < chars.count, chars[i] == UInt8(ascii: "e") || chars[i] == UInt8(ascii: "E") {
      i += 1
      skipSign()
      guard skipDigits() > 0 else { return nil }
    }
    guard i == chars.count, let value = Double(text), value.isFinite else { return nil }
    return value
  }

  /// `text` without `_` separators, each between two digits; nil when empty, when a character is not a digit, or
  /// when a separator is not between digits.
  private static func withoutSeparators(_ text: Substring, isDigit: (Character) -> Bool) -> String? {
    var out = ""
    var previousIsDigit = false
    for c in text {
      if c == "_" {
        guard previousIsDigit else { return nil }
        previousIsDigit = false
      } else {
        guard isDigit(c) else { return nil }
        out.append(c)
        previousIsDigit = true
      }
    }
    return previousIsDigit ? out : nil
  }
}
