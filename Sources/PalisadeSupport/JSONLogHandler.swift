import Foundation
public import Logging

/// One JSON object per line on standard error: time, level, message, source and metadata.
///
/// Callers put only identifiers in metadata (request id, principal, model, reasons); tensor data and tokens are
/// never logged by any stage. Values are escaped (``LogEscaping``), since many come from callers.
public struct JSONLogHandler: LogHandler {
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
    var object: [String: Any] = [
      "time": Self.timestamp(), "level": event.level.rawValue, "msg": LogEscaping.escape("\(event.message)"),
      "logger": label,
    ]
    // JSON escapes C0 controls itself; the same escaping as the text format also neutralises separators, bidi
    // controls and C1, for whoever prints these values later.
    for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
      object[LogEscaping.escape(key)] = "\(LogEscaping.escape(value))"
    }
    guard var line = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
    line.append(0x0A)
    FileHandle.standardError.write(line)
  }

  static func timestamp() -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: Date())
  }
}
