import NIOCore
import NIOHTTP2
import NIOSSL
import NIOTLS

/// Closes a TCP connection whose TLS handshake does not finish in time, and one that did not negotiate `h2`.
///
/// Until the handshake completes the peer is anonymous: without this, a socket that never sends a ClientHello
/// would hold a file descriptor and a connection slot for ever.
final class HandshakeGuard: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = NIOAny

  private let timeout: Duration
  private let observer: any TransportObserver
  private var timer: Scheduled<Void>?
  private var done = false

  init(timeout: Duration, observer: any TransportObserver) {
    self.timeout = timeout
    self.observer = observer
  }

  func handlerAdded(context: ChannelHandlerContext) {
    if context.channel.isActive { arm(context: context) }
  }

  func channelActive(context: ChannelHandlerContext) {
    arm(context: context)
    context.fireChannelActive()
  }

  private func arm(context: ChannelHandlerContext) {
    guard timer == nil, !done else { return }
    let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
    timer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout.totalNanoseconds))) {
      let (handler, context) = bound.value
      guard !handler.done else { return }
      handler.done = true
      handler.observer.transportRefused(reason: "handshake_timeout")
      context.close(promise: nil)
    }
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event {
      done = true
      timer?.cancel()
      guard negotiated == "h2" else {
        observer.transportRefused(reason: "bad_request")
        context.close(promise: nil)
        return
      }
      context.fireUserInboundEventTriggered(event)
      context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
      return
    }
    context.fireUserInboundEventTriggered(event)
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    if !done {
      done = true
      timer?.cancel()
      observer.transportRefused(reason: "handshake_failed")
      context.close(promise: nil)
      return
    }
    context.fireErrorCaught(error)
  }

  func channelInactive(context: ChannelHandlerContext) {
    timer?.cancel()
    context.fireChannelInactive()
  }
}

/// Connection lifetime on the HTTP/2 side: maximum age and idle time (GOAWAY, then a grace period for calls in
/// flight), server keepalive pings, and graceful shutdown. Sits after `NIOHTTP2Handler` in the connection's
/// pipeline and learns of streams through ``StreamTracker``.
///
/// It also ends abusive connections (``TransportConfiguration/Protections``): NIOHTTP2's flood guards raise
/// their errors here (NIOHTTP2 has already sent GOAWAY(ENHANCE_YOUR_CALM)); the stream handlers report response
/// bytes pending towards the peer (a peer that does not read is cut off after a stall timeout or a byte cap) and
/// oversized header blocks (HPACK bombs). Each is counted by reason and the connection closed.
final class ConnectionManager: ChannelDuplexHandler {
  typealias InboundIn = HTTP2Frame
  typealias InboundOut = HTTP2Frame
  typealias OutboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  private let config: TransportConfiguration.Connections
  private var context: ChannelHandlerContext?
  private var openStreams = 0
  private var lastStreamID = HTTP2StreamID(0)
  private var closing = false
  private var ageTimer: Scheduled<Void>?
  private var idleTimer: Scheduled<Void>?
  private var graceTimer: Scheduled<Void>?
  private var keepaliveTimer: Scheduled<Void>?
  private var keepaliveTimeoutTimer: Scheduled<Void>?
  private static let pingData = HTTP2PingData(withInteger: 0x5041_4C49_5341_4445)  // "PALISADE"

  private let protections: TransportConfiguration.Protections
  private let observer: any TransportObserver
  private var aborted = false
  private var outboundPending = 0
  private var lastOutboundProgress = NIODeadline.distantPast
  private var stallTimer: Scheduled<Void>?
  /// Armed while the channel is unwritable (more than NIO's high watermark of bytes waiting for the socket).
  private var socketStallTimer: Scheduled<Void>?
  private var lastSocketWritable = NIODeadline.distantPast
  /// The event loop's clock (virtual under `EmbeddedEventLoop`, so that tests can move it).
  private var now: NIODeadline { context?.eventLoop.now ?? .now() }
  private var oversizedHeaderBlocks = 0

