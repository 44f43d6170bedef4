import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// Where the egress proxy listens. This is the only address the server's outbound traffic ever connects to.
public enum ProxyAddress: Sendable, Equatable, CustomStringConvertible {
  case tcp(host: String, port: Int)
  case unix(path: String)

  public var description: String {
    switch self {
    case .tcp(let host, let port): "\(host):\(port)"
    case .unix(let path): "unix:\(path)"
    }
  }
}

/// An HTTP request for a destination outside; sent to the proxy in absolute form.
public struct OutboundRequest: Sendable {
  public var method: String
  /// Absolute `https://host[:port]/path` URL; the proxy, not this client, connects to it.
  public var url: String
  public var headers: [(String, String)]
  public var body: [UInt8]

  public init(method: String = "POST", url: String, headers: [(String, String)] = [], body: [UInt8] = []) {
    self.method = method
    self.url = url
    self.headers = headers
    self.body = body
  }
}

/// What came back through the proxy.
public struct OutboundResponse: Sendable {
  public var status: Int
  public var headers: [(String, String)]
  public var body: [UInt8]
  /// The proxy's refusal reason (`x-palisade-egress-block`), when it refused.
  public var blockedReason: String? { headers.first { $0.0.lowercased() == "x-palisade-egress-block" }?.1 }
}

/// Why a send failed.
public enum OutboundError: Error, Sendable, CustomStringConvertible {
  /// The proxy is not reachable (down, not yet started): nothing left the host.
  case proxyUnavailable(String)
  /// The proxy refused the request by policy; retrying would not help.
  case refused(status: Int, reason: String?)
  /// The queue is full; the request was not accepted.
  case queueFull(Int)
  case notAbsoluteURL(String)

  public var description: String {
    switch self {
    case .proxyUnavailable(let why): "egress proxy unavailable: \(why)"
    case .refused(let status, let reason): "egress proxy refused the request (\(status), \(reason ?? "no reason"))"
    case .queueFull(let n): "outbound queue is full (\(n) requests)"
    case .notAbsoluteURL(let u): "'\(u)' is not an absolute http(s) URL"
    }
  }
}

