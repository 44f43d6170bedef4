import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import PalisadeOutbound
import Synchronization
import Testing

/// The server's only way out: requests go to the proxy in absolute form, are queued and retried while the proxy is
/// down or the upstream fails, and are dropped (not retried) when the proxy refuses them by policy. The "proxy" here
/// is a real HTTP/1.1 listener on loopback that answers from a script.
@Suite struct EgressClientTests {
  @Test func sendsAbsoluteFormThroughTheProxy() async throws {
    let proxy = try await ScriptedProxy.start([.init(status: 200, body: "ok")])
    defer { proxy.stop() }
    let client = EgressClient(proxy: proxy.address)
    let response = try await client.send(
      OutboundRequest(url: "https://audit.example/checkpoints", headers: [("x-test", "1")], body: Array("note".utf8)))
    #expect(response.status == 200)
    #expect(response.body == Array("ok".utf8))
    let seen = try #require(proxy.requests.first)
    #expect(seen.uri == "https://audit.example/checkpoints", "absolute form: the proxy decides where it goes")
    #expect(seen.method == "POST")
    #expect(seen.headers["x-test"] == "1")
    #expect(seen.headers["content-length"] == "4")
    #expect(seen.body == "note")
  }

  @Test func proxyDownIsUnavailableAndNothingIsSentElsewhere() async throws {
    let client = EgressClient(proxy: .unix(path: "/nonexistent/palisade-egress.sock"))
    await #expect {
      _ = try await client.send(OutboundRequest(url: "https://audit.example/x"))
    } throws: { error in
      guard case OutboundError.proxyUnavailable(let why) = error else { return false }
      return why.contains("/nonexistent/palisade-egress.sock")
    }
  }

  @Test func onlyAbsoluteURLsAreAccepted() async throws {
    let client = EgressClient(proxy: .tcp(host: "127.0.0.1", port: 9))
    for url in ["/relative", "audit.example/x", "ftp://audit.example/x", "file:///etc/passwd"] {
      await #expect {
        try await client.enqueue(OutboundRequest(url: url))
      } throws: { error in
        guard case OutboundError.notAbsoluteURL(let u) = error else { return false }
        return u == url
      }
      await #expect(throws: OutboundError.self) { _ = try await client.send(OutboundRequest(url: url)) }
    }
  }

  @Test func queuedRequestsAreRetriedUntilDelivered() async throws {
    let proxy = try await ScriptedProxy.start([.init(status: 503), .init(status: 502), .init(status: 200)])
    defer { proxy.stop() }
    var settings = EgressClient.Settings()
    settings.initialBackoff = .milliseconds(10)
    settings.maxBackoff = .milliseconds(20)
    let client = EgressClient(proxy: proxy.address, settings: settings)
    try await client.enqueue(OutboundRequest(url: "https://audit.example/1"))
    try await waitUntil { await client.pending == 0 }
    #expect(await client.failedAttempts == 2)
    #expect(await client.delivered.map(\.status) == [200])
    #expect(proxy.requests.count == 3)
  }

  @Test func refusedByPolicyIsDroppedNotRetried() async throws {
    let proxy = try await ScriptedProxy.start([
      .init(status: 403, headers: [("x-palisade-egress-block", "destination not allowed")]),
      .init(status: 200),
    ])
    defer { proxy.stop() }
    var settings = EgressClient.Settings()
    settings.initialBackoff = .milliseconds(10)
    let client = EgressClient(proxy: proxy.address, settings: settings)
    try await client.enqueue(OutboundRequest(url: "https://elsewhere.example/1"))
    try await client.enqueue(OutboundRequest(url: "https://audit.example/2"))
    try await waitUntil { await client.pending == 0 }
    #expect(await client.refused.map(\.blockedReason) == ["destination not allowed"])
    #expect(await client.delivered.map(\.status) == [200])
    #expect(await client.failedAttempts == 0)
  }

  @Test func fullQueueRefusesMore() async throws {
    var settings = EgressClient.Settings()
    settings.queueLimit = 2
    settings.initialBackoff = .seconds(60)
    let client = EgressClient(proxy: .unix(path: "/nonexistent/palisade-egress.sock"), settings: settings)
    try await client.enqueue(OutboundRequest(url: "https://audit.example/1"))
    try await client.enqueue(OutboundRequest(url: "https://audit.example/2"))
    await #expect {
      try await client.enqueue(OutboundRequest(url: "https://audit.example/3"))
    } throws: { error in
      guard case OutboundError.queueFull(2) = error else { return false }
      return true
    }
    await client.shutdown()
    #expect(await client.pending == 2, "shutdown keeps what is queued")
  }

  @Test func silentProxyTimesOut() async throws {
    let proxy = try await ScriptedProxy.start([.init(status: 0)])
    defer { proxy.stop() }
    var settings = EgressClient.Settings()
    settings.responseTimeout = .milliseconds(300)
    let client = EgressClient(proxy: proxy.address, settings: settings)
    await #expect {
      _ = try await client.send(OutboundRequest(url: "https://audit.example/x"))
    } throws: { error in
      guard case OutboundError.proxyUnavailable(let why) = error else { return false }
      return why.contains("no answer within")
    }
  }

  @Test func subSecondConnectTimeoutIsHonoured() async throws {
    // A sub-second connect timeout must not round down to zero (which fails every connect at once).
    let proxy = try await ScriptedProxy.start([.init(status: 200)])
    defer { proxy.stop() }
    var settings = EgressClient.Settings()
    settings.connectTimeout = .milliseconds(500)
    let client = EgressClient(proxy: proxy.address, settings: settings)
    #expect(try await client.send(OutboundRequest(url: "https://audit.example/x")).status == 200)
  }

  @Test func oversizedResponseIsRefused() async throws {
    let proxy = try await ScriptedProxy.start([.init(status: 200, body: String(repeating: "x", count: 2 << 20))])
    defer { proxy.stop() }
    var settings = EgressClient.Settings()
    settings.maxResponseBytes = 1 << 20
    let client = EgressClient(proxy: proxy.address, settings: settings)
    await #expect {
      _ = try await client.send(OutboundRequest(url: "https://audit.example/x"))
    } throws: { error in
      guard case OutboundError.proxyUnavailable(let why) = error else { return false }
      return why.contains("larger than")
    }
  }
}