  init(
    config: TransportConfiguration.Connections, protections: TransportConfiguration.Protections = .defaults,
    observer: any TransportObserver = NoTransportObserver()
  ) {
    self.config = config
    self.protections = protections
    self.observer = observer
  }

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
    if let maxAge = config.maxAge {
      let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
      ageTimer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(maxAge.totalNanoseconds))) {
        bound.value.beginClosing()
      }
    }
    armIdle()
    armKeepalive()
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    for timer in [ageTimer, idleTimer, graceTimer, keepaliveTimer, keepaliveTimeoutTimer, stallTimer, socketStallTimer]
    {
      timer?.cancel()
    }
    self.context = nil
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    guard let reason = Self.abuseReason(error) else {
      context.fireErrorCaught(error)
      return
    }
    // NIOHTTP2 has already written its GOAWAY (ENHANCE_YOUR_CALM for the flood guards) but leaves the
    // connection open: close it. A stream beyond MAX_CONCURRENT_STREAMS gets GOAWAY(PROTOCOL_ERROR) from NIOHTTP2
    // (it is a protocol violation); say ENHANCE_YOUR_CALM as well, as for every abuse.
    closeForAbuse(reason: reason, sendGoAway: reason == "max_concurrent_streams")
  }

  /// The metric reason for a connection error NIOHTTP2 raised after sending GOAWAY; nil for everything else
  /// (stream errors, which end one stream only, pass on).
  static func abuseReason(_ error: any Error) -> String? {
    switch error {
    case is NIOHTTP2Errors.ExcessiveRSTFrames: return "rapid_reset"
    case is NIOHTTP2Errors.ExcessiveStreamErrors: return "stream_errors"
    case is NIOHTTP2Errors.ExcessiveNumberOfGlitches: return "glitches"
    case is NIOHTTP2Errors.ExcessiveControlFrames: return "control_frame_flood"
    case is NIOHTTP2Errors.ExcessiveContinuationFrames: return "continuation_flood"
    case is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering: return "outbound_control_frames"
    case is NIOHTTP2Errors.ExcessiveEmptyDataFrames: return "empty_data_flood"
    case is NIOHTTP2Errors.ExcessivelyLargeHeaderBlock: return "header_block_too_large"
    case is NIOHTTP2Errors.MaxStreamsViolation: return "max_concurrent_streams"
    case is NIOHTTP2Errors.UnableToParseFrame, is NIOHTTP2Errors.BadClientMagic: return "protocol_error"
    default: return nil
    }
  }

  /// Closed for abuse: a stream taken up before the close whose headers are read after it is refused without new
  /// work (swift-nio-http2 drops the streams above the GOAWAY's last stream ID itself).
  var isClosingForAbuse: Bool { aborted }

  /// Counts `reason`, sends GOAWAY(ENHANCE_YOUR_CALM) unless NIOHTTP2 already sent one, stops reading and closes
  /// the connection shortly after: closing at once, with the flood still unread in the socket, would reset the
  /// connection and the peer might never see the GOAWAY.
  func closeForAbuse(reason: String, sendGoAway: Bool) {
    guard let context, !aborted else { return }
    aborted = true
    closing = true
    observer.transportRefused(reason: reason)
    for timer in [idleTimer, keepaliveTimer, keepaliveTimeoutTimer, stallTimer, socketStallTimer, graceTimer] {
      timer?.cancel()
    }
    if sendGoAway {
      context.writeAndFlush(
        wrapOutboundOut(
          HTTP2Frame(
            streamID: .rootStream,
            payload: .goAway(lastStreamID: lastStreamID, errorCode: .enhanceYourCalm, opaqueData: nil))),
        promise: nil)
    }
    context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
    let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
    graceTimer = context.eventLoop.scheduleTask(in: .milliseconds(100)) { bound.value.close(promise: nil) }
  }

  // MARK: Peers that do not read

  /// A stream wrote `bytes` of response DATA; `done` completes when they have gone to the socket (HTTP/2 flow
  /// control holds them until the peer opens its window; the socket, until the peer reads).
  func outboundWritten(_ bytes: Int, done: EventLoopFuture<Void>) {
    guard let context, !aborted else { return }
    outboundPending += bytes
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    done.whenComplete { _ in bound.value.outboundDone(bytes) }
    // One response larger than the cap, alone, is let through: the cap is for responses piling up.
    if outboundPending > protections.maxOutboundBytesPerConnection, outboundPending > bytes {
      closeForAbuse(reason: "outbound_buffer", sendGoAway: true)
      return
    }
    if stallTimer == nil {
      lastOutboundProgress = now
      armStall(after: .nanoseconds(protections.writeStallTimeout.totalNanoseconds))
    }
  }

  private func outboundDone(_ bytes: Int) {
    outboundPending -= bytes
    lastOutboundProgress = now
    if outboundPending <= 0 {
      outboundPending = 0
      stallTimer?.cancel()
      stallTimer = nil
    }
  }

  private func armStall(after delay: TimeAmount) {
    stallTimer = schedule(after: delay) { $0.checkStall() }
  }

  private func checkStall() {
    stallTimer = nil
    guard outboundPending > 0, !aborted else { return }
    if let left = closeIfStalled(since: lastOutboundProgress) { armStall(after: left) }
  }

  /// Closes the connection (`write_stalled`) when nothing has moved since `since` for the stall timeout; otherwise
  /// returns how long until it would have.
  private func closeIfStalled(since: NIODeadline) -> TimeAmount? {
    let limit = TimeAmount.nanoseconds(protections.writeStallTimeout.totalNanoseconds)
    let waited = now - since
    guard waited < limit else {
      closeForAbuse(reason: "write_stalled", sendGoAway: true)
      return nil
    }
    return limit - waited
  }

  private func schedule(after delay: TimeAmount, _ check: @escaping @Sendable (ConnectionManager) -> Void)
    -> Scheduled<Void>?
  {
    guard let context else { return nil }
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    return context.eventLoop.scheduleTask(in: delay) { check(bound.value) }
  }

  /// The socket stopped taking bytes (the channel is unwritable) or took them again. Response DATA is watched per
  /// stream (``outboundWritten(_:done:)``); this covers every other byte: trailers-only answers (errors), headers,
  /// control frames. A peer that never reads the socket and gets only trailers-only answers (no token, say) would
  /// otherwise hold its connection, and what is queued for it, for as long as it sends a frame now and then.
  /// A slow reader is not cut off: response DATA reaching the socket within the timeout counts as progress.
  func channelWritabilityChanged(context: ChannelHandlerContext) {
    if context.channel.isWritable {
      socketStallTimer?.cancel()
      socketStallTimer = nil
    } else if socketStallTimer == nil, !aborted {
      lastSocketWritable = now
      armSocketStall(after: .nanoseconds(protections.writeStallTimeout.totalNanoseconds))
    }
    context.fireChannelWritabilityChanged()
  }

  private func armSocketStall(after delay: TimeAmount) {
    socketStallTimer = schedule(after: delay) { $0.checkSocketStall() }
  }

  private func checkSocketStall() {
    socketStallTimer = nil
    guard let context, !context.channel.isWritable, !aborted else { return }
    if let left = closeIfStalled(since: max(lastSocketWritable, lastOutboundProgress)) { armSocketStall(after: left) }
  }

  /// A stream refused a header block over the size limit; too many on one connection close it.
  func oversizedHeaderBlock() {
    oversizedHeaderBlocks += 1
    if oversizedHeaderBlocks > protections.maxOversizedHeaderBlocks {
      closeForAbuse(reason: "header_list_abuse", sendGoAway: true)
    }
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = unwrapInboundIn(data)
    if case .ping(let data, ack: true) = frame.payload, data == Self.pingData {
      keepaliveTimeoutTimer?.cancel()
      keepaliveTimeoutTimer = nil
    }
    armKeepalive()
    context.fireChannelRead(data)
  }

  // Called by StreamTracker, on the event loop.
  func streamCreated(_ id: HTTP2StreamID) {
    openStreams += 1
    if id > lastStreamID { lastStreamID = id }
    idleTimer?.cancel()
    idleTimer = nil
  }

  func streamClosed(_ id: HTTP2StreamID) {
    openStreams -= 1
    if openStreams == 0 {
      if closing {
        closeAfterWrites()
      } else {
        armIdle()
      }
    }
  }

  private func armIdle() {
    guard let maxIdle = config.maxIdle, let context, openStreams == 0, !closing else { return }
    idleTimer?.cancel()
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    idleTimer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(maxIdle.totalNanoseconds))) {
      bound.value.observer.transportRefused(reason: "idle_timeout")
      bound.value.beginClosing()
    }
  }

  private func armKeepalive() {
    guard let time = config.keepaliveTime, let context, !closing else { return }
    keepaliveTimer?.cancel()
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    keepaliveTimer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(time.totalNanoseconds))) {
      bound.value.ping()
    }
  }

  private func ping() {
    guard let context, !closing, keepaliveTimeoutTimer == nil else { return }
    context.writeAndFlush(
      wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .ping(Self.pingData, ack: false))), promise: nil)
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    keepaliveTimeoutTimer = context.eventLoop.scheduleTask(
      in: .nanoseconds(Int64(config.keepaliveTimeout.totalNanoseconds))
    ) {
      // Also the end of a slowloris: bytes that never make a whole frame do not count as activity. A connection
      // already closing (idle, age) was counted for that.
      if !bound.value.closing { bound.value.observer.transportRefused(reason: "keepalive_timeout") }
      bound.value.context?.close(promise: nil)
    }
  }

  /// Closes once everything written so far has reached the socket: the last stream's response frames are queued
  /// ahead of this final GOAWAY, so closing on its completion drops none of them.
  private func closeAfterWrites() {
    guard let context else { return }
    let promise = context.eventLoop.makePromise(of: Void.self)
    context.writeAndFlush(
      wrapOutboundOut(
        HTTP2Frame(
          streamID: .rootStream, payload: .goAway(lastStreamID: lastStreamID, errorCode: .noError, opaqueData: nil))),
      promise: promise)
    let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
    promise.futureResult.whenComplete { _ in bound.value.close(promise: nil) }
  }

  /// GOAWAY: no new streams; the connection closes when the open ones finish, or after the grace period.
  func beginClosing() {
    guard let context, !closing else { return }
    closing = true
    idleTimer?.cancel()
    keepaliveTimer?.cancel()
    context.writeAndFlush(
      wrapOutboundOut(
        HTTP2Frame(
          streamID: .rootStream, payload: .goAway(lastStreamID: lastStreamID, errorCode: .noError, opaqueData: nil))),
      promise: nil)
    if openStreams == 0 {
      closeAfterWrites()
      return
    }
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    graceTimer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(config.maxGrace.totalNanoseconds))) {
      bound.value.context?.close(promise: nil)
    }
  }
}

