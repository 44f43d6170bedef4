import Foundation
public import Logging

/// Makes a caller-supplied value safe to put in a log line.
///
/// Model names, versions, request ids and metadata come from the network. Written raw, a newline in one forges
/// a whole log line, an ANSI escape rewrites the operator's terminal, and a bidi override hides text. Every control
/// character (C0, DEL, C1), the Unicode line and paragraph separators and the bidi controls are replaced by a
/// visible escape (`\n`, `\r`, `\t`, `\\`, `\u{1B}`); everything else is kept as is. Both log formats apply it to
/// the message and to every metadata value, so no stage has to remember to.
public enum LogEscaping {
  public static func escape(_ value: String) -> String {
    // Fast path: nothing to escape (the common case for identifiers).
    if !value.unicodeScalars.contains(where: needsEscape) { return value }
    var out = ""
    out.reserveCapacity(value.utf8.count + 8)
    for scalar in value.unicodeScalars {
      switch scalar {
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      case "\\": out += "\\\\"
      case _ where needsEscape(scalar): out += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
      default: out.unicodeScalars.append(scalar)
      }
    }
    return out
  }

  static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar.value {
    case 0x00...0x1F, 0x7F...0x9F: true
    case 0x2028, 0x2029: true  // line and paragraph separators
    case 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: true  // bidi marks, embeddings, overrides, isolates
    case 0x5C: true  // the escape character itself, so an escaped value is never ambiguous
    default: false
    }
  }

  /// A metadata value with every string inside it escaped.
  public static func escape(_ value: Logger.MetadataValue) -> Logger.MetadataValue {
    switch value {
    case .string(let s): .string(escape(s))
    case .stringConvertible(let c): .string(escape(c.description))
    case .array(let a): .array(a.map { escape($0) })
    case .dictionary(let d): .dictionary(Dictionary(uniqueKeysWithValues: d.map { (escape($0.key), escape($0.value)) }))
    }
  }
}

/// The `text` log format: `time level label: message key=value ...` on standard error, one line per event, with
/// every message, key and value escaped by ``LogEscaping`` so that no input can start a line of its own.
public struct TextLogHandler: LogHandler {
  public var metadata: Logger.Metadata = [:]
  public var logLevel: Logger.Level
  private let label: String

  public init(label: String, level: Logger.Level) {
    self.label = label
    self.logLevel = level
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  public func log(event: LogEvent) {
    StandardError.write(format(event))
  }

  package func format(_ event: LogEvent) -> String {
    var line = "\(RFC3339.now()) \(event.level) \(label): \(LogEscaping.escape("\(event.message)"))"
    let merged = metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 })
    for key in merged.keys.sorted() {
      guard let value = merged[key] else { continue }
      line += " \(LogEscaping.escape(key))=\(LogEscaping.escape(value))"
    }
    return line + "\n"
  }
}
