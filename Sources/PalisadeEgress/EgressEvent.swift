import Foundation
import Logging
import PalisadeSupport
#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

extension EgressEvent {
  /// A new event for a request refused for `reason` (the format itself is shared with the server, in PalisadeSupport).
  init(
    reason: BlockReason, location: String, detail: String, destination: String?, method: String, scheme: String,
    host: String, port: Int, bodyBytes: Int
  ) {
    self.init(
      reason: reason.rawValue, location: location, detail: detail, destination: destination, method: method,
      scheme: scheme, host: host, port: port, bodyBytes: bodyBytes)
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
      logger.warning(
        "egress event not delivered to report_socket", metadata: ["errno": "\(errno)", "id": "\(event.id)"])
      return false
    }
    return true
  }
}
