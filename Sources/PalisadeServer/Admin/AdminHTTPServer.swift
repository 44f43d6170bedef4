import NIOCore
import NIOHTTP1
import NIOPosix
import PalisadeSupport
public import Logging
public import ServiceLifecycle
public import PalisadeTransport

/// The admin endpoint, on its own port (loopback by default): `/healthz` (the process is up), `/readyz` (every
/// required model is loaded and the server is not draining) and `/metrics` (Prometheus text).
///
/// It serves no data and takes no input beyond the path, so it needs no TLS on loopback; operators who expose it
/// beyond loopback (Kubernetes probes on the pod IP) should restrict it with a NetworkPolicy.
///
/// Nobody authenticates here, so nobody may hold it: at most `maxConnections` are open at once
/// (`maxConnectionsPerAddress` from one source address), and a request
/// must arrive whole within `requestTimeout` of the connection opening or of the previous response (slowloris
/// and idle keep-alive connections are closed), and a connection whose answers sit unread in a full socket for
/// `requestTimeout` is closed too; refusals count in `palisade_admin_refusals_total{reason}`. `/metrics` is rendered
/// at most `metricsRendersPerSecond` times a second (``MetricsRenderBudget``), and the endpoint has a thread of its
/// own, so that its traffic cannot take the event loops or much CPU from inference.
public final class AdminHTTPServer: Service, Sendable {
  private let host: String
  private let port: Int
  private let limiter: ConnectionLimiter
  private let requestTimeout: Duration
  private let renders: MetricsRenderBudget
  private let state: ServingState
  private let metrics: ServerMetrics
  private let logger: Logger
  /// The bound address, once listening.
  public let bound = BoundAddress()

  public init(
    host: String, port: Int, state: ServingState, metrics: ServerMetrics, logger: Logger, maxConnections: Int = 64,
    maxConnectionsPerAddress: Int = 16, requestTimeout: Duration = .seconds(10), metricsRendersPerSecond: Int = 20
  ) {
    self.renders = MetricsRenderBudget(perSecond: metricsRendersPerSecond)
    self.limiter = ConnectionLimiter(
      maxTotal: max(1, maxConnections), maxPerAddress: max(1, min(maxConnectionsPerAddress, maxConnections)))
    self.requestTimeout = requestTimeout
    self.host = host
    self.port = port
    self.state = state
    self.metrics = metrics
    self.logger = logger
  }

  public func run() async throws {
    // Its own thread: nobody authenticates here, so a flood of `/metrics` renders must not queue behind (or in
    // front of) the inference connections on the shared event loops; the kernel shares the cores between them.
    try await MultiThreadedEventLoopGroup.withEventLoopGroup(numberOfThreads: 1) { try await serve(on: $0) }
  }