/// Forwards `NIOHTTP2Handler`'s stream events to the connection's ``ConnectionManager`` (always on its loop).
struct StreamTracker: NIOHTTP2StreamDelegate {
  let manager: NIOLoopBound<ConnectionManager>

  func streamCreated(_ id: HTTP2StreamID, channel: any Channel) {
    manager.value.streamCreated(id)
  }

  func streamClosed(_ id: HTTP2StreamID, channel: any Channel) {
    manager.value.streamClosed(id)
  }
}

/// Coalesces flushes that arrive in the same event-loop tick into one.
///
/// Every response ends with a flush; under load many responses on one connection complete within a tick, and
/// each flush costs TLS record sealing and a `write` system call. Placed between TLS and HTTP/2, this handler
/// passes writes on at once and turns a flush into one flush at the end of the current tick.
final class FlushCoalescer: ChannelOutboundHandler {
  typealias OutboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer

  private var flushPending = false

  func flush(context: ChannelHandlerContext) {
    guard !flushPending else { return }
    flushPending = true
    let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
    context.eventLoop.execute {
      let (handler, context) = bound.value
      handler.flushPending = false
      context.flush()
    }
  }

  func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
    // Whatever was written goes out before the connection closes.
    if flushPending {
      flushPending = false
      context.flush()
    }
    context.close(mode: mode, promise: promise)
  }
}
