import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// One request to a destination over a fresh connection to an address that was already checked. TLS is originated
/// here with the sidecar's own trust store (SNI and certificate verification use the destination's name).
struct Upstream: Sendable {
  struct Response: Sendable {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: ByteBuffer
  }

  enum Failure: Error, CustomStringConvertible {
    case tooLarge(Int)
    case incomplete
    case timeout
    var description: String {
      switch self {
      case .tooLarge(let n): "upstream response exceeds max_response_bytes (\(n))"
      case .incomplete: "upstream closed before the response ended"
      case .timeout: "upstream did not answer in time"
      }
    }
  }

  let tls: NIOSSLContext?
  let connectTimeout: TimeAmount
  let timeout: Duration
  let maxResponseBytes: Int

  func exchange(
    address: SocketAddress, target: ProxyTarget, useTLS: Bool, head: HTTPRequestHead, body: ByteBuffer
  ) async throws -> Response {
    try await withThrowingTaskGroup(of: Response?.self) { group in
      group.addTask { try await self.run(address: address, target: target, useTLS: useTLS, head: head, body: body) }
      group.addTask {
        try await Task.sleep(for: timeout)
        return nil
      }
      defer { group.cancelAll() }
      guard let first = try await group.next(), let response = first else { throw Failure.timeout }
      return response
    }
  }

  private func run(
    address: SocketAddress, target: ProxyTarget, useTLS: Bool, head: HTTPRequestHead, body: ByteBuffer
  ) async throws -> Response {
    let tls = useTLS ? self.tls : nil
    let isIPLiteral = (try? SocketAddress(ipAddress: target.host, port: 0)) != nil
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .connectTimeout(connectTimeout)
      .channelOption(.tcpOption(.tcp_nodelay), value: 1)
      .connect(to: address) { channel in
        channel.eventLoop.makeCompletedFuture {
          if let tls {
            // SNI carries a name, never an IP literal; for a literal NIOSSL checks the certificate's IP SAN.
            let handler = try NIOSSLClientHandler(context: tls, serverHostname: isIPLiteral ? nil : target.host)
            try channel.pipeline.syncOperations.addHandler(handler)
          }
          try channel.pipeline.syncOperations.addHTTPClientHandlers()
          return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
            wrappingChannelSynchronously: channel)
        }
      }
    return try await channel.executeThenClose { inbound, outbound in
      try await outbound.write(.head(head))
      if body.readableBytes > 0 { try await outbound.write(.body(.byteBuffer(body))) }
      try await outbound.write(.end(nil))
      var responseHead: HTTPResponseHead?
      var collected = ByteBuffer()
      for try await part in inbound {
        switch part {
        case .head(let h):
          // 1xx interim responses are skipped; the final one follows.
          if h.status.code >= 200 { responseHead = h }
        case .body(var b):
          guard responseHead != nil else { continue }
          if collected.readableBytes + b.readableBytes > maxResponseBytes { throw Failure.tooLarge(maxResponseBytes) }
          collected.writeBuffer(&b)
        case .end:
          if let h = responseHead { return Response(status: h.status, headers: h.headers, body: collected) }
        }
      }
      throw Failure.incomplete
    }
  }
}
