public import GRPCNIOTransportHTTP2
public import NIOCore
import NIOHTTP2
import NIOHPACK
public import NIOPosix
import NIOSSL
public import PalisadeIdentity
import Synchronization
import X509
public import Logging

/// Where the listener gets its own certificate and key.
public struct ServerCredentials: Sendable {
  /// PEM file with the server certificate, followed by any intermediates.
  public var certificateChainPath: String
  /// PEM file with the server's private key (must not be readable by group or others).
  public var privateKeyPath: String

  public init(certificateChainPath: String, privateKeyPath: String) {
    self.certificateChainPath = certificateChainPath
    self.privateKeyPath = privateKeyPath
  }
}

/// Creates the gRPC server's listening socket: TLS 1.3 only, a client certificate required and verified by
/// ``ClientCertificateVerifier``, and the caller's identity bound once per connection in ``ConnectionRegistry``.
///
/// grpc-swift-nio-transport's Posix transport fixes the minimum TLS version at 1.2 and re-parses the peer
/// certificate on every call, so Palisade supplies its own listener to `HTTP2ServerTransport.Custom`.
public struct MTLSListenerFactory: HTTP2ServerTransport.ListenerFactory {
  public let eventLoopGroup: any EventLoopGroup
  private let host: String
  private let port: Int
  private let sslContext: NIOSSLContext
  private let verifier: ClientCertificateVerifier
  private let registry: ConnectionRegistry
  private let logger: Logger
  private let bound: BoundAddress

  /// The address the listener bound, once it has (port 0 asks the OS for a free port).
  public final class BoundAddress: Sendable {
    private let state = Mutex<(NIOCore.SocketAddress?, [CheckedContinuation<NIOCore.SocketAddress, Never>])>((nil, []))
    public init() {}
    public func set(_ address: NIOCore.SocketAddress) {
      let waiters = state.withLock { s in
        s.0 = address
        defer { s.1 = [] }
        return s.1
      }
      for waiter in waiters { waiter.resume(returning: address) }
    }
    /// Waits until the listener is bound.
    public func get() async -> NIOCore.SocketAddress {
      await withCheckedContinuation { continuation in
        let ready: NIOCore.SocketAddress? = state.withLock { s in
          if let address = s.0 { return address }
          s.1.append(continuation)
          return nil
        }
        if let ready { continuation.resume(returning: ready) }
      }
    }
  }

  /// Creates the listener. `certificates` supplies the server's own chain and key at every handshake.
  public init(
    host: String, port: Int, certificates: ServerCertificateStore, verifier: ClientCertificateVerifier,
    registry: ConnectionRegistry, bound: BoundAddress = BoundAddress(),
    eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger
  ) throws {
    var tls = TLSConfiguration.makeServerConfiguration(
      certificateChain: certificates.chain.map { .certificate($0) }, privateKey: .privateKey(certificates.key))
    tls.minimumTLSVersion = .tlsv13
    tls.certificateVerification = .noHostnameVerification  // requires a client certificate; our callback decides
    tls.applicationProtocols = ["grpc-exp", "h2"]
    // Read at every ClientHello, so that a rotated certificate is used by the next handshake.
    tls.sslContextCallback = { _, promise in promise.succeed(certificates.override) }
    self.sslContext = try NIOSSLContext(configuration: tls)
    self.host = host
    self.port = port
    self.verifier = verifier
    self.registry = registry
    self.eventLoopGroup = eventLoopGroup
    self.logger = logger
    self.bound = bound
  }

  public func makeListeningChannel(
    listenerConfigurator: HTTP2ServerTransport.ListenerConfigurator,
    connectionConfigurator: HTTP2ServerTransport.ConnectionConfigurator
  ) async throws -> NIOAsyncChannel<HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel, Never> {
    let sslContext = self.sslContext
    let verifier = self.verifier
    let registry = self.registry
    let logger = self.logger
    let channel = try await ServerBootstrap(group: eventLoopGroup)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .serverChannelInitializer { listenerConfigurator.configure(channel: $0) }
      .bind(host: host, port: port) { channel in
        channel.eventLoop.makeCompletedFuture {
          let connection = registry.nextConnectionID()
          let remote = channel.remoteAddress?.description ?? "unknown"
          let handler = NIOSSLServerHandler(context: sslContext) { certificates, promise in
            let der = certificates.compactMap { try? $0.toDERBytes() }
            promise.completeWithTask {
              guard der.count == certificates.count else {
                logger.notice("tls handshake refused", metadata: ["peer": "\(remote)", "reason": "unparseable certificate"])
                return .failed
              }
              switch await verifier.verify(derChain: der) {
              case .trusted(let chain):
                // Identity is computed here, once per connection, from the verified leaf.
                registry.record(PeerIdentity.result(for: chain[0]), for: connection)
                return .certificateVerified(VerificationMetadata(nil))
              case .refused(let reason):
                logger.notice("tls handshake refused", metadata: ["peer": "\(remote)", "reason": "\(reason)"])
                return .failed
              }
            }
          }
          try channel.pipeline.syncOperations.addHandler(handler)
          try channel.pipeline.syncOperations.addHandler(ConnectionTag(id: connection))
          channel.closeFuture.whenComplete { _ in registry.remove(connection) }
        }.flatMap {
          connectionConfigurator.configure(channel: channel, tls: .configured(requireALPN: true))
        }
      }
    if let address = channel.channel.localAddress { bound.set(address) }
    return channel
  }

