import Foundation
#if canImport(Glibc)
  import Glibc
#endif
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import PalisadeEgress
import PalisadeOutbound
import PalisadeSupport
import PalisadeTestSupport

/// A local HTTPS server (TLS from the test PKI) that records what reaches it and answers 200.
final class TestHTTPSServer: @unchecked Sendable {
  struct Received: Sendable {
    var method: String
    var uri: String
    var headers: [(String, String)]
    var body: [UInt8]
  }

  private let lock = NSLock()
  private var _received: [Received] = []
  private var channel: (any Channel)?
  var received: [Received] {
    lock.lock()
    defer { lock.unlock() }
    return _received
  }
  private(set) var port = 0

  init(pki: TestPKI, host: String = "127.0.0.1", tls: Bool = true) throws {
    let context: NIOSSLContext? =
      tls
      ? try NIOSSLContext(
        configuration: .makeServerConfiguration(
          certificateChain: try NIOSSLCertificate.fromPEMFile(pki.path("server.pem")).map { .certificate($0) },
          privateKey: .privateKey(try NIOSSLPrivateKey(file: pki.path("server.key"), format: .pem))))
      : nil
    let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          if let context { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context)) }
          try channel.pipeline.syncOperations.configureHTTPServerPipeline()
          try channel.pipeline.syncOperations.addHandler(Handler(server: self))
        }
      }
      .bind(host: host, port: 0).wait()
    self.channel = channel
    port = channel.localAddress?.port ?? 0
  }

  func record(_ r: Received) {
    lock.lock()
    _received.append(r)
    lock.unlock()
  }

  func stop() { try? channel?.close().wait() }

  final class Handler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let server: TestHTTPSServer
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    init(server: TestHTTPSServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      switch unwrapInboundIn(data) {
      case .head(let h):
        head = h
        body = []
      case .body(let b): body += b.readableBytesView
      case .end:
        guard let h = head else { return }
        server.record(
          Received(method: h.method.rawValue, uri: h.uri, headers: h.headers.map { ($0.name, $0.value) }, body: body))
        let reply = ByteBuffer(string: "ok \(body.count)")
        var headers = HTTPHeaders()
        headers.add(name: "content-length", value: String(reply.readableBytes))
        headers.add(name: "x-upstream", value: "test")
        if h.headers.contains(name: "x-spoof-block") {
          // An upstream claiming to be the sidecar's refusal (any case).
          headers.add(name: "X-Palisade-Egress-Block", value: "destination")
          headers.add(name: "x-palisade-egress-event", value: "spoofed")
        }
        context.write(
          wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: .ok, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(reply))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
      }
    }
  }
}

/// A sidecar in this process with a local HTTPS destination, a temp bundle with random weights and a canary, and a
/// Unix datagram socket collecting its events.
final class Harness: @unchecked Sendable {
  let pki: TestPKI
  let upstream: TestHTTPSServer
  let directory: URL
  let weights: [UInt8]
  let bundleCanary = "bundle-canary-7f3e9a1c55d04b2e"
  let configuredCanary = "cfg-canary-91b2c3d4e5f60718"
  let events: EventSink
  var proxy: EgressProxy!
  var task: Task<Void, any Error>?

  /// `limits` and `admin` are extra `key: value` pairs for those maps.
  init(
    extraConfig: String = "", destinationExtras: String = "", canaryExtra: String? = nil, maxBody: Int = 1 << 20,
    limits: String = "", admin: String = ""
  ) async throws {
    pki = try TestPKI()
    upstream = try TestHTTPSServer(pki: pki)
    directory = FileManager.default.temporaryDirectory.appendingPathComponent("palisade-egress-\(UUID().uuidString)")
    let bundle = directory.appendingPathComponent("models/digits/1")
    try FileManager.default.createDirectory(at: bundle, withIntermediateDirectories: true)
    var generator = SystemRandomNumberGenerator()
    weights = (0..<65_536).map { _ in UInt8.random(in: 0...255, using: &generator) }
    try Data(weights).write(to: bundle.appendingPathComponent("model.onnx"))
    let manifest =
      #"{"schema": "palisade.bundle/v1", "name": "digits", "version": 1, "canary_tokens": ["\#(bundleCanary)"]}"#
    try Data(manifest.utf8).write(to: bundle.appendingPathComponent("manifest.json"))
    events = try EventSink(path: directory.appendingPathComponent("events.sock").path)
    let yaml = """
      listen: {host: 127.0.0.1, port: 0, unix_socket: \(directory.appendingPathComponent("proxy.sock").path)}
      admin: {host: 127.0.0.1, port: 0\(admin.isEmpty ? "" : ", " + admin)}
      tls: {ca_file: \(pki.path("server-ca.pem"))}
      limits: {max_body_bytes: \(maxBody)\(limits.isEmpty ? "" : ", " + limits)}
      destinations:
        - name: local
          host: localhost
          port: \(upstream.port)
          methods: [POST, PUT]
          path_prefixes: [/ingest/, /alerts]
          allow_private: true
      \(destinationExtras.replacingOccurrences(of: "UPSTREAM_PORT", with: String(upstream.port)))
      inspection:
        canary_tokens: [\(configuredCanary)\(canaryExtra.map { ", " + $0 } ?? "")]
        bundle_directories: [\(directory.appendingPathComponent("models").path)]
      report_socket: \(events.path)
      \(extraConfig.replacingOccurrences(of: "UPSTREAM_PORT", with: String(upstream.port)))
      """
    let config = try EgressConfig.parse(yaml)
    var logger = Logger(label: "egress-test")
    logger.logLevel = .warning
    proxy = try EgressProxy(config: config, logger: logger)
    let proxy = self.proxy!
    task = Task { try await proxy.run() }
    for _ in 0..<500 where proxy.bound.port == nil || proxy.adminBound.port == nil {
      try await Task.sleep(for: .milliseconds(10))
    }
  }