  private func serve(on group: MultiThreadedEventLoopGroup) async throws {
    let server = try await ServerBootstrap(group: group)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .bind(host: host, port: port) { [limiter, metrics, requestTimeout] channel in
        channel.eventLoop.makeCompletedFuture {
          let address = channel.remoteAddress?.ipAddress ?? "unknown"
          if let refusal = limiter.admit(address) {
            metrics.recordAdminRefusal(reason: refusal.rawValue)
            channel.close(promise: nil)
          } else {
            channel.closeFuture.whenComplete { _ in limiter.release(address) }
          }
          try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
          try channel.pipeline.syncOperations.addHandler(
            RequestDeadline(timeout: requestTimeout) { metrics.recordAdminRefusal(reason: $0) })
          return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
            wrappingChannelSynchronously: channel)
        }
      }
    if let address = server.channel.localAddress { bound.set(address) }
    logger.info("admin endpoint listening", metadata: ["listen": "\(host):\(server.channel.localAddress?.port ?? 0)"])
    // Nothing served here is worth waiting for: on shutdown, open keep-alive connections are cancelled too.
    do {
      try await cancelWhenGracefulShutdown {
        try await withThrowingDiscardingTaskGroup { group in
          try await server.executeThenClose { connections in
            for try await connection in connections {
              group.addTask { await self.serve(connection) }
            }
          }
        }
      }
    } catch is CancellationError {
      return
    }
  }

  private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
    try? await connection.executeThenClose { inbound, outbound in
      var head: HTTPRequestHead?
      for try await part in inbound {
        switch part {
        case .head(let h): head = h
        case .body: continue
        case .end:
          guard let h = head else { return }
          let (status, contentType, body) = respond(to: h)
          var headers = HTTPHeaders()
          headers.add(name: "content-type", value: contentType)
          headers.add(name: "content-length", value: String(body.count))
          headers.add(name: "cache-control", value: "no-store")
          try await outbound.write(.head(HTTPResponseHead(version: h.version, status: status, headers: headers)))
          if h.method != .HEAD { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
          try await outbound.write(.end(nil))
          if !h.isKeepAlive { return }
          head = nil
        }
      }
    }
  }

  func respond(to head: HTTPRequestHead) -> (HTTPResponseStatus, String, [UInt8]) {
    guard head.method == .GET || head.method == .HEAD else {
      return (.methodNotAllowed, "text/plain", Array("only GET and HEAD\n".utf8))
    }
    let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
    switch path {
    case "/healthz":
      return state.isDraining
        ? (.serviceUnavailable, "text/plain", Array("draining\n".utf8)) : (.ok, "text/plain", Array("ok\n".utf8))
    case "/readyz":
      if state.isReady { return (.ok, "text/plain", Array("ready\n".utf8)) }
      let missing = state.repository.missingRequired
      let why = state.isDraining ? "draining" : "waiting for models: \(missing.joined(separator: ", "))"
      return (.serviceUnavailable, "text/plain", Array("not ready: \(why)\n".utf8))
    case "/metrics":
      let (body, fresh) = renders.body(render: metrics.render)
      if !fresh { metrics.recordAdminMetricsCached() }
      return (.ok, "text/plain; version=0.0.4; charset=utf-8", body)
    default:
      return (.notFound, "text/plain", Array("not found\n".utf8))
    }
  }
}

/// Closes an HTTP/1 connection whose client is too slow, in either direction:
/// - its next request has not arrived in full within `timeout` of the connection opening or of the previous
///   response (a slow sender, slowloris, and an idle keep-alive connection alike): `request_timeout`;
/// - the socket has stayed full for `timeout` (more than NIO's high watermark waiting), so no answer is moving: a
///   client that pipelines requests and never reads would otherwise hold its slot for ever, since no request
///   deadline runs while an answer waits to be written: `write_stalled`.
final class RequestDeadline: ChannelDuplexHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias InboundOut = HTTPServerRequestPart
  typealias OutboundIn = HTTPServerResponsePart
  typealias OutboundOut = HTTPServerResponsePart

  private let timeout: Duration
  private let onClose: @Sendable (_ reason: String) -> Void
  private var requestTimer: Scheduled<Void>?
  private var stallTimer: Scheduled<Void>?

  /// `onClose` is told why the handler closed the connection (`request_timeout` or `write_stalled`).
  init(timeout: Duration, onClose: @escaping @Sendable (_ reason: String) -> Void) {
    self.timeout = timeout
    self.onClose = onClose
  }

  func handlerAdded(context: ChannelHandlerContext) {
    armRequestTimer(context: context)
    if context.channel.isActive, !context.channel.isWritable { armStallTimer(context: context) }
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    requestTimer?.cancel()
    stallTimer?.cancel()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    if case .end = unwrapInboundIn(data) {
      requestTimer?.cancel()
      requestTimer = nil
    }
    context.fireChannelRead(data)
  }

  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    if case .end = unwrapOutboundIn(data) { armRequestTimer(context: context) }
    context.write(data, promise: promise)
  }

  func channelWritabilityChanged(context: ChannelHandlerContext) {
    if context.channel.isWritable {
      stallTimer?.cancel()
      stallTimer = nil
    } else if stallTimer == nil {
      armStallTimer(context: context)
    }
    context.fireChannelWritabilityChanged()
  }

  private func armRequestTimer(context: ChannelHandlerContext) {
    requestTimer?.cancel()
    requestTimer = closeLater(context: context, reason: "request_timeout")
  }

  private func armStallTimer(context: ChannelHandlerContext) {
    stallTimer?.cancel()
    stallTimer = closeLater(context: context, reason: "write_stalled")
  }

  private func closeLater(context: ChannelHandlerContext, reason: String) -> Scheduled<Void> {
    let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
    let onClose = self.onClose
    return context.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
      onClose(reason)
      bound.value.close(promise: nil)
    }
  }
}
