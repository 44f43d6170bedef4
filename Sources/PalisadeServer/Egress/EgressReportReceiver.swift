import Foundation
public import Logging
import PalisadeCore
import PalisadeSupport
import Synchronization
#if canImport(Glibc)
  import Glibc
#endif
public import ServiceLifecycle

/// Receives the egress sidecar's block reports (one JSON object per datagram on a Unix datagram socket, the
/// sidecar's `report_socket`; format in docs/egress.md) and writes each into the audit log as an `egress_block`
/// record. The socket file is created with `mode` (default 0660: the sidecar runs as another user of the same
/// group).
///
/// Anyone who can write to the socket file could otherwise add well-formed records to the tamper-evident log, so
/// each sender is authenticated by the kernel: the socket has `SO_PASSCRED` set before it is bound, so every
/// datagram arrives with its sender's pid, uid and gid (`SCM_CREDENTIALS`; a process cannot claim another user's
/// uid without `CAP_SETUID`). Only senders whose uid is in `allowedSenderUIDs` (default: the server's own uid;
/// `egress.report_sender_uids` in the config) are heard; their uid and pid are recorded in the audit record. Any
/// other datagram is dropped, counted (`palisade_rejections_total{reason="unauthenticated_egress_report"}`) and
/// logged without its contents. A report that is not a well-formed event is counted and dropped likewise.
public final class EgressReportReceiver: Service, Sendable {
  let path: String
  let mode: Int
  let allowedSenderUIDs: Set<UInt32>
  let auditor: Auditor
  let metrics: ServerMetrics
  let logger: Logger
  /// Whether the socket is bound (tests wait for it).
  public let bound = Readiness()
  /// Datagrams dropped for their sender (for logging only the first and then every power of two).
  private let refusedSenders = Atomic<Int>(0)