  var proxySocketPath: String { directory.appendingPathComponent("proxy.sock").path }
  var metricsText: String { String(decoding: proxy.metrics.render(), as: UTF8.self) }

  /// Polls the metrics for up to 15 s until `line` appears.
  func waitForMetric(_ line: String) async throws -> Bool {
    for _ in 0..<600 {
      if metricsText.contains(line) { return true }
      try await Task.sleep(for: .milliseconds(25))
    }
    return false
  }

  var proxyAddress: ProxyAddress { .tcp(host: "127.0.0.1", port: proxy.bound.port ?? 0) }
  var client: EgressClient { EgressClient(proxy: proxyAddress) }
  func url(_ path: String, host: String = "localhost", port: Int? = nil) -> String {
    "https://\(host):\(port ?? upstream.port)\(path)"
  }

  func send(_ url: String, method: String = "POST", headers: [(String, String)] = [], body: [UInt8] = []) async throws
    -> OutboundResponse
  {
    try await client.send(OutboundRequest(method: method, url: url, headers: headers, body: body))
  }

  func stop() async {
    task?.cancel()
    _ = try? await task?.value
    upstream.stop()
    events.close()
    try? FileManager.default.removeItem(at: directory)
  }
}

/// A Unix datagram socket that receives the sidecar's events.
final class EventSink: @unchecked Sendable {
  let path: String
  private let fd: Int32

  init(path: String) throws {
    self.path = path
    fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { dst in
      for (i, b) in path.utf8.enumerated() { dst[i] = b }
    }
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else { throw POSIXError(.EADDRINUSE) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
  }

  /// The next event (waits up to `timeoutSeconds`).
  func next(timeoutSeconds: Int = 5) -> EgressEvent? {
    var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var buffer = [UInt8](repeating: 0, count: 65_536)
    let n = recv(fd, &buffer, buffer.count, 0)
    guard n > 0 else { return nil }
    return try? JSONDecoder().decode(EgressEvent.self, from: Data(buffer[0..<n]))
  }

  func close() {
    _ = Glibc.close(fd)
    unlink(path)
  }
}

/// Sends one raw HTTP/1.1 request head to the proxy (for methods the client type does not send, e.g. CONNECT).
func rawRequest(port: Int, method: HTTPMethod, uri: String) async throws -> (Int, [(String, String)]) {
  let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
    .connect(host: "127.0.0.1", port: port) { channel in
      channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHTTPClientHandlers()
        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
      }
    }
  return try await channel.executeThenClose { inbound, outbound in
    var head = HTTPRequestHead(version: .http1_1, method: method, uri: uri)
    head.headers.add(name: "host", value: uri)
    try await outbound.write(.head(head))
    try await outbound.write(.end(nil))
    for try await part in inbound {
      if case .head(let h) = part { return (Int(h.status.code), h.headers.map { ($0.name, $0.value) }) }
    }
    return (0, [])
  }
}

/// The repository root (for the `palisade` binary).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().path
let palisadeBinary = ProcessInfo.processInfo.environment["PALISADE_BIN"] ?? "\(repositoryRoot)/.build/debug/palisade"

/// A plain blocking socket, for the slow, half-finished and surplus clients the proxy must not wait on forever.
final class RawSocket {
  let fd: Int32

  /// `receiveBuffer` (set before connecting, so that the window is small from the start) plays a client that reads
  /// little.
  init(tcpPort: Int, receiveBuffer: Int32? = nil) throws {
    fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    if var size = receiveBuffer {
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(clamping: tcpPort).bigEndian)
    addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    guard rc == 0 else {
      Glibc.close(fd)
      throw POSIXError(.ECONNREFUSED)
    }
  }

  init(unixPath: String) throws {
    fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { dst in
      for (i, b) in unixPath.utf8.enumerated() { dst[i] = b }
    }
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard rc == 0 else {
      Glibc.close(fd)
      throw POSIXError(.ECONNREFUSED)
    }
  }

  /// Sends all of `bytes`; false once the peer has closed (no SIGPIPE).
  @discardableResult
  func send(_ bytes: [UInt8]) -> Bool {
    var offset = 0
    while offset < bytes.count {
      let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      guard n > 0 else { return false }
      offset += n
    }
    return true
  }

  @discardableResult
  func send(_ text: String) -> Bool { send(Array(text.utf8)) }

  /// Sends what the socket takes now, without blocking (the rest is dropped).
  func sendWithoutWaiting(_ text: String) {
    _ = Array(text.utf8).withUnsafeBytes {
      Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
    }
  }

  /// Reads until the peer closes, or until nothing arrives for `timeoutSeconds` (a bound for a broken test, not a
  /// timing assertion): what arrived, and whether the peer closed.
  func readAll(timeoutSeconds: Int = 20) -> (data: [UInt8], closed: Bool) {
    var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = recv(fd, &buffer, buffer.count, 0)
      if n > 0 {
        out += buffer[0..<n]
      } else if n == 0 || errno == ECONNRESET {
        return (out, true)
      } else if errno != EINTR {
        return (out, false)
      }
    }
  }

  /// Whether the peer has closed, without waiting.
  var peerClosed: Bool {
    var byte: UInt8 = 0
    let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
    return n == 0 || (n < 0 && errno == ECONNRESET)
  }

  private var isOpen = true

  func close() {
    if isOpen { _ = Glibc.close(fd) }
    isOpen = false
  }

  deinit { close() }
}
