import Foundation
public import Logging
import PalisadeCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif
public import ServiceLifecycle

/// Receives the egress sidecar's block reports (one JSON object per datagram on a Unix datagram socket, the
/// sidecar's `report_socket`; format in docs/egress.md) and writes each into the audit log as an `egress_block`
/// record. The socket file is created with `mode` (default 0660: the sidecar runs as another user of the same
/// group); a report that is not a well-formed event is counted and dropped.
public final class EgressReportReceiver: Service, Sendable {
  let path: String
  let mode: Int
  let auditor: Auditor
  let metrics: ServerMetrics
  let logger: Logger
  /// Whether the socket is bound (tests wait for it).
  public let bound = Readiness()

  public init(path: String, mode: Int = 0o660, auditor: Auditor, metrics: ServerMetrics, logger: Logger) {
    self.path = path
    self.mode = mode
    self.auditor = auditor
    self.metrics = metrics
    self.logger = logger
  }

  /// The fields of an `EgressEvent` the audit record keeps.
  struct Report: Decodable {
    var schema: String
    var type: String
    var id: String
    var reason: String
    var location: String
    var detail: String
    var destination: String?
    var method: String
    var scheme: String
    var host: String
    var port: Int
    var body_bytes: Int?
  }

  public func run() async throws {
    // A plain POSIX datagram socket read by one dedicated thread: reports are rare, small and must never wait on
    // the event loops or the cooperative pool.
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else {
      let error = PalisadeError(.failedPrecondition, "cannot create the egress report socket")
      bound.set(false)
      throw error
    }
    unlink(path)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let pathBytes = Array(path.utf8)
    guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
      close(fd)
      let error = PalisadeError(.failedPrecondition, "egress.report_socket path is too long: \(path)")
      bound.set(false)
      throw error
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      for (i, b) in pathBytes.enumerated() { raw[i] = b }
    }
    let bindResult = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard bindResult == 0 else {
      close(fd)
      let error = PalisadeError(.failedPrecondition, "cannot bind the egress report socket \(path) (errno \(errno))")
      bound.set(false)
      throw error
    }
    chmod(path, mode_t(mode))
    var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    bound.set(true)
    logger.info("egress reports accepted", metadata: ["socket": "\(path)"])
    let stop = StopFlag()
    let (stream, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingNewest(1024))
    let reader = Thread {
      var buffer = [UInt8](repeating: 0, count: 65_536)
      while !stop.isSet {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { continuation.yield(Array(buffer[0..<n])) }
      }
      close(fd)
      continuation.finish()
    }
    reader.start()
    await withGracefulShutdownHandler {
      for await datagram in stream { await handle(datagram) }
    } onGracefulShutdown: {
      stop.set()
    }
    stop.set()
    unlink(path)
  }

  func handle(_ bytes: [UInt8]) async {
    guard bytes.count <= 64 << 10, let r = try? JSONDecoder().decode(Report.self, from: Data(bytes)),
      r.schema == "palisade.egress/v1", r.type == "blocked"
    else {
      metrics.recordRejection(reason: "malformed_egress_report")
      logger.warning("malformed egress report dropped", metadata: ["bytes": "\(bytes.count)"])
      return
    }
    logger.warning(
      "egress blocked", metadata: ["reason": "\(r.reason)", "host": "\(r.host)", "destination": "\(r.destination ?? "")"])
    var details = [
      "event_id": r.id, "location": r.location, "method": r.method, "scheme": r.scheme, "host": r.host,
      "port": String(r.port),
    ]
    if let d = r.destination { details["destination"] = d }
    if let b = r.body_bytes { details["body_bytes"] = String(b) }
    await auditor.event(.egressBlock, status: "BLOCKED", reason: "\(r.reason): \(r.detail)", details: details)
  }
}

/// Tells the reader thread to stop.
final class StopFlag: Sendable {
  private let value = Atomic<Bool>(false)
  var isSet: Bool { value.load(ordering: .acquiring) }
  func set() { value.store(true, ordering: .releasing) }
}

/// A one-shot flag that can be awaited: set once by a service when it is ready (or failed to be).
public final class Readiness: Sendable {
  private let state = Mutex<(value: Bool?, waiters: [CheckedContinuation<Bool, Never>])>((nil, []))

  public init() {}

  func set(_ value: Bool) {
    let waiters = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
      guard s.value == nil else { return [] }
      s.value = value
      defer { s.waiters = [] }
      return s.waiters
    }
    for w in waiters { w.resume(returning: value) }
  }

  /// Waits until set; true when ready.
  public func wait() async -> Bool {
    await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
      let now = state.withLock { s -> Bool? in
        if let v = s.value { return v }
        s.waiters.append(c)
        return nil
      }
      if let now { c.resume(returning: now) }
    }
  }
}