  /// The kernel-verified sender of one datagram. `pid` is 0 when the sender is in another PID namespace (another
  /// container of the pod).
  struct Sender: Sendable, Equatable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
  }

  /// - Parameter allowedSenderUIDs: uids whose reports are accepted; nil: the server's own uid only.
  public init(
    path: String, mode: Int = 0o660, allowedSenderUIDs: Set<UInt32>? = nil, auditor: Auditor, metrics: ServerMetrics,
    logger: Logger
  ) {
    self.path = path
    self.mode = mode
    self.allowedSenderUIDs = allowedSenderUIDs ?? [getuid()]
    self.auditor = auditor
    self.metrics = metrics
    self.logger = logger
  }

  public func run() async throws {
    do {
      try await receive()
    } catch {
      bound.set(false)
      throw error
    }
  }

  #if os(Linux)
    /// `SCM_CREDENTIALS` and `struct ucred` are GNU extensions Swift's Glibc module does not import; both are the same
    /// on every Linux architecture.
    private static let scmRights: Int32 = 1
    private static let scmCredentials: Int32 = 2
    private static let ucredSize = 12

    private func receive() async throws {
      // A plain POSIX datagram socket read by one dedicated thread: reports are rare, small and must never wait on
      // the event loops or the cooperative pool.
      let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
      guard fd >= 0 else { throw PalisadeError(.failedPrecondition, "cannot create the egress report socket") }
      // Before bind: no datagram can reach the socket without its sender's credentials attached.
      var on: Int32 = 1
      guard setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
        close(fd)
        throw PalisadeError(
          .failedPrecondition, "cannot enable SO_PASSCRED on the egress report socket (errno \(errno))")
      }
      guard let fileMode = mode_t(exactly: mode), (0...0o777).contains(mode) else {
        close(fd)
        throw PalisadeError(.failedPrecondition, "egress.report_socket_mode must be permissions between 0 and 0777")
      }
      unlink(path)
      var address = sockaddr_un()
      address.sun_family = sa_family_t(AF_UNIX)
      let pathBytes = Array(path.utf8)
      guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
        close(fd)
        throw PalisadeError(.failedPrecondition, "egress.report_socket path is too long: \(path)")
      }
      withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (i, b) in pathBytes.enumerated() { raw[i] = b }
      }
      let bindResult = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
      }
      guard bindResult == 0 else {
        close(fd)
        throw PalisadeError(.failedPrecondition, "cannot bind the egress report socket \(path) (errno \(errno))")
      }
      chmod(path, fileMode)
      var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
      bound.set(true)
      logger.info(
        "egress reports accepted",
        metadata: [
          "socket": "\(path)", "sender_uids": "\(allowedSenderUIDs.sorted().map(String.init).joined(separator: ","))",
        ])
      let stop = StopFlag()
      let (stream, continuation) = AsyncStream<([UInt8], Sender?)>.makeStream(bufferingPolicy: .bufferingNewest(1024))
      let reader = Thread {
        Thread.current.name = "palisade-egress"
        var buffer = [UInt8](repeating: 0, count: 65_536)
        // Room for exactly one SCM_CREDENTIALS message (CMSG_SPACE(12) = 32 bytes), which the kernel puts first: file
        // descriptors a sender attaches (SCM_RIGHTS) find no room, are never installed here, and the datagram is
        // marked truncated and dropped. Any that did arrive would be closed below.
        var control = [UInt64](repeating: 0, count: 4)
        while !stop.isSet {
          var flags: Int32 = 0
          var controlLength = 0
          for k in control.indices { control[k] = 0 }
          let n = buffer.withUnsafeMutableBytes { data in
            control.withUnsafeMutableBytes { ctl in
              var iov = iovec(iov_base: data.baseAddress, iov_len: data.count)
              return withUnsafeMutablePointer(to: &iov) { iovPointer in
                var message = msghdr()
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                message.msg_control = ctl.baseAddress
                message.msg_controllen = ctl.count
                let n = recvmsg(fd, &message, 0)
                // On failure (the 200 ms receive timeout) the control fields mean nothing.
                flags = n >= 0 ? message.msg_flags : 0
                controlLength = n >= 0 ? message.msg_controllen : 0
                return n
              }
            }
          }
          let parsed = control.withUnsafeBytes {
            Self.controlMessages(UnsafeRawBufferPointer(rebasing: $0[0..<max(0, min(controlLength, $0.count))]))
          }
          for passed in parsed.descriptors { close(passed) }
          guard n > 0 else { continue }
          let trusted = flags & Int32(MSG_CTRUNC) == 0 && parsed.descriptors.isEmpty
          continuation.yield((Array(buffer[0..<n]), trusted ? parsed.sender : nil))
        }
        close(fd)
        continuation.finish()
      }
      reader.start()
      await withGracefulShutdownHandler {
        for await (datagram, sender) in stream { await handle(datagram, from: sender) }
      } onGracefulShutdown: {
        stop.set()
      }
      stop.set()
      unlink(path)
    }

    /// The `SCM_CREDENTIALS` sender and any `SCM_RIGHTS` file descriptors among the control messages of one datagram.
    static func controlMessages(_ control: UnsafeRawBufferPointer) -> (sender: Sender?, descriptors: [Int32]) {
      let header = MemoryLayout<cmsghdr>.size
      let align = MemoryLayout<Int>.size
      var sender: Sender?
      var descriptors: [Int32] = []
      var offset = 0
      while offset + header <= control.count {
        let length = control.loadUnaligned(fromByteOffset: offset, as: Int.self)
        let level = control.loadUnaligned(fromByteOffset: offset + MemoryLayout<Int>.size, as: Int32.self)
        let type = control.loadUnaligned(fromByteOffset: offset + MemoryLayout<Int>.size + 4, as: Int32.self)
        guard length >= header, length <= control.count - offset else { break }
        let data = offset + header
        if level == SOL_SOCKET, type == scmCredentials, length >= header + ucredSize, sender == nil {
          sender = Sender(
            pid: control.loadUnaligned(fromByteOffset: data, as: Int32.self),
            uid: control.loadUnaligned(fromByteOffset: data + 4, as: UInt32.self),
            gid: control.loadUnaligned(fromByteOffset: data + 8, as: UInt32.self))
        } else if level == SOL_SOCKET, type == scmRights {
          var at = data
          while at + 4 <= offset + length {
            descriptors.append(control.loadUnaligned(fromByteOffset: at, as: Int32.self))
            at += 4
          }
        }
        offset += (length + align - 1) / align * align
      }
      return (sender, descriptors)
    }
  #else
    private func receive() async throws {
      throw PalisadeError(
        .failedPrecondition,
        "egress.report_socket needs per-datagram sender credentials (SO_PASSCRED), which only Linux provides")
    }
  #endif

  func handle(_ bytes: [UInt8], from sender: Sender?) async {
    guard let sender, allowedSenderUIDs.contains(sender.uid) else {
      metrics.recordRejection(reason: "unauthenticated_egress_report")
      let dropped = refusedSenders.wrappingAdd(1, ordering: .relaxed).newValue
      // Logged without its contents, and not once per datagram (a local process could flood the log).
      if dropped.nonzeroBitCount == 1 {
        logger.warning(
          "egress report from a sender that is not allowed dropped",
          metadata: [
            "uid": "\(sender.map { String($0.uid) } ?? "unknown")",
            "pid": "\(sender.map { String($0.pid) } ?? "unknown")",
            "bytes": "\(bytes.count)", "dropped_total": "\(dropped)",
          ])
      }
      return
    }
    // The format is the sidecar's own type (PalisadeSupport.EgressEvent), decoded with its schema checked.
    guard bytes.count <= 64 << 10, let r = EgressEvent.decode(bytes) else {
      metrics.recordRejection(reason: "malformed_egress_report")
      logger.warning("malformed egress report dropped", metadata: ["bytes": "\(bytes.count)", "uid": "\(sender.uid)"])
      return
    }
    logger.warning(
      "egress blocked",
      metadata: ["reason": "\(r.reason)", "host": "\(r.host)", "destination": "\(r.destination ?? "")"])
    var details = [
      "event_id": r.id, "location": r.location, "method": r.method, "scheme": r.scheme, "host": r.host,
      "port": String(r.port), "sender_uid": String(sender.uid), "sender_pid": String(sender.pid),
    ]
    if let d = r.destination { details["destination"] = d }
    details["body_bytes"] = String(r.bodyBytes)
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
