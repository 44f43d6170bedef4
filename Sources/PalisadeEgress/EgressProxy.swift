public import Logging
public import NIOCore
import Foundation
import NIOHTTP1
import NIOPosix
import NIOSSL
import PalisadeSupport

/// The forward proxy. Clients send absolute-form HTTP/1.1 requests (`POST https://host/path HTTP/1.1`) in plain
/// HTTP to the proxy on loopback or a Unix socket; the proxy checks the allowlist, resolves the name itself and
/// refuses non-global addresses, buffers and inspects the whole request, and only then originates TLS to the
/// address it checked. CONNECT is refused unless a destination allows it (then relayed uninspected, and logged).
public final class EgressProxy: Sendable {
  public let config: EgressConfig
  let logger: Logger
  public let metrics: EgressMetrics
  let policy: EgressPolicy
  let inspector: Inspector
  let budgets = ByteBudgets()
  /// Request body bytes buffered across all connections.
  let inflight: InflightBudget
  let reporter: EventReporter
  let upstream: Upstream
  /// The bound proxy TCP address, once listening.
  public let bound = BoundAddress()
  /// The bound admin address, once listening.
  public let adminBound = BoundAddress()
  /// Fingerprint counts, for the startup log.
  public let summary: String

  /// Loads everything the policy needs (TLS context, bundle fingerprints); any failure here means the sidecar does
  /// not start, so nothing leaves.
  public init(config: EgressConfig, logger: Logger, metrics: EgressMetrics = EgressMetrics()) throws {
    self.config = config
    self.logger = logger
    self.metrics = metrics
    inflight = InflightBudget(limit: config.inflightBodyBudget, metrics: metrics)
    policy = EgressPolicy(destinations: config.destinations)
    let found = try BundleFingerprints.load(
      directories: config.inspection.bundleDirectories, settings: config.inspection.weights)
    var canaries = config.inspection.canaryTokens.enumerated().map { Canary($1, source: "configured #\($0 + 1)") }
    canaries += found.canaries
    inspector = Inspector(settings: config.inspection, canaries: canaries, weights: found.weights)
    metrics.setFingerprints(
      canaries: canaries.count, weightWindows: found.weights?.count ?? 0, bundles: found.bundles.count)
    summary =
      "\(config.destinations.count) destinations, \(canaries.count) canary tokens, \(found.bundles.count) bundles, "
      + "\(found.weights?.count ?? 0) weight windows"
      + (found.packed.isEmpty ? "" : "; \(found.packed.count) packed bundles NOT fingerprinted")
    if !found.packed.isEmpty {
      // Not refused (the proxy still guards everything else), but said loudly: these weights could leave.
      logger.warning(
        "packed bundles in inspection.bundle_directories are not read: their weights and canaries are not fingerprinted; point bundle_directories at unpacked bundles",
        metadata: ["packed": "\(found.packed.prefix(10).joined(separator: ", "))", "count": "\(found.packed.count)"])
    }
    var tls = TLSConfiguration.makeClientConfiguration()
    tls.minimumTLSVersion = .tlsv12
    tls.certificateVerification = .fullVerification
    if let ca = config.tls.caFile { tls.trustRoots = .file(ca) }
    if let cert = config.tls.clientCertificate, let key = config.tls.clientKey {
      tls.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
      tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
    }
    let context = try NIOSSLContext(configuration: tls)
    upstream = Upstream(
      tls: context, connectTimeout: .seconds(Int64(clamping: config.connectTimeoutSeconds)),
      timeout: .seconds(config.upstreamTimeoutSeconds), maxResponseBytes: config.maxResponseBytes)
    reporter = EventReporter(path: config.reportSocket, logger: logger)
  }

