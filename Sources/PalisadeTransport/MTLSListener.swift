import CNIOBoringSSL
public import GRPCCore
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

/// The address a listener bound, once it has (port 0 asks the OS for a free port).
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

/// Palisade's gRPC server transport: TLS 1.3 with a verified client certificate, HTTP/2, and the gRPC protocol,
/// on swift-nio, plugged into grpc-swift through its `ServerTransport` protocol.
///
/// It owns everything before a call reaches a service, so that every limit holds from the first byte:
/// connection caps (total and per source address) and a handshake deadline before the peer is known; the
/// caller's identity bound once per connection in the verification callback; TLS session resumption off (a
/// resumed session carries no verified chain); explicit HTTP/2 limits (header list size per stream, concurrent
/// streams, flow-control windows, swift-nio-http2's flood guards); message limits and in-flight byte budgets per
/// connection and per principal (``GRPCStreamHandler``); connection age, idle time, keepalive and graceful
/// shutdown (``ConnectionManager``). Unary RPCs registered as ``FastUnaryHandler``s are served on the stream
/// itself; every other RPC goes to grpc-swift.
public final class MTLSServerTransport: ServerTransport, Sendable {
  public typealias Bytes = MessageBytes

  public let configuration: TransportConfiguration
  /// The bound address, once listening.
  public let bound: BoundAddress
  private let sslContext: NIOSSLContext
  private let verifier: ClientCertificateVerifier
  private let observer: any TransportObserver
  private let logger: Logger
  private let group: any EventLoopGroup
  private let fastPaths: [String: any FastUnaryHandler]
  private let fastStreams: [String: any FastStreamHandler]
  private let limiter: ConnectionLimiter
  private let principalBudget: InflightBudget
  private let callBudget: CallBudget
  private let nextConnection = Atomic<UInt64>(0)

  private struct State {
    var server: (any Channel)?
    var connections: [UInt64: (channel: any Channel, manager: NIOLoopBound<ConnectionManager>)] = [:]
    var shuttingDown = false
    var drained: [CheckedContinuation<Void, Never>] = []
  }
  private let state = Mutex(State())

  /// Creates the transport. `certificates` supplies the server's own chain and key at every handshake;
  /// `verifier` decides on client chains (its roots can be replaced while running).
  public init(
    configuration: TransportConfiguration, certificates: ServerCertificateStore, verifier: ClientCertificateVerifier,
    fastPaths: [any FastUnaryHandler] = [], fastStreams: [any FastStreamHandler] = [],
    observer: any TransportObserver = NoTransportObserver(),
    bound: BoundAddress = BoundAddress(), eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
    logger: Logger
  ) throws {
    var tls = TLSConfiguration.makeServerConfiguration(
      certificateChain: certificates.chain.map { .certificate($0) }, privateKey: .privateKey(certificates.key))
    tls.minimumTLSVersion = .tlsv13
    tls.certificateVerification = .noHostnameVerification  // requires a client certificate; our callback decides
    tls.applicationProtocols = ["h2"]
    // Read at every ClientHello, so that a rotated certificate is used by the next handshake.
    tls.sslContextCallback = { _, promise in promise.succeed(certificates.override) }
    self.sslContext = try NIOSSLContext(configuration: tls)
    try Self.disableResumption(sslContext)
    self.configuration = configuration
    self.verifier = verifier
    self.observer = observer
    self.bound = bound
    self.group = eventLoopGroup
    self.logger = logger
    var paths: [String: any FastUnaryHandler] = [:]
    for handler in fastPaths { for path in handler.paths { paths[path] = handler } }
    self.fastPaths = paths
    var streamPaths: [String: any FastStreamHandler] = [:]
    for handler in fastStreams { for path in handler.paths { streamPaths[path] = handler } }
    self.fastStreams = streamPaths
    self.limiter = ConnectionLimiter(
      maxTotal: configuration.connections.maxConnections,
      maxPerAddress: configuration.connections.maxConnectionsPerAddress)
    self.principalBudget = InflightBudget(limit: configuration.messages.maxInflightBytesPerPrincipal)
    self.callBudget = CallBudget(
      perSecond: configuration.protections.unauthorizedCallsPerSecond,
      burst: configuration.protections.unauthorizedCallBurst)
  }