/// A proxy that refuses on the request head and closes at once, without reading the rest (as a policy refusal may):
/// the client still gets the answer. Before, the client wrote head and end separately and, when the close came
/// between them, reported the proxy unavailable (seen once in the egress suite, under load; a refused checkpoint
/// would then have been retried for ever). Here the close rarely falls in that window on an idle machine, so this
/// test guards the behaviour rather than reproducing the race.
@Suite struct EgressClientEarlyAnswerTests {
  final class RefuseOnHead: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      guard case .head = unwrapInboundIn(data) else { return }
      let headers = HTTPHeaders([
        ("x-palisade-egress-block", "destination"), ("content-length", "0"), ("connection", "close"),
      ])
      context.write(
        wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .forbidden, headers: headers))), promise: nil)
      let channel = context.channel
      context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
  }

  @Test func anAnswerSentBeforeTheRequestWasReadIsStillTheAnswer() async throws {
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.configureHTTPServerPipeline()
          try channel.pipeline.syncOperations.addHandler(RefuseOnHead())
        }
      }
      .bind(host: "127.0.0.1", port: 0).get()
    defer { server.close(promise: nil) }
    let client = EgressClient(proxy: .tcp(host: "127.0.0.1", port: server.localAddress?.port ?? 0))
    for i in 0..<50 {
      let body = i.isMultiple(of: 2) ? [] : Array(repeating: UInt8(ascii: "x"), count: 512)
      let response = try await client.send(OutboundRequest(url: "https://elsewhere.example/x", body: body))
      #expect(response.status == 403 && response.blockedReason == "destination", "request \(i)")
    }
  }
}

private func waitUntil(_ condition: () async -> Bool) async throws {
  let deadline = ContinuousClock.now + .seconds(20)
  while !(await condition()) {
    guard ContinuousClock.now < deadline else {
      Issue.record("condition not met within 20 s")
      return
    }
    try await Task.sleep(for: .milliseconds(20))
  }
}

/// A loopback HTTP/1.1 server that answers each request with the next scripted response (status 0: never answer).
final class ScriptedProxy: Sendable {
  struct Response: Sendable {
    var status: Int
    var headers: [(String, String)] = []
    var body: String = ""
  }
  struct Seen: Sendable {
    var method: String
    var uri: String
    var headers: [String: String]
    var body: String
  }

  private let channel: any Channel
  private let state: Mutex<(script: [Response], seen: [Seen])>
  let address: ProxyAddress

  var requests: [Seen] { state.withLock { $0.seen } }

  private init(channel: any Channel, script: [Response], port: Int) {
    self.channel = channel
    self.state = Mutex((script, []))
    self.address = .tcp(host: "127.0.0.1", port: port)
  }

  static func start(_ script: [Response]) async throws -> ScriptedProxy {
    let box = Box()
    let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.configureHTTPServerPipeline()
          try channel.pipeline.syncOperations.addHandler(Handler(box: box))
        }
      }
      .bind(host: "127.0.0.1", port: 0).get()
    let proxy = ScriptedProxy(channel: channel, script: script, port: channel.localAddress?.port ?? 0)
    box.proxy.withLock { $0 = proxy }
    return proxy
  }

  func stop() { channel.close(promise: nil) }

  fileprivate func next(_ seen: Seen) -> Response? {
    state.withLock { s in
      s.seen.append(seen)
      return s.script.isEmpty ? nil : s.script.removeFirst()
    }
  }

  fileprivate final class Box: Sendable {
    let proxy = Mutex<ScriptedProxy?>(nil)
  }

  private final class Handler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let box: Box
    var head: HTTPRequestHead?
    var body = ""
    init(box: Box) { self.box = box }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      switch unwrapInboundIn(data) {
      case .head(let h): head = h
      case .body(let b): body += String(buffer: b)
      case .end:
        guard let head, let proxy = box.proxy.withLock({ $0 }) else { return }
        var headers: [String: String] = [:]
        for (name, value) in head.headers { headers[name.lowercased()] = value }
        let seen = Seen(method: head.method.rawValue, uri: head.uri, headers: headers, body: body)
        guard let response = proxy.next(seen), response.status != 0 else { return }
        var out = HTTPHeaders(response.headers)
        out.add(name: "content-length", value: String(response.body.utf8.count))
        out.add(name: "connection", value: "close")
        let status = HTTPResponseStatus(statusCode: response.status)
        context.write(
          wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: out))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: response.body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
      }
    }
  }
}