  /// Listens until cancelled.
  public func run() async throws {
    let group = MultiThreadedEventLoopGroup.singleton
    // One count for both proxy listeners; a connection over a cap is answered 503 and never served.
    let limiter = ConnectionLimiter(maxTotal: config.maxConnections, maxPerAddress: config.maxConnectionsPerAddress)
    let settings = ConnectionGuard.Settings(listener: "proxy", config: config)
    let metrics = self.metrics
    let initializer: @Sendable (any Channel) -> EventLoopFuture<Connection?> = { channel in
      channel.eventLoop.makeCompletedFuture {
        guard try ConnectionGuard.admit(channel, limiter: limiter, settings: settings, metrics: metrics) else {
          return nil
        }
        return try Connection(wrappingChannelSynchronously: channel)
      }
    }
    let tcp = try await ServerBootstrap(group: group)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
      .bind(host: config.listen.host, port: config.listen.port, childChannelInitializer: initializer)
    if let a = tcp.channel.localAddress { bound.set(a) }
    var listeners = [tcp]
    if let path = config.listen.unixSocket {
      let unix = try await ServerBootstrap(group: group)
        .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true, childChannelInitializer: initializer)
      listeners.append(unix)
    }
    logger.info(
      "egress proxy listening",
      metadata: [
        "listen": "\(config.listen.host):\(tcp.channel.localAddress?.port ?? 0)",
        "unix_socket": "\(config.listen.unixSocket ?? "-")", "policy": "\(summary)",
      ])
    let admin = config.admin.enabled ? EgressAdminServer(proxy: self) : nil
    try await withThrowingDiscardingTaskGroup { tasks in
      if let admin { tasks.addTask { try await admin.run() } }
      for (index, listener) in listeners.enumerated() {
        let via = index == 0 ? "tcp" : "unix"
        tasks.addTask {
          try await withThrowingDiscardingTaskGroup { connections in
            try await listener.executeThenClose { inbound in
              for try await connection in inbound {
                guard let connection else { continue }
                connections.addTask { await self.serve(connection, via: via) }
              }
            }
          }
        }
      }
    }
  }

  typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

  /// A request as received: head and the whole body.
  struct Request: Sendable {
    var head: HTTPRequestHead
    var body: ByteBuffer
    /// A request the sidecar makes itself (the alert webhook): inspected, but its refusal raises no new alert.
    var isAlert = false
  }

  /// The answer for the client.
  struct Reply: Sendable {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: ByteBuffer
    var closeAfter = false
  }

  private func serve(_ connection: Connection, via: String) async {
    do {
      try await connection.executeThenClose { inbound, outbound in
        var head: HTTPRequestHead?
        var body = ByteBuffer()
        var refused: Reply?
        // Body bytes of the current request charged to the in-flight budget; given back when it is answered.
        var charged = 0
        defer { self.inflight.release(charged) }
        for try await part in inbound {
          switch part {
          case .head(let h):
            head = h
            body.clear()
            refused = self.precheck(h)
          case .body(var b):
            guard refused == nil, let h = head else { continue }
            if body.readableBytes + b.readableBytes > self.config.maxBodyBytes {
              let reply = self.block(
                .bodyTooLarge, "body exceeds max_body_bytes", head: h, bodyBytes: body.readableBytes + b.readableBytes)
              try await self.write(reply, to: outbound, version: h.version, close: true)
              return
            }
            guard self.inflight.charge(b.readableBytes) else {
              self.metrics.connectionRefused(listener: "proxy", reason: "max_inflight_body_bytes")
              self.logger.warning(
                "request refused: the in-flight body budget is spent",
                metadata: ["limit": "\(self.inflight.limit)", "via": "\(via)"])
              try await self.write(Self.overloaded, to: outbound, version: h.version, close: true)
              return
            }
            charged += b.readableBytes
            body.writeBuffer(&b)
          case .end:
            guard let h = head else { return }
            if refused == nil, h.method == .CONNECT, let target = ProxyTarget(authority: h.uri),
              let destination = self.policy.connectDestination(target)
            {
              try await self.tunnel(
                connection.channel, head: h, target: target, destination: destination, outbound: outbound)
              return
            }
            let reply: Reply
            if let refused { reply = refused } else { reply = await self.handle(Request(head: h, body: body)) }
            let close = reply.closeAfter || !h.isKeepAlive
            try await self.write(reply, to: outbound, version: h.version, close: close)
            self.inflight.release(charged)
            charged = 0
            if close { return }
            head = nil
            refused = nil
          }
        }
      }
    } catch {
      logger.debug("client connection ended", metadata: ["error": "\(error)", "via": "\(via)"])
    }
  }

  /// A CONNECT tunnel to a destination that allows one: the address is resolved and checked as for any request,
  /// then bytes are relayed uninspected. Every tunnel is logged and counted.
  private func tunnel(
    _ client: any Channel, head: HTTPRequestHead, target: ProxyTarget, destination: EgressConfig.Destination,
    outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
  ) async throws {
    func refuse(_ reason: BlockReason, _ why: String) async throws {
      let reply = block(
        reason, why, head: head, target: target, destination: destination.name, bodyBytes: 0, close: true)
      try await write(reply, to: outbound, version: head.version, close: true)
    }
    let addresses: [SocketAddress]
    do {
      addresses = try await NIOThreadPool.singleton.runIfActive {
        try Resolver.resolve(host: target.host, port: target.port)
      }
    } catch {
      return try await refuse(.resolution, "\(error)")
    }
    for a in addresses {
      let cls = AddressClass.of(a)
      if cls == .metadata {
        return try await refuse(.metadataAddress, "\(target.host) resolves to a cloud metadata address")
      }
      if cls != .global && !destination.allowPrivate {
        return try await refuse(
          .address, "\(target.host) resolves to a \(cls.rawValue) address and allow_private is false")
      }
    }
    var upstreamChannel: (any Channel)?
    for address in addresses where upstreamChannel == nil {
      upstreamChannel = try? await ClientBootstrap(group: client.eventLoop)
        .connectTimeout(.seconds(Int64(clamping: config.connectTimeoutSeconds)))
        .connect(to: address).get()
    }
    guard let upstreamChannel else {
      metrics.upstreamError(destination: destination.name)
      var headers = HTTPHeaders()
      headers.add(name: "x-palisade-egress-error", value: "upstream")
      return try await write(
        Reply(status: .badGateway, headers: headers, body: ByteBuffer(string: "upstream unavailable\n")), to: outbound,
        version: head.version, close: true)
    }
    metrics.tunnel(destination: destination.name)
    logger.warning(
      "CONNECT tunnel opened: its bytes are not inspected",
      metadata: ["destination": "\(destination.name)", "host": "\(target.host)", "port": "\(target.port)"])
    // An explicit zero length keeps the encoder from choosing chunked framing, whose terminator would corrupt the
    // first bytes of the tunnel.
    try await outbound.write(
      .head(HTTPResponseHead(version: head.version, status: .ok, headers: ["content-length": "0"])))
    try await outbound.write(.end(nil))
    // From here on the connection carries raw bytes: the HTTP handlers leave, a relay takes their place at the
    // front of both pipelines (the async channel's handler behind it never sees a byte again).
    try await client.eventLoop.submit {
      let ops = client.pipeline.syncOperations
      if let h = try? ops.handler(type: HTTPResponseEncoder.self) { ops.removeHandler(h, promise: nil) }
      if let h = try? ops.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self) {
        ops.removeHandler(h, promise: nil)
      }
      if let h = try? ops.handler(type: HTTPServerPipelineHandler.self) { ops.removeHandler(h, promise: nil) }
      if let h = try? ops.handler(type: HTTPServerProtocolErrorHandler.self) { ops.removeHandler(h, promise: nil) }
      if let h = try? ops.handler(type: RequestTimeoutHandler.self) { ops.removeHandler(h, promise: nil) }
      let (a, b) = RelayHandler.pair()
      try ops.addHandler(a, position: .first)
      try upstreamChannel.pipeline.syncOperations.addHandler(b, position: .first)
    }.get()
    try? await upstreamChannel.closeFuture.get()
    try? await client.close()
  }

  private func write(
    _ reply: Reply, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, version: HTTPVersion,
    close: Bool
  ) async throws {
    var headers = reply.headers
    headers.replaceOrAdd(name: "content-length", value: String(reply.body.readableBytes))
    if close { headers.replaceOrAdd(name: "connection", value: "close") }
    try await outbound.write(.head(HTTPResponseHead(version: version, status: reply.status, headers: headers)))
    // In slices, so that a client that reads slowly shows progress to the idle timeout (and one that stops reading
    // is closed by it).
    var body = reply.body
    while body.readableBytes > 0, let slice = body.readSlice(length: min(body.readableBytes, 64 << 10)) {
      try await outbound.write(.body(.byteBuffer(slice)))
    }
    try await outbound.write(.end(nil))
  }

  /// The answer when the in-flight body budget is spent: not a policy decision, so the server's client retries.
  static let overloaded: Reply = {
    var headers = HTTPHeaders()
    headers.add(name: "content-type", value: "text/plain")
    headers.add(name: "x-palisade-egress-error", value: "overloaded")
    headers.add(name: "retry-after", value: "1")
    return Reply(
      status: .serviceUnavailable, headers: headers, body: ByteBuffer(string: "egress proxy overloaded, retry later\n"),
      closeAfter: true)
  }()

  /// Codings named in the refusal; any other value is "unrecognised" (a header value is the sender's text and does
  /// not go into logs and events).
  private static let knownCodings: Set<String> = [
    "gzip", "x-gzip", "deflate", "br", "compress", "x-compress", "zstd", "aes128gcm",
  ]

  /// The first content or transfer coding the inspector cannot read through, or nil. Only identity (and chunked
  /// framing, which NIO decodes) can be inspected: a compressed body would be opaque.
  static func opaqueCoding(_ head: HTTPRequestHead) -> String? {
    for (header, allowed) in [("content-encoding", ["identity"]), ("transfer-encoding", ["identity", "chunked"])] {
      for value in head.headers[header] {
        for token in value.split(separator: ",") {
          let coding = token.trimmingCharacters(in: .whitespaces).lowercased()
          if coding.isEmpty || allowed.contains(coding) { continue }
          let name = header == "content-encoding" ? "Content-Encoding" : "Transfer-Encoding"
          return "\(name) \(knownCodings.contains(coding) ? coding : "(unrecognised)")"
        }
      }
    }
    return nil
  }

  /// Checks that need only the head: CONNECT, head size, a declared length over the limit.
  private func precheck(_ head: HTTPRequestHead) -> Reply? {
    if head.method == .CONNECT {
      let target = ProxyTarget(authority: head.uri)
      if let target, policy.connectDestination(target) != nil { return nil }
      logger.warning(
        "CONNECT refused: a tunnel cannot be inspected",
        metadata: ["host": "\(target?.host ?? "-")", "port": "\(target?.port ?? 0)"])
      return block(
        .destination, "CONNECT tunnels are refused (uninspectable)", head: head, target: target, bodyBytes: 0,
        close: true)
    }
    let headBytes = head.uri.utf8.count + head.headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
    if headBytes > config.maxHeaderBytes {
      return block(.badRequest, "request head exceeds max_header_bytes", head: head, bodyBytes: 0, close: true)
    }
    if let declared = head.headers.first(name: "content-length").flatMap(Int.init), declared > config.maxBodyBytes {
      return block(.bodyTooLarge, "declared body exceeds max_body_bytes", head: head, bodyBytes: declared, close: true)
    }
    if let coding = Self.opaqueCoding(head) {
      return block(
        .contentEncoding, "\(coding) cannot be inspected; send the body uncompressed", head: head, bodyBytes: 0,
        close: true)
    }
    return nil
  }

  /// Decides, inspects and forwards one complete request.
  func handle(_ request: Request) async -> Reply {
    let head = request.head
    let method = head.method.rawValue
    guard let target = ProxyTarget(absoluteURI: head.uri) else {
      return block(
        .badRequest, "only absolute-form http(s) URIs are proxied", head: head, bodyBytes: request.body.readableBytes,
        isAlert: request.isAlert)
    }
    let destination: EgressConfig.Destination
    switch policy.decide(method: method, target: target) {
    case .deny(let reason, let why, let name):
      return block(
        reason, why, head: head, target: target, destination: name, bodyBytes: request.body.readableBytes,
        isAlert: request.isAlert)
    case .allow(let d):
      destination = d
    }
    func refuse(_ reason: BlockReason, _ why: String, location: String = "request") -> Reply {
      block(
        reason, why, head: head, target: target, destination: destination.name, bodyBytes: request.body.readableBytes,
        location: location, isAlert: request.isAlert)
    }
    // Inspect before anything reaches the network (resolution included: a name can carry data to a resolver).
    let forwardedHeaders = Self.forwardHeaders(head.headers, target: target, bodyBytes: request.body.readableBytes)
    let bodyBytes = Array(request.body.readableBytesView)
    let headerPairs = forwardedHeaders.map { ($0.name, $0.value) }
    if let finding = inspector.inspect(uri: head.uri, headers: headerPairs, body: bodyBytes) {
      return refuse(finding.reason, finding.detail, location: finding.location)
    }
    // Resolve once, check every address, connect to the checked one.
    let addresses: [SocketAddress]
    do {
      addresses = try await NIOThreadPool.singleton.runIfActive {
        try Resolver.resolve(host: target.host, port: target.port)
      }
    } catch {
      return refuse(.resolution, "\(error)")
    }
    for a in addresses {
      let cls = AddressClass.of(a)
      if cls == .metadata { return refuse(.metadataAddress, "\(target.host) resolves to a cloud metadata address") }
      if cls != .global && !destination.allowPrivate {
        return refuse(.address, "\(target.host) resolves to a \(cls.rawValue) address and allow_private is false")
      }
    }
    let requestBytes =
      head.uri.utf8.count + headerPairs.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 4 } + bodyBytes.count
    guard budgets.charge(destination, bytes: requestBytes) else {
      return refuse(.byteBudget, "byte budget of destination \(destination.name) is spent for this window")
    }
    var outHead = HTTPRequestHead(version: .http1_1, method: head.method, uri: target.path)
    outHead.headers = forwardedHeaders
    var lastError: (any Error)?
    for address in addresses {
      do {
        let response = try await upstream.exchange(
          address: address, target: target, useTLS: target.scheme == "https", head: outHead, body: request.body)
        metrics.allowed(
          destination: destination.name, requestBytes: requestBytes, responseBytes: response.body.readableBytes)
        logger.info(
          "egress allowed",
          metadata: [
            "destination": "\(destination.name)", "method": "\(method)", "status": "\(response.status.code)",
            "request_bytes": "\(requestBytes)", "address": "\(address.ipAddress ?? "-")",
          ])
        return Reply(status: response.status, headers: Self.responseHeaders(response.headers), body: response.body)
      } catch {
        lastError = error
      }
    }
    metrics.upstreamError(destination: destination.name)
    logger.warning(
      "upstream failed",
      metadata: ["destination": "\(destination.name)", "error": "\(lastError.map { "\($0)" } ?? "-")"])
    var headers = HTTPHeaders()
    headers.add(name: "content-type", value: "text/plain")
    headers.add(name: "x-palisade-egress-error", value: "upstream")
    return Reply(status: .badGateway, headers: headers, body: ByteBuffer(string: "upstream unavailable\n"))
  }

  /// Refuses a request: metric, log, event to the audit channel, alert. The reply names the reason only.
  func block(
    _ reason: BlockReason, _ detail: String, head: HTTPRequestHead, target: ProxyTarget? = nil,
    destination: String? = nil, bodyBytes: Int, location: String = "request", close: Bool = false, isAlert: Bool = false
  ) -> Reply {
    let target = target ?? ProxyTarget(absoluteURI: head.uri)
    let event = EgressEvent(
      reason: reason, location: location, detail: detail, destination: destination, method: head.method.rawValue,
      scheme: target?.scheme ?? "-", host: target?.host ?? "-", port: target?.port ?? 0, bodyBytes: bodyBytes)
    metrics.blocked(reason: reason, destination: destination)
    logger.warning(
      "egress blocked",
      metadata: [
        "reason": "\(reason.rawValue)", "detail": "\(detail)", "location": "\(location)",
        "destination": "\(destination ?? "unlisted")", "host": "\(event.host)", "method": "\(event.method)",
        "event_id": "\(event.id)", "alert": "\(isAlert)",
      ])
    // The alert's own refusal is logged and counted, never reported or alerted again (no loops).
    if !isAlert {
      if config.reportSocket != nil { metrics.report(delivered: reporter.report(event), channel: "socket") }
      if let hook = config.alertWebhook { sendAlert(event, to: hook) }
    }
    let status: HTTPResponseStatus =
      switch reason {
      case .bodyTooLarge: .payloadTooLarge
      case .contentEncoding: .unsupportedMediaType
      case .byteBudget: .tooManyRequests
      case .badRequest: .badRequest
      case .resolution: .badGateway
      default: .forbidden
      }
    var headers = HTTPHeaders()
    headers.add(name: "content-type", value: "text/plain")
    headers.add(name: "x-palisade-egress-block", value: reason.rawValue)
    headers.add(name: "x-palisade-egress-event", value: event.id)
    return Reply(
      status: status, headers: headers, body: ByteBuffer(string: "blocked by egress policy: \(reason.rawValue)\n"),
      closeAfter: close)
  }

  private func sendAlert(_ event: EgressEvent, to hook: String) {
    var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: hook)
    head.headers.add(name: "content-type", value: "application/json")
    let request = Request(head: head, body: ByteBuffer(bytes: event.jsonLine()), isAlert: true)
    Task {
      let reply = await self.handle(request)
      self.metrics.report(delivered: (200..<300).contains(reply.status.code), channel: "webhook")
    }
  }

  private static let hopByHop: Set<String> = [
    "connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "expect",
  ]

  /// The headers sent upstream: hop-by-hop and proxy headers removed, Host the destination name, a fixed length.
  static func forwardHeaders(_ headers: HTTPHeaders, target: ProxyTarget, bodyBytes: Int) -> HTTPHeaders {
    var named = Set<String>()
    for value in headers["connection"] {
      for token in value.split(separator: ",") { named.insert(token.trimmingCharacters(in: .whitespaces).lowercased()) }
    }
    var out = HTTPHeaders()
    out.add(name: "host", value: target.authority)
    for (name, value) in headers {
      let lower = name.lowercased()
      if hopByHop.contains(lower) || named.contains(lower) { continue }
      out.add(name: name, value: value)
    }
    out.add(name: "content-length", value: String(bodyBytes))
    out.add(name: "connection", value: "close")
    return out
  }

  /// The upstream's response headers as relayed: hop-by-hop headers removed, and the sidecar's own
  /// `x-palisade-egress-*` headers too, which only the sidecar may set. Relayed, an upstream's
  /// `x-palisade-egress-block` made the server's outbound client take a delivered request for a policy refusal
  /// (dropped from its queue, never retried, reported as blocked by egress policy).
  static func responseHeaders(_ headers: HTTPHeaders) -> HTTPHeaders {
    var out = HTTPHeaders()
    for (name, value) in headers {
      let lower = name.lowercased()
      if hopByHop.contains(lower) || lower.hasPrefix("x-palisade-egress-") { continue }
      out.add(name: name, value: value)
    }
    return out
  }
}