  /// A resumed TLS 1.3 session skips certificate verification, so it would reach the server with no identity
  /// (every call UNAUTHENTICATED) or, worse, with a chain checked against trust that has since rotated. The
  /// server therefore issues no session tickets and keeps no session cache: every connection verifies a chain.
  /// NIOSSL has no setting for this, so the BoringSSL context is configured directly.
  static func disableResumption(_ context: NIOSSLContext) throws {
    guard
      let raw = Mirror(reflecting: context).children.first(where: { $0.label == "sslContext" })?.value as? OpaquePointer
    else {
      throw TransportSetupError("cannot configure the TLS context: session resumption could not be turned off")
    }
    SSL_CTX_set_num_tickets(raw, 0)
    _ = SSL_CTX_set_options(raw, UInt32(SSL_OP_NO_TICKET))
    _ = SSL_CTX_set_session_cache_mode(raw, SSL_SESS_CACHE_OFF)
  }

  public func listen(
    streamHandler: @escaping @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void
  ) async throws {
    let env = StreamEnvironment(
      messages: configuration.messages, maxHeaderListBytes: configuration.streams.maxHeaderListBytes,
      fastPaths: fastPaths, fastStreams: fastStreams, principalBudget: principalBudget, callBudget: callBudget,
      tokenExemptMethods: configuration.tokenExemptMethods, observer: observer,
      logger: logger,
      localAddress: "\(configuration.host):\(configuration.port)",
      startGeneric: { channel, method, connection, cancellation in
        Self.serve(channel, method: method, connection: connection, cancellation: cancellation, handler: streamHandler)
      })
    let server = try await ServerBootstrap(group: group)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .serverChannelOption(.backlog, value: 256)
      .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
      .childChannelInitializer { [self] channel in
        channel.eventLoop.makeCompletedFuture { try self.initialize(channel, env: env) }
      }
      .bind(host: configuration.host, port: configuration.port).get()
    let shutDownEarly = state.withLock { s in
      s.server = server
      return s.shuttingDown
    }
    if let address = server.localAddress { bound.set(address) }
    if shutDownEarly { server.close(promise: nil) }
    await withTaskCancellationHandler {
      try? await server.closeFuture.get()
      // Graceful: the listener is closed; wait for every connection to finish its calls (or its grace).
      await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let done = state.withLock { s in
          if s.connections.isEmpty { return true }
          s.drained.append(continuation)
          return false
        }
        if done { continuation.resume() }
      }
    } onCancel: {
      // Ungraceful: close the listener and every connection now.
      let channels = state.withLock { s in
        s.shuttingDown = true
        return [s.server].compactMap { $0 } + s.connections.values.map(\.channel)
      }
      for channel in channels { channel.close(promise: nil) }
    }
  }

  public func beginGracefulShutdown() {
    let (server, connections) = state.withLock { s in
      s.shuttingDown = true
      return (s.server, Array(s.connections.values))
    }
    server?.close(promise: nil)
    for (channel, manager) in connections {
      channel.eventLoop.execute { manager.value.beginClosing() }
    }
  }

  /// Open connections, for tests and metrics.
  public var openConnections: Int { limiter.open }

  // MARK: Connections

  private func initialize(_ channel: any Channel, env: StreamEnvironment) throws {
    let remoteHost = channel.remoteAddress?.ipAddress ?? "unknown"
    if let refusal = limiter.admit(remoteHost) {
      observer.transportRefused(reason: refusal.rawValue)
      channel.close(promise: nil)
      return
    }
    let id = nextConnection.add(1, ordering: .relaxed).newValue
    let connection = PeerConnection(
      id: id, remoteAddress: Self.describe(channel.remoteAddress), remoteHost: remoteHost)
    let observer = self.observer
    let verifier = self.verifier
    let logger = self.logger
    let remote = connection.remoteAddress
    let tlsHandler = NIOSSLServerHandler(context: sslContext) { certificates, promise in
      let der = certificates.compactMap { try? $0.toDERBytes() }
      promise.completeWithTask {
        guard der.count == certificates.count else {
          logger.notice("tls handshake refused", metadata: ["peer": "\(remote)", "reason": "unparseable certificate"])
          return .failed
        }
        switch await verifier.verify(derChain: der) {
        case .trusted(let chain):
          // Identity is computed here, once per connection, from the verified leaf.
          connection.bind(PeerIdentity.result(for: chain[0]))
          return .certificateVerified(VerificationMetadata(nil))
        case .refused(let reason):
          logger.notice("tls handshake refused", metadata: ["peer": "\(remote)", "reason": "\(reason)"])
          return .failed
        }
      }
    }
    let sync = channel.pipeline.syncOperations
    try sync.addHandler(tlsHandler)
    try sync.addHandler(HandshakeGuard(timeout: configuration.connections.handshakeTimeout, observer: observer))
    try sync.addHandler(FlushCoalescer())

    let manager = ConnectionManager(
      config: configuration.connections, protections: configuration.protections, observer: observer)
    let loopBoundManager = NIOLoopBound(manager, eventLoop: channel.eventLoop)
    let (connectionConfiguration, streamConfiguration) = Self.http2Configuration(configuration)
    let connectionBudget = InflightBudget(limit: configuration.messages.maxInflightBytesPerConnection)
    let taskExecutor = EventLoopTaskExecutor(channel.eventLoop)
    _ = try sync.configureHTTP2Pipeline(
      mode: .server, connectionConfiguration: connectionConfiguration, streamConfiguration: streamConfiguration,
      streamDelegate: StreamTracker(manager: loopBoundManager)
    ) { stream in
      stream.eventLoop.makeCompletedFuture {
        try stream.pipeline.syncOperations.addHandler(
          GRPCStreamHandler(
            env: env, connection: connection, connectionBudget: connectionBudget, manager: loopBoundManager,
            taskExecutor: taskExecutor))
      }
    }
    try sync.addHandler(manager)

    let shuttingDown = state.withLock { s in
      s.connections[id] = (channel, loopBoundManager)
      return s.shuttingDown
    }
    observer.connectionsOpen(limiter.open)
    if shuttingDown { manager.beginClosing() }
    channel.closeFuture.whenComplete { [self] _ in
      let open = limiter.release(remoteHost)
      observer.connectionsOpen(open)
      let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
        s.connections[id] = nil
        guard s.connections.isEmpty else { return [] }
        defer { s.drained = [] }
        return s.drained
      }
      for waiter in waiters { waiter.resume() }
    }
  }

  /// NIOHTTP2's settings and flood guards, every one set from the configuration (none left to the library's
  /// defaults, which could change under us).
  static func http2Configuration(_ configuration: TransportConfiguration)
    -> (NIOHTTP2Handler.ConnectionConfiguration, NIOHTTP2Handler.StreamConfiguration)
  {
    let streams = configuration.streams
    let guards = configuration.protections
    let window = TimeAmount.nanoseconds(guards.rateWindow.totalNanoseconds)
    var connection = NIOHTTP2Handler.ConnectionConfiguration()
    connection.targetWindowSize = streams.targetWindowSize
    connection.initialSettings = [
      HTTP2Setting(parameter: .maxConcurrentStreams, value: streams.maxConcurrentStreams),
      HTTP2Setting(parameter: .initialWindowSize, value: streams.targetWindowSize),
      HTTP2Setting(parameter: .maxHeaderListSize, value: streams.headerDecoderLimit),
    ]
    connection.headerBlockValidation = .enabled
    connection.contentLengthValidation = .enabled
    connection.maximumSequentialEmptyDataFrames = guards.maxSequentialEmptyDataFrames
    connection.maximumBufferedControlFrames = guards.maxBufferedControlFrames
    connection.maximumSequentialContinuationFrames = guards.maxSequentialContinuationFrames
    connection.maximumRecentlyResetStreams = guards.maxRecentlyResetStreams
    connection.maximumConnectionGlitches = guards.maxConnectionGlitches
    connection.controlFrameRateLimit.maximumCount = guards.maxControlFrames
    connection.controlFrameRateLimit.windowLength = window
    var stream = NIOHTTP2Handler.StreamConfiguration()
    stream.targetWindowSize = streams.targetWindowSize
    stream.streamResetFrameRateLimit.maximumCount = guards.maxResetFrames
    stream.streamResetFrameRateLimit.windowLength = window
    stream.streamErrorRateLimit.maximumCount = guards.maxStreamErrors
    stream.streamErrorRateLimit.windowLength = window
    return (connection, stream)
  }

  /// `ipv4:127.0.0.1:1234`, as grpc-swift describes peers.
  static func describe(_ address: NIOCore.SocketAddress?) -> String {
    guard let address else { return "unknown" }
    switch address {
    case .v4: return "ipv4:\(address.ipAddress ?? "?"):\(address.port ?? 0)"
    case .v6: return "ipv6:[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
    case .unixDomainSocket: return "unix:\(address.pathname ?? "")"
    }
  }

  // MARK: Calls through grpc-swift

  /// Runs one grpc-swift call on its stream; returns when the stream is closed.
  static func serve(
    _ stream: NIOAsyncChannel<RPCRequestPart<MessageBytes>, RPCResponsePart<MessageBytes>>, method: MethodDescriptor,
    connection: PeerConnection, cancellation: StreamCancellation,
    handler: @escaping @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void
  ) {
    Task {
      try? await stream.executeThenClose { inbound, outbound in
        await withServerContextRPCCancellationHandle { handle in
          cancellation.attach(handle)
          let rpc = RPCStream(
            descriptor: method, inbound: RPCAsyncSequence(wrapping: inbound),
            outbound: RPCWriter.Closable(wrapping: StreamOutbound(writer: outbound, channel: stream.channel)))
          var context = ServerContext(
            descriptor: method, remotePeer: connection.remoteAddress, localPeer: "", cancellation: handle)
          context.transportSpecific = StreamInfo(connection: connection)
          await handler(rpc, context)
        }
        // Wait for the stream to close (the status was written, or it failed): closing earlier could drop
        // buffered writes. A cancelled task does not wait.
        if !Task.isCancelled { try await stream.channel.closeFuture.get() }
      }
    }
  }
}

/// The response side of a grpc-swift call: writes go to the stream's ``GRPCStreamHandler``.
struct StreamOutbound: ClosableRPCWriterProtocol {
  typealias Element = RPCResponsePart<MessageBytes>
  let writer: NIOAsyncChannelOutboundWriter<RPCResponsePart<MessageBytes>>
  let channel: any Channel

  func write(_ element: Element) async throws { try await writer.write(element) }
  func write(contentsOf elements: some Sequence<Element>) async throws { try await writer.write(contentsOf: elements) }
  func finish() { writer.finish() }
  func finish(throwing error: any Error) { channel.pipeline.fireErrorCaught(error) }
}

/// The transport could not be set up; the message says what.
public struct TransportSetupError: Error, CustomStringConvertible, Sendable {
  public let description: String
  init(_ description: String) { self.description = description }
}

extension PeerIdentity {
  static func result(for leaf: Certificate) -> Result<PeerIdentity, PeerIdentity.Failure> {
    do { return .success(try PeerIdentity(certificate: leaf)) } catch { return .failure(error) }
  }
}
