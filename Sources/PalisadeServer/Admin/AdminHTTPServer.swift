import NIOCore
import NIOHTTP1
import NIOPosix
public import Logging
public import ServiceLifecycle
public import PalisadeTransport

/// The admin endpoint, on its own port (loopback by default): `/healthz` (the process is up), `/readyz` (every
/// required model is loaded and the server is not draining) and `/metrics` (Prometheus text).
///
/// It serves no data and takes no input beyond the path, so it needs no TLS on loopback; operators who expose it
/// beyond loopback (Kubernetes probes on the pod IP) should restrict it with a NetworkPolicy.
public final class AdminHTTPServer: Service, Sendable {
  private let host: String
  private let port: Int
  private let state: ServingState
  private let metrics: ServerMetrics
  private let logger: Logger
  /// The bound address, once listening.
  public let bound = MTLSListenerFactory.BoundAddress()

  public init(host: String, port: Int, state: ServingState, metrics: ServerMetrics, logger: Logger) {
    self.host = host
    self.port = port
    self.state = state
    self.metrics = metrics
    self.logger = logger
  }

  public func run() async throws {
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .bind(host: host, port: port) { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
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
      return (.ok, "text/plain; version=0.0.4; charset=utf-8", metrics.render())
    default:
      return (.notFound, "text/plain", Array("not found\n".utf8))
    }
  }
}