/// A socket address set once a listener is bound (tests bind port 0).
public final class BoundAddress: @unchecked Sendable {
  private let lock = NSLock()
  private var value: SocketAddress?
  public init() {}
  func set(_ a: SocketAddress) {
    lock.lock()
    value = a
    lock.unlock()
  }
  public var address: SocketAddress? {
    lock.lock()
    defer { lock.unlock() }
    return value
  }
  public var port: Int? { address?.port }
}

/// Relays raw bytes between two channels on the same event loop (a CONNECT tunnel); closing either closes both.
final class RelayHandler: ChannelDuplexHandler, @unchecked Sendable {
  typealias InboundIn = ByteBuffer
  typealias OutboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer
  private var partner: RelayHandler?
  private var context: ChannelHandlerContext?

  static func pair() -> (RelayHandler, RelayHandler) {
    let a = RelayHandler()
    let b = RelayHandler()
    a.partner = b
    b.partner = a
    return (a, b)
  }

  func handlerAdded(context: ChannelHandlerContext) { self.context = context }
  func handlerRemoved(context: ChannelHandlerContext) {
    self.context = nil
    partner = nil
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    partner?.context?.write(NIOAny(unwrapInboundIn(data)), promise: nil)
  }

  func channelReadComplete(context: ChannelHandlerContext) { partner?.context?.flush() }

  func channelInactive(context: ChannelHandlerContext) {
    partner?.context?.close(promise: nil)
    context.fireChannelInactive()
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}
