import Foundation
public import Logging

/// One JSON object per line on standard error: time, level, message, source and metadata, keys sorted.
///
/// Callers put only identifiers in metadata (request id, principal, model, reasons); tensor data and tokens are
/// never logged by any stage. Values are escaped (``LogEscaping``), since many come from callers.
///
/// Written by hand rather than with `JSONSerialization` and a fresh `ISO8601DateFormatter` per line: a refusal is
/// logged per call, and those two made the log line ~47% of the server's CPU under a flood of calls with bad tokens
/// (issue 15, `bad_token_flood`), several times the cost of the refusal itself.
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
    StandardError.write(format(event))
  }

  package func format(_ event: LogEvent) -> String {
    // The handler's own fields win over metadata of the same name, so no metadata can pose as the message.
    var fields: [String: String] = [:]
    // JSON escapes C0 controls itself; the same escaping as the text format also neutralises separators, bidi
    // controls and C1, for whoever prints these values later.
    for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
      fields[LogEscaping.escape(key)] = "\(LogEscaping.escape(value))"
    }
    fields["time"] = Self.timestamp()
    fields["level"] = event.level.rawValue
    fields["msg"] = LogEscaping.escape("\(event.message)")
    fields["logger"] = label
    var line = "{"
    line.reserveCapacity(256)
    for (i, key) in fields.keys.sorted().enumerated() {
      if i > 0 { line += "," }
      Self.appendString(key, to: &line)
      line += ":"
      Self.appendString(fields[key] ?? "", to: &line)
    }
    line += "}\n"
    return line
  }

  /// `value` as a JSON string (RFC 8259 §7): quotes, backslashes and C0 controls escaped.
  static func appendString(_ value: String, to out: inout String) {
    out += "\""
    var plain = true
    for byte in value.utf8 where byte < 0x20 || byte == 0x22 || byte == 0x5C {
      plain = false
      break
    }
    if plain {
      out += value
    } else {
      for scalar in value.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
          let hex = String(scalar.value, radix: 16)
          out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
      }
    }
    out += "\""
  }

  /// RFC 3339 UTC with milliseconds, `2026-12-05T20:21:56.123Z`, from the system clock without a formatter.
  static func timestamp() -> String {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    var seconds = now.tv_sec
    var parts = tm()
    gmtime_r(&seconds, &parts)
    func digits(_ value: Int, _ width: Int) -> String {
      let s = String(value)
      return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }
    return digits(Int(parts.tm_year) + 1900, 4) + "-" + digits(Int(parts.tm_mon) + 1, 2) + "-"
      + digits(Int(parts.tm_mday), 2) + "T" + digits(Int(parts.tm_hour), 2) + ":" + digits(Int(parts.tm_min), 2) + ":"
      + digits(Int(parts.tm_sec), 2) + "." + digits(Int(now.tv_nsec) / 1_000_000, 3) + "Z"
  }
}

/// Log lines to file descriptor 2 with `write(2)`: no buffering to lose at exit, and an error (a closed or full
/// pipe) drops the line instead of stopping the process, as `FileHandle.write` would.
enum StandardError {
  static func write(_ line: String) {
    var line = line
    line.withUTF8 { bytes in
      var offset = 0
      while offset < bytes.count {
        let n = Foundation.write(2, bytes.baseAddress.map { $0 + offset }, bytes.count - offset)
        if n > 0 {
          offset += n
        } else if n < 0, errno == EINTR {
          continue
        } else {
          return
        }
      }
    }
  }
}