/// The server's own outbound HTTP (audit checkpoints, alerts). It connects only to the configured proxy address,
/// never to a destination: there is no code path here that opens a connection anywhere else, so with the sidecar
/// down nothing leaves. Queued requests are retried with exponential backoff until the proxy answers.
public actor EgressClient {
  public struct Settings: Sendable {
    /// Requests held while the proxy is unreachable; more are refused with ``OutboundError/queueFull(_:)``.
    public var queueLimit = 1000
    public var initialBackoff: Duration = .milliseconds(200)
    public var maxBackoff: Duration = .seconds(30)
    public var connectTimeout: Duration = .seconds(5)
    public var responseTimeout: Duration = .seconds(60)
    /// A larger answer is treated as a failed attempt: the proxy is ours, but a bound costs nothing.
    public var maxResponseBytes = 1 << 20
    public init() {}
  }

  public let proxy: ProxyAddress
  public let settings: Settings
  private var queue: [(OutboundRequest, Int)] = []
  private var nextID = 0
  private var worker: Task<Void, Never>?
  /// Requests delivered from the queue (any non-5xx answer from the destination), and their responses.
  public private(set) var delivered: [OutboundResponse] = []
  /// Queued requests the proxy refused by policy (dropped: retrying cannot help).
  public private(set) var refused: [OutboundResponse] = []
  /// Failed attempts so far (proxy down or upstream 502/503/504).
  public private(set) var failedAttempts = 0

  public init(proxy: ProxyAddress, settings: Settings = Settings()) {
    self.proxy = proxy
    self.settings = settings
  }

  /// Requests waiting for the proxy.
  public var pending: Int { queue.count }

  /// Sends once, now. Throws ``OutboundError/proxyUnavailable(_:)`` when the proxy cannot be reached.
  public func send(_ request: OutboundRequest) async throws -> OutboundResponse {
    try await Self.exchange(request, proxy: proxy, settings: settings)
  }

  /// Queues a request for delivery through the proxy, retried until it is delivered or refused by policy.
  public func enqueue(_ request: OutboundRequest) throws {
    guard request.url.hasPrefix("https://") || request.url.hasPrefix("http://") else {
      throw OutboundError.notAbsoluteURL(request.url)
    }
    guard queue.count < settings.queueLimit else { throw OutboundError.queueFull(settings.queueLimit) }
    nextID += 1
    queue.append((request, nextID))
    if worker == nil {
      worker = Task { await self.drain() }
    }
  }

  /// Stops retrying (queued requests stay queued).
  public func shutdown() {
    worker?.cancel()
    worker = nil
  }

  private func drain() async {
    var backoff = settings.initialBackoff
    while let item = queue.first, !Task.isCancelled {
      let request = item.0
      do {
        let response = try await Self.exchange(request, proxy: proxy, settings: settings)
        if [502, 503, 504].contains(response.status) && response.blockedReason == nil {
          throw OutboundError.proxyUnavailable("upstream answered \(response.status)")
        }
        queue.removeFirst()
        if response.blockedReason != nil { refused.append(response) } else { delivered.append(response) }
        backoff = settings.initialBackoff
      } catch {
        failedAttempts += 1
        try? await Task.sleep(for: backoff)
        backoff = min(backoff * 2, settings.maxBackoff)
      }
    }
    worker = nil
  }

  typealias ProxyChannel = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

  static func exchange(_ request: OutboundRequest, proxy: ProxyAddress, settings: Settings) async throws
    -> OutboundResponse
  {
    guard request.url.hasPrefix("https://") || request.url.hasPrefix("http://") else {
      throw OutboundError.notAbsoluteURL(request.url)
    }
    let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .connectTimeout(TimeAmount(settings.connectTimeout))
    let initializer: @Sendable (any Channel) -> EventLoopFuture<ProxyChannel> = { channel in
      channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHTTPClientHandlers()
        return try ProxyChannel(wrappingChannelSynchronously: channel)
      }
    }
    let channel: ProxyChannel
    do {
      switch proxy {
      case .tcp(let host, let port):
        channel = try await bootstrap.connect(host: host, port: port, channelInitializer: initializer)
      case .unix(let path):
        channel = try await bootstrap.connect(unixDomainSocketPath: path, channelInitializer: initializer)
      }
    } catch {
      throw OutboundError.proxyUnavailable("\(proxy): \(error)")
    }
    return try await withThrowingTaskGroup(of: OutboundResponse?.self) { group in
      group.addTask {
        do {
          return try await channel.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(
              version: .http1_1, method: HTTPMethod(rawValue: request.method), uri: request.url)
            for (name, value) in request.headers { head.headers.add(name: name, value: value) }
            head.headers.replaceOrAdd(name: "content-length", value: String(request.body.count))
            head.headers.replaceOrAdd(name: "connection", value: "close")
            var parts: [HTTPClientRequestPart] = [.head(head)]
            if !request.body.isEmpty { parts.append(.body(.byteBuffer(ByteBuffer(bytes: request.body)))) }
            parts.append(.end(nil))
            // One write and one flush. A proxy that refuses may answer and close before it has read the whole
            // request: its answer is still in the inbound buffer, so a failed write is not the end of the exchange.
            var writeError: (any Error)?
            do { try await outbound.write(contentsOf: parts) } catch { writeError = error }
            var status = 0
            var headers: [(String, String)] = []
            var body: [UInt8] = []
            for try await part in inbound {
              switch part {
              case .head(let h):
                status = Int(h.status.code)
                headers = h.headers.map { ($0.name, $0.value) }
              case .body(let b):
                guard body.count + b.readableBytes <= settings.maxResponseBytes else {
                  throw OutboundError.proxyUnavailable("the answer is larger than \(settings.maxResponseBytes) bytes")
                }
                body += b.readableBytesView
              case .end: return OutboundResponse(status: status, headers: headers, body: body)
              }
            }
            throw OutboundError.proxyUnavailable(
              "the proxy closed the connection before answering\(writeError.map { " (\($0))" } ?? "")")
          }
        } catch let e as OutboundError {
          throw e
        } catch {
          throw OutboundError.proxyUnavailable("\(error)")
        }
      }
      group.addTask {
        try await Task.sleep(for: settings.responseTimeout)
        return nil
      }
      defer { group.cancelAll() }
      guard let first = try await group.next(), let response = first else {
        throw OutboundError.proxyUnavailable("no answer within \(settings.responseTimeout)")
      }
      return response
    }
  }
}
