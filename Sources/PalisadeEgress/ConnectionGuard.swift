import NIOCore
import NIOHTTP1
import Synchronization

/// Limits on the sidecar's HTTP listeners (the proxy and the admin endpoint), against slowloris and connection
/// floods: a connection cap in total and per source address, checked at accept; a header, request and idle timeout
/// on every connection. Every refusal is counted in `palisade_egress_connections_refused_total{listener,reason}`.
enum ConnectionGuard {
  struct Settings: Sendable {
    /// `proxy` or `admin` (a metric label).
    var listener: String
    var headerTimeout: TimeAmount
    var requestTimeout: TimeAmount
    var idleTimeout: TimeAmount

    init(listener: String, config: EgressConfig) {
      self.listener = listener
      headerTimeout = .seconds(Int64(clamping: config.headerTimeoutSeconds))
      requestTimeout = .seconds(Int64(clamping: config.requestTimeoutSeconds))
      idleTimeout = .seconds(Int64(clamping: config.idleTimeoutSeconds))
    }
  }

  /// Sets up a freshly accepted connection (in the child channel initializer, before it is active). Over a cap, it
  /// gets a 503 and is closed, and this returns false; otherwise it is counted until it closes, and the HTTP
  /// handlers and the timeouts are installed.
  static func admit(
    _ channel: any Channel, limiter: ConnectionLimiter, settings: Settings, metrics: EgressMetrics
  ) throws -> Bool {
    let key = ConnectionLimiter.key(for: channel.remoteAddress)
    if let refusal = limiter.acquire(key) {
      metrics.connectionRefused(listener: settings.listener, reason: refusal.rawValue)
      try channel.pipeline.syncOperations.addHandler(RefuseConnectionHandler())
      return false
    }
    do {
      try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
      try channel.pipeline.syncOperations.addHandler(RequestTimeoutHandler(settings: settings, metrics: metrics))
    } catch {
      limiter.release(key)
      throw error
    }
    metrics.setOpenConnections(listener: settings.listener, limiter.open)
    channel.closeFuture.whenComplete { _ in
      limiter.release(key)
      metrics.setOpenConnections(listener: settings.listener, limiter.open)
    }
    return true
  }
}

/// Open connections in total and per source address.
final class ConnectionLimiter: Sendable {
  enum Refusal: String {
    case total = "max_connections"
    case perAddress = "max_connections_per_address"
  }

  let maxTotal: Int
  let maxPerAddress: Int
  private let state = Mutex<(total: Int, perAddress: [String: Int])>((0, [:]))

  init(maxTotal: Int, maxPerAddress: Int) {
    self.maxTotal = maxTotal
    self.maxPerAddress = maxPerAddress
  }

  /// The source a connection is counted under: its IP address; every Unix socket client is one source.
  static func key(for address: SocketAddress?) -> String {
    switch address {
    case .v4, .v6: address?.ipAddress ?? "unknown"
    case .unixDomainSocket: "unix"
    case nil: "unknown"
    }
  }

  /// Counts a connection from `key`, or says which cap refuses it.
  func acquire(_ key: String) -> Refusal? {
    state.withLock { s in
      if s.total >= maxTotal { return .total }
      let mine = s.perAddress[key, default: 0]
      if mine >= maxPerAddress { return .perAddress }
      s.total += 1
      s.perAddress[key] = mine + 1
      return nil
    }
  }

  func release(_ key: String) {
    state.withLock { s in
      s.total = max(0, s.total - 1)
      let left = s.perAddress[key, default: 1] - 1
      s.perAddress[key] = left > 0 ? left : nil
    }
  }

  var open: Int { state.withLock { $0.total } }
}

/// Answers a connection over a cap with a fixed 503 and closes it; reads nothing.
final class RefuseConnectionHandler: ChannelInboundHandler, Sendable {
  typealias InboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer

  private static let reply =
    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\n"
    + "x-palisade-egress-error: too_many_connections\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n"