  /// The `onAcceptHTTP2Stream` callback: stamps every stream with its connection number and answers messages
  /// larger than `maxMessageBytes` with RESOURCE_EXHAUSTED (the transport itself would only reset the stream).
  public static func streamInitializer(maxMessageBytes: Int) -> @Sendable (any Channel) -> EventLoopFuture<Void> {
    { stream in
      stream.eventLoop.makeCompletedFuture {
        guard let parent = stream.parent else { return }
        let tag = try parent.pipeline.syncOperations.handler(type: ConnectionTag.self)
        try stream.pipeline.syncOperations.addHandler(StreamConnectionStamp(connection: tag.id), position: .first)
        try stream.pipeline.syncOperations.addHandler(
          MessageSizeLimitHandler(maxMessageBytes: maxMessageBytes), position: .first)
      }
    }
  }
}

extension PeerIdentity {
  static func result(for leaf: Certificate) -> Result<PeerIdentity, PeerIdentity.Failure> {
    do { return .success(try PeerIdentity(certificate: leaf)) } catch { return .failure(error) }
  }
}

/// Marks a connection's pipeline with its number, so that its streams can find it.
final class ConnectionTag: ChannelInboundHandler, Sendable {
  typealias InboundIn = NIOAny
  let id: UInt64
  init(id: UInt64) { self.id = id }
}

/// Replaces any client-sent connection header on a stream's first HEADERS frame with the true one.
final class StreamConnectionStamp: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = HTTP2Frame.FramePayload
  typealias InboundOut = HTTP2Frame.FramePayload
  private let value: String

  init(connection: UInt64) { self.value = String(connection) }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var payload = unwrapInboundIn(data)
    if case .headers(var headers) = payload {
      headers.headers.remove(name: ConnectionRegistry.connectionHeader)
      headers.headers.add(name: ConnectionRegistry.connectionHeader, value: value)
      payload = .headers(headers)
      context.fireChannelRead(wrapInboundOut(payload))
      context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
      return
    }
    context.fireChannelRead(data)
  }
}

/// Reads the 5-byte gRPC length prefix of each request message as it arrives and, when a message declares more
/// than the limit, ends the call with RESOURCE_EXHAUSTED before its body is buffered.
///
/// It watches the stream's outbound frames too: once the response headers are out (a streaming call that already
/// answered), the refusal is sent as trailers only, and nothing the call writes afterwards is forwarded.
final class MessageSizeLimitHandler: ChannelDuplexHandler {
  typealias InboundIn = HTTP2Frame.FramePayload
  typealias InboundOut = HTTP2Frame.FramePayload
  typealias OutboundIn = HTTP2Frame.FramePayload
  typealias OutboundOut = HTTP2Frame.FramePayload

  private let maxMessageBytes: Int
  /// Bytes of the current message body still to come.
  private var remaining = 0
  private var prefix: [UInt8] = []
  private var refused = false
  private var responseHeadersSent = false

  init(maxMessageBytes: Int) { self.maxMessageBytes = maxMessageBytes }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    if refused { return }
    guard case .data(let frame) = unwrapInboundIn(data), case .byteBuffer(var buffer) = frame.data else {
      context.fireChannelRead(data)
      return
    }
    while buffer.readableBytes > 0 {
      if remaining > 0 {
        let n = min(remaining, buffer.readableBytes)
        buffer.moveReaderIndex(forwardBy: n)
        remaining -= n
        continue
      }
      while prefix.count < 5, let byte = buffer.readInteger(as: UInt8.self) { prefix.append(byte) }
      guard prefix.count == 5 else { break }
      let length = Int(prefix[1]) << 24 | Int(prefix[2]) << 16 | Int(prefix[3]) << 8 | Int(prefix[4])
      prefix.removeAll(keepingCapacity: true)
      if length > maxMessageBytes {
        refuse(context: context, length: length)
        return
      }
      remaining = length
    }
    context.fireChannelRead(data)
  }

  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    if refused {
      promise?.fail(ChannelError.ioOnClosedChannel)
      return
    }
    if case .headers = unwrapOutboundIn(data) { responseHeadersSent = true }
    context.write(data, promise: promise)
  }

  private func refuse(context: ChannelHandlerContext, length: Int) {
    refused = true
    let message = "request message of \(length) bytes exceeds the limit of \(maxMessageBytes) bytes"
    let headers: HPACKHeaders =
      responseHeadersSent
      ? ["grpc-status": "8", "grpc-message": message]
      : [":status": "200", "content-type": "application/grpc", "grpc-status": "8", "grpc-message": message]
    let trailers = HTTP2Frame.FramePayload.headers(.init(headers: headers, endStream: true))
    let written = context.eventLoop.makePromise(of: Void.self)
    context.writeAndFlush(wrapOutboundOut(trailers), promise: written)
    let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
    written.futureResult.whenComplete { _ in bound.value.close(promise: nil) }
  }
}
