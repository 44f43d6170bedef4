public import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One blocked request, as reported to the server's audit log (one JSON object per datagram) and to the alert
/// webhook. It says what and where, never the data: no path, no query, no header or body bytes.
public struct EgressEvent: Codable, Sendable, Equatable {
  /// Always `palisade.egress/v1`.
  public var schema: String
  /// Always `blocked`.
  public var type: String
  /// RFC 3339 UTC.
  public var time: String
  /// Unique per event.
  public var id: String
  /// A ``BlockReason`` raw value.
  public var reason: String
  /// `url`, `header`, `body` or `request`.
  public var location: String
  /// What was found (e.g. "canary token (bundle digits v1)"); never the secret itself.
  public var detail: String
  /// The matching destination's name, when the host is allowlisted.
  public var destination: String?
  public var method: String
  public var scheme: String
  public var host: String
  public var port: Int
  /// Body bytes of the refused request.
  public var bodyBytes: Int

  enum CodingKeys: String, CodingKey {
    case schema, type, time, id, reason, location, detail, destination, method, scheme, host, port
    case bodyBytes = "body_bytes"
  }

  public init(
    reason: BlockReason, location: String, detail: String, destination: String?, method: String, scheme: String,
    host: String, port: Int, bodyBytes: Int, time: Date = Date()
  ) {
    schema = "palisade.egress/v1"
    type = "blocked"
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    self.time = f.string(from: time)
    id = UUID().uuidString.lowercased()
    self.reason = reason.rawValue
    self.location = location
    self.detail = detail
    self.destination = destination
    self.method = method
    self.scheme = scheme
    self.host = host
    self.port = port
    self.bodyBytes = bodyBytes
  }

  /// One line of JSON (sorted keys), without the newline.
  public func jsonLine() -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return (try? Array(encoder.encode(self))) ?? []
  }
}

/// Sends events as datagrams to a Unix datagram socket (`report_socket`). A datagram either arrives whole or not
/// at all, and a listener that is down never blocks the proxy: a failed send is counted and logged.
final class EventReporter: Sendable {
  let path: String?
  let logger: Logger

  init(path: String?, logger: Logger) {
    self.path = path
    self.logger = logger
  }

  /// Returns whether the event was handed to the socket.
  func report(_ event: EgressEvent) -> Bool {
    guard let path else { return false }
    var line = event.jsonLine()
    line.append(0x0A)
    #if canImport(Glibc)
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    #else
    let fd = socket(AF_UNIX, SOCK_DGRAM, 0)
    #endif
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let pathBytes = Array(path.utf8)
    let capacity = MemoryLayout.size(ofValue: addr.sun_path)
    guard pathBytes.count < capacity else { return false }
    withUnsafeMutableBytes(of: &addr.sun_path) { dst in
      for (i, b) in pathBytes.enumerated() { dst[i] = b }
    }
    let sent = withUnsafePointer(to: &addr) { ptr in
      ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
        line.withUnsafeBytes { buf in
          sendto(fd, buf.baseAddress, buf.count, Int32(MSG_DONTWAIT), sa, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
      }
    }
    if sent != line.count {
      logger.warning("egress event not delivered to report_socket", metadata: ["errno": "\(errno)", "id": "\(event.id)"])
      return false
    }
    return true
  }
}