  func channelActive(context: ChannelHandlerContext) {
    let buffer = context.channel.allocator.buffer(string: Self.reply)
    context.writeAndFlush(wrapOutboundOut(buffer)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    context.fireChannelActive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// Closes a connection whose client is too slow: the request head must be whole within `headerTimeout` of the
/// connection opening (or of the previous response being written), the whole request within `requestTimeout`, and
/// while a request is read or a response written there must be progress every `idleTimeout`. No timer runs while the
/// proxy itself works on a request (inspection, upstream): the upstream timeout covers that. Whatever the phase, a
/// socket that stays full for `idleTimeout` (NIO's high watermark exceeded: the client reads nothing) closes the
/// connection as `write_stalled`: a client that pipelines requests and never reads leaves the next answer waiting
/// before its head reaches this handler, in the phase where no other timer runs.
///
/// Sits after the HTTP decoder, so a half-sent request line is simply "no head yet".
final class RequestTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias InboundOut = HTTPServerRequestPart
  typealias OutboundIn = HTTPServerResponsePart
  typealias OutboundOut = HTTPServerResponsePart

  private enum Phase { case notStarted, awaitingHead, readingBody, processing, responding, done }

  private let settings: ConnectionGuard.Settings
  private let metrics: EgressMetrics
  private var phase = Phase.notStarted
  private var headerDeadline: NIODeadline?
  private var requestDeadline: NIODeadline?
  private var idleDeadline: NIODeadline?
  private var stallDeadline: NIODeadline?
  private var timer: Scheduled<Void>?
  private var timerDeadline: NIODeadline?

  init(settings: ConnectionGuard.Settings, metrics: EgressMetrics) {
    self.settings = settings
    self.metrics = metrics
  }

  func handlerAdded(context: ChannelHandlerContext) {
    if context.channel.isActive { awaitRequest(context: context) }
  }

  func handlerRemoved(context: ChannelHandlerContext) { stop() }

  func channelActive(context: ChannelHandlerContext) {
    if phase == .notStarted { awaitRequest(context: context) }
    context.fireChannelActive()
  }

  func channelInactive(context: ChannelHandlerContext) {
    stop()
    context.fireChannelInactive()
  }

  func channelWritabilityChanged(context: ChannelHandlerContext) {
    if phase != .done {
      if context.channel.isWritable {
        stallDeadline = nil
      } else if stallDeadline == nil {
        stallDeadline = .now() + settings.idleTimeout
      }
      reschedule(context: context)
    }
    context.fireChannelWritabilityChanged()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let now = NIODeadline.now()
    switch unwrapInboundIn(data) {
    case .head:
      headerDeadline = nil
      idleDeadline = now + settings.idleTimeout
      if phase != .done { phase = .readingBody }
    case .body:
      idleDeadline = now + settings.idleTimeout
    case .end:
      if phase != .done { phase = .processing }
      headerDeadline = nil
      requestDeadline = nil
      idleDeadline = nil
    }
    reschedule(context: context)
    context.fireChannelRead(data)
  }

  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    let isEnd: Bool
    switch unwrapOutboundIn(data) {
    case .head:
      isEnd = false
      if phase != .done {
        phase = .responding
        idleDeadline = .now() + settings.idleTimeout
        reschedule(context: context)
      }
    case .body: isEnd = false
    case .end: isEnd = true
    }
    // Each completed write is progress; the end of a response starts the wait for the next request.
    let written = promise ?? context.eventLoop.makePromise()
    written.futureResult.assumeIsolated().whenSuccess {
      guard self.phase == .responding else { return }
      if isEnd {
        self.awaitRequest(context: context)
      } else {
        self.idleDeadline = .now() + self.settings.idleTimeout
        self.reschedule(context: context)
      }
    }
    context.write(data, promise: written)
  }

  private func awaitRequest(context: ChannelHandlerContext) {
    guard phase != .done else { return }
    phase = .awaitingHead
    let now = NIODeadline.now()
    headerDeadline = now + settings.headerTimeout
    requestDeadline = now + settings.requestTimeout
    idleDeadline = now + settings.idleTimeout
    reschedule(context: context)
  }

  /// One timer at the earliest deadline; a deadline that moved later is found when the timer fires, so progress
  /// costs no rescheduling.
  private func reschedule(context: ChannelHandlerContext) {
    let earliest = [headerDeadline, requestDeadline, idleDeadline, stallDeadline].compactMap { $0 }.min()
    guard let earliest, phase != .done else {
      timer?.cancel()
      timer = nil
      timerDeadline = nil
      return
    }
    if let current = timerDeadline, current <= earliest { return }
    timer?.cancel()
    timerDeadline = earliest
    timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: earliest) { self.expire(context: context) }
  }

  private func expire(context: ChannelHandlerContext) {
    timer = nil
    timerDeadline = nil
    guard phase != .done else { return }
    let now = NIODeadline.now()
    let reason: String? =
      if let d = headerDeadline, d <= now {
        "header_timeout"
      } else if let d = requestDeadline, d <= now {
        "request_timeout"
      } else if let d = idleDeadline, d <= now {
        // No progress while the socket is full is the client not reading: named for that whichever of the two
        // timers (both `idleTimeout` long) fired first, which under load was a race.
        context.channel.isWritable ? "idle_timeout" : "write_stalled"
      } else if let d = stallDeadline, d <= now {
        "write_stalled"
      } else {
        nil
      }
    guard let reason else { return reschedule(context: context) }
    stop()
    metrics.connectionRefused(listener: settings.listener, reason: reason)
    context.close(promise: nil)
  }

  private func stop() {
    phase = .done
    headerDeadline = nil
    requestDeadline = nil
    idleDeadline = nil
    stallDeadline = nil
    timer?.cancel()
    timer = nil
    timerDeadline = nil
  }
}

/// Request body bytes buffered across all proxy connections. A body that would pass the budget is refused (503) so
/// that many slow uploads cannot grow the sidecar's memory without bound.
final class InflightBudget: Sendable {
  let limit: Int
  private let used = Mutex<Int>(0)
  private let metrics: EgressMetrics

  init(limit: Int, metrics: EgressMetrics) {
    self.limit = limit
    self.metrics = metrics
  }

  /// Charges `bytes` if the budget allows; false (nothing charged) otherwise.
  func charge(_ bytes: Int) -> Bool {
    used.withLock { u in
      guard bytes >= 0, bytes <= limit - u else { return false }
      u += bytes
      metrics.setInflightBodyBytes(u)
      return true
    }
  }

  func release(_ bytes: Int) {
    used.withLock { u in
      u = max(0, u - bytes)
      metrics.setInflightBodyBytes(u)
    }
  }

  var current: Int { used.withLock { $0 } }
}
