import NIOCore
import NIOHTTP1
import NIOPosix
import PalisadeSupport

/// The sidecar's admin endpoint on its own port (loopback by default): `/healthz`, `/readyz` (the proxy listens,
/// so the policy loaded) and `/metrics` (Prometheus text). It takes no input beyond the path.
///
/// Nobody authenticates here: besides the connection caps and timeouts of ``ConnectionGuard``, `/metrics` is
/// rendered at most `admin.max_metrics_renders_per_second` times a second, and the endpoint has an event-loop
/// thread of its own, so that a flood of requests cannot hold up the proxy's connections.
final class EgressAdminServer: Sendable {
  let proxy: EgressProxy
  private let renders: MetricsRenderBudget

  init(proxy: EgressProxy) {
    self.proxy = proxy
    self.renders = MetricsRenderBudget(perSecond: proxy.config.admin.maxMetricsRendersPerSecond)
  }

  func run() async throws {
    try await MultiThreadedEventLoopGroup.withEventLoopGroup(numberOfThreads: 1) { try await serve(on: $0) }
  }

  private func serve(on group: MultiThreadedEventLoopGroup) async throws {
    let config = proxy.config
    let limiter = ConnectionLimiter(
      maxTotal: config.admin.maxConnections, maxPerAddress: config.admin.maxConnectionsPerAddress)
    let settings = ConnectionGuard.Settings(listener: "admin", config: config)
    let metrics = proxy.metrics
    let server = try await ServerBootstrap(group: group)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .bind(host: config.admin.host, port: config.admin.port) { channel in
        channel.eventLoop.makeCompletedFuture { () -> NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>? in
          guard try ConnectionGuard.admit(channel, limiter: limiter, settings: settings, metrics: metrics) else {
            return nil
          }
          return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
            wrappingChannelSynchronously: channel)
        }
      }
    if let a = server.channel.localAddress { proxy.adminBound.set(a) }
    proxy.logger.info(
      "egress admin endpoint listening", metadata: ["port": "\(server.channel.localAddress?.port ?? 0)"])
    try await withThrowingDiscardingTaskGroup { group in
      try await server.executeThenClose { connections in
        for try await connection in connections {
          guard let connection else { continue }
          group.addTask {
            try? await connection.executeThenClose { inbound, outbound in
              var head: HTTPRequestHead?
              for try await part in inbound {
                switch part {
                case .head(let h): head = h
                case .body: continue
                case .end:
                  guard let h = head else { return }
                  let (status, body) = self.respond(h)
                  var headers = HTTPHeaders()
                  headers.add(
                    name: "content-type",
                    value: h.uri.hasPrefix("/metrics") ? "text/plain; version=0.0.4" : "text/plain")
                  headers.add(name: "content-length", value: String(body.count))
                  try await outbound.write(
                    .head(HTTPResponseHead(version: h.version, status: status, headers: headers)))
                  try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
                  try await outbound.write(.end(nil))
                  if !h.isKeepAlive { return }
                  head = nil
                }
              }
            }
          }
        }
      }
    }
  }

  private func respond(_ head: HTTPRequestHead) -> (HTTPResponseStatus, [UInt8]) {
    guard head.method == .GET else { return (.methodNotAllowed, Array("only GET\n".utf8)) }
    switch head.uri.split(separator: "?").first.map(String.init) ?? head.uri {
    case "/healthz": return (.ok, Array("ok\n".utf8))
    case "/readyz":
      return proxy.bound.address != nil
        ? (.ok, Array("ready\n".utf8)) : (.serviceUnavailable, Array("not listening\n".utf8))
    case "/metrics":
      let (body, fresh) = renders.body(render: proxy.metrics.render)
      if !fresh { proxy.metrics.metricsCached() }
      return (.ok, body)
    default: return (.notFound, Array("not found\n".utf8))
    }
  }
}
