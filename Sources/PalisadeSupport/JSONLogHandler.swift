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
    StandardError.write(line(event))
  }

  package func format(_ event: LogEvent) -> String {
    String(decoding: line(event), as: UTF8.self)
  }

  /// The event's line as UTF-8 bytes, newline included.
  package func line(_ event: LogEvent) -> [UInt8] {
    // In priority order: the handler's own fields (so no metadata can pose as the message), then the event's
    // metadata, then the handler's. JSON escapes C0 controls itself; the same escaping as the text format also
    // neutralises separators, bidi controls and C1, for whoever prints these values later.
    var fields: [(key: String, value: String)] = [
      ("level", event.level.rawValue), ("logger", label), ("msg", LogEscaping.escape("\(event.message)")),
      ("time", RFC3339.now()),
    ]
    let own = event.metadata ?? [:]
    fields.reserveCapacity(4 + own.count + metadata.count)
    for (key, value) in own { fields.append((LogEscaping.escape(key), "\(LogEscaping.escape(value))")) }
    for (key, value) in metadata where own[key] == nil {
      fields.append((LogEscaping.escape(key), "\(LogEscaping.escape(value))"))
    }
    // Sorted by key; of equal keys (metadata named like one of the handler's own fields) the first in priority
    // order is kept.
    let order = fields.indices.sorted { (fields[$0].key, $0) < (fields[$1].key, $1) }
    var out: [UInt8] = [UInt8(ascii: "{")]
    out.reserveCapacity(320)
    var previous: String?
    for i in order where fields[i].key != previous {
      if previous != nil { out.append(UInt8(ascii: ",")) }
      previous = fields[i].key
      Self.appendString(fields[i].key, to: &out)
      out.append(UInt8(ascii: ":"))
      Self.appendString(fields[i].value, to: &out)
    }
    out.append(UInt8(ascii: "}"))
    out.append(UInt8(ascii: "\n"))
    return out
  }

  /// `value` as a JSON string (RFC 8259 §7): quotes, backslashes and C0 controls escaped; everything else is
  /// copied as UTF-8.
  static func appendString(_ value: String, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    for byte in value.utf8 {
      switch byte {
      case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
      case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
      case UInt8(ascii: "\n"): out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
      case UInt8(ascii: "\r"): out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
      case UInt8(ascii: "\t"): out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
      case 0..<0x20:
        let hex = Array("0123456789abcdef".utf8)
        out.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30, hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
      default: out.append(byte)
      }
    }
    out.append(UInt8(ascii: "\""))
  }
}

/// Log lines to file descriptor 2 with `write(2)`: no buffering to lose at exit, and an error (a closed or full
/// pipe) drops the line instead of stopping the process, as `FileHandle.write` would.
enum StandardError {
  static func write(_ line: String) {
    var line = line
    line.withUTF8 { write($0) }
  }

  static func write(_ line: [UInt8]) {
    line.withUnsafeBufferPointer { write($0) }
  }

  private static func write(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let base = bytes.baseAddress else { return }
    var offset = 0
    while offset < bytes.count {
      let n = Foundation.write(2, base + offset, bytes.count - offset)
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
