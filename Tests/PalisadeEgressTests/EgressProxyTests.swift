import Foundation
import NIOCore
import NIOHTTP1
import PalisadeEgress
import PalisadeOutbound
import PalisadeSupport
import PalisadeTestSupport
import Testing

/// The sidecar end to end: a real proxy, real TLS to a local HTTPS server, the real outbound client.
@Suite("Egress proxy", .serialized)
struct EgressProxyTests {
  @Test("an allowed destination passes, with TLS originated by the sidecar and hop-by-hop headers dropped")
  func allowed() async throws {
    let h = try await Harness()
    let r = try await h.send(
      h.url("/ingest/checkpoint"), headers: [("x-kind", "checkpoint"), ("proxy-authorization", "x")],
      body: Array("hello".utf8))
    #expect(r.status == 200)
    #expect(String(decoding: r.body, as: UTF8.self) == "ok 5")
    let got = try #require(h.upstream.received.first)
    #expect(got.method == "POST" && got.uri == "/ingest/checkpoint" && got.body == Array("hello".utf8))
    #expect(got.headers.contains { $0.0.lowercased() == "host" && $0.1 == "localhost:\(h.upstream.port)" })
    #expect(got.headers.contains { $0.0 == "x-kind" })
    #expect(!got.headers.contains { $0.0.lowercased() == "proxy-authorization" })
    await h.stop()
  }

  @Test("an upstream cannot pass for the sidecar: its x-palisade-egress-* headers are not relayed")
  func upstreamCannotSpoofARefusal() async throws {
    let h = try await Harness()
    let r = try await h.send(h.url("/ingest/spoof"), headers: [("x-spoof-block", "1")], body: Array("x".utf8))
    #expect(r.status == 200)
    #expect(r.blockedReason == nil, "\(r.headers)")
    #expect(!r.headers.contains { $0.0.lowercased().hasPrefix("x-palisade-egress-") }, "\(r.headers)")
    #expect(r.headers.contains { $0.0 == "x-upstream" }, "other upstream headers still pass")
    // The outbound queue takes it as delivered, not refused by policy.
    let client = EgressClient(proxy: .tcp(host: "127.0.0.1", port: h.proxy.bound.port ?? 0))
    try await client.enqueue(OutboundRequest(url: h.url("/ingest/spoof"), headers: [("x-spoof-block", "1")]))
    try await waitUntil { await client.delivered.count + client.refused.count >= 1 }
    let (delivered, refused) = (await client.delivered.count, await client.refused.count)
    #expect(delivered == 1 && refused == 0)
    await h.stop()
  }

  @Test("the Unix socket listener applies the same policy")
  func unixSocket() async throws {
    let h = try await Harness()
    let client = EgressClient(proxy: .unix(path: h.directory.appendingPathComponent("proxy.sock").path))
    let ok = try await client.send(OutboundRequest(url: h.url("/ingest/u"), body: Array("via unix".utf8)))
    #expect(ok.status == 200)
    let refused = try await client.send(OutboundRequest(url: h.url("/ingest/u"), body: Array(h.configuredCanary.utf8)))
    #expect(refused.status == 403 && refused.blockedReason == "canary")
    #expect(h.upstream.received.map(\.uri) == ["/ingest/u"])
    await h.stop()
  }

  @Test("a disallowed host, port, method or path is refused before anything is sent")
  func disallowed() async throws {
    let h = try await Harness()
    let cases: [(String, String, String)] = [
      ("POST", h.url("/ingest/x", host: "example.com", port: 443), "destination"),
      ("POST", h.url("/ingest/x", port: h.upstream.port == 1 ? 2 : 1), "destination"),
      ("POST", "http://localhost:\(h.upstream.port)/ingest/x", "destination"),
      ("GET", h.url("/ingest/x"), "method"),
      ("POST", h.url("/admin"), "path"),
      ("POST", h.url("/ingest/../admin"), "path"),
      ("POST", h.url("/ingest/%2e%2e/admin"), "path"),
      // Read as "/ingest/../admin" by Tomcat, Jetty and Spring; a double encoding.
      ("POST", h.url("/ingest/..;/admin"), "path"),
      ("POST", h.url("/ingest/.;x/y"), "path"),
      ("POST", h.url("/ingest/%252e%252e/admin"), "path"),
    ]
    for (method, url, reason) in cases {
      let r = try await h.send(url, method: method)
      #expect(r.status == 403, "\(method) \(url)")
      #expect(r.blockedReason == reason, "\(method) \(url)")
    }
    #expect(h.upstream.received.isEmpty)
    await h.stop()
  }

  @Test("a name resolving to loopback is refused without allow_private; metadata addresses are always refused")
  func addresses() async throws {
    let h = try await Harness(
      destinationExtras: """
          - {name: loop, host: localhost, port: 9, methods: [POST]}
          - {name: meta, host: 169.254.169.254, port: 80, scheme: http, allow_private: true}
          - {name: meta6, host: "fd00:ec2::254", port: 80, scheme: http, allow_private: true}
        """)
    let loop = try await h.send(h.url("/x", port: 9))
    #expect(loop.status == 403 && loop.blockedReason == "address")
    let meta = try await h.send("http://169.254.169.254/latest/meta-data/")
    #expect(meta.status == 403 && meta.blockedReason == "metadata_address")
    let meta6 = try await h.send("http://[fd00:ec2::254]/latest/meta-data/")
    #expect(meta6.status == 403 && meta6.blockedReason == "metadata_address")
    await h.stop()
  }

  @Test("a canary in the body, a header or the URL is refused, and the event never carries it")
  func canaries() async throws {
    let h = try await Harness()
    let body = try await h.send(h.url("/ingest/x"), body: Array("{\"note\": \"\(h.configuredCanary)\"}".utf8))
    #expect(body.status == 403 && body.blockedReason == "canary")
    let header = try await h.send(h.url("/ingest/x"), headers: [("x-trace", "a \(h.bundleCanary) b")])
    #expect(header.status == 403 && header.blockedReason == "canary")
    let url = try await h.send(h.url("/ingest/x?q=\(h.bundleCanary)"))
    #expect(url.status == 403 && url.blockedReason == "canary")
    let encoded = Data(h.bundleCanary.utf8).base64EncodedString()
    let b64 = try await h.send(h.url("/ingest/x"), body: Array("padding \(encoded)".utf8))
    #expect(b64.status == 403 && b64.blockedReason == "canary")
    #expect(h.upstream.received.isEmpty)
    for expected in ["body", "header", "url", "body"] {
      let event = try #require(h.events.next())
      #expect(event.reason == "canary" && event.location == expected && event.destination == "local")
      let line = String(decoding: event.jsonLine(), as: UTF8.self)
      #expect(!line.contains(h.bundleCanary) && !line.contains(h.configuredCanary))
    }
    #expect(!String(decoding: body.body, as: UTF8.self).contains(h.configuredCanary))
    await h.stop()
  }

  @Test("a PEM private key and a JWT in a body are refused")
  func secrets() async throws {
    let h = try await Harness()
    let pem = try await h.send(h.url("/ingest/x"), body: Array(h.pki.root.keyPEM.utf8))
    #expect(pem.status == 403 && pem.blockedReason == "private_key")
    let jwt = try h.pki.token(for: h.pki.issue(commonName: "c", sans: [TestPKISupport.spiffe]))
    let r = try await h.send(h.url("/ingest/x"), body: Array("{\"token\":\"\(jwt)\"}".utf8))
    #expect(r.status == 403 && r.blockedReason == "jwt")
    #expect(h.upstream.received.isEmpty)
    await h.stop()
  }

  @Test("a chunk of model weights is refused raw, base64 and hex, at any offset")
  func weights() async throws {
    let h = try await Harness()
    // W + S - 1 bytes from an offset that is not a multiple of the stride.
    let chunk = Array(h.weights[1001..<(1001 + 64 + 32 - 1)])
    let raw = try await h.send(
      h.url("/ingest/x"), headers: [("content-type", "application/octet-stream")], body: [1, 2, 3] + chunk + [9])
    #expect(raw.status == 403 && raw.blockedReason == "model_weights")
    let b64 = try await h.send(
      h.url("/ingest/x"), body: Array("{\"blob\":\"\(Data(chunk).base64EncodedString())\"}".utf8))
    #expect(b64.status == 403 && b64.blockedReason == "model_weights")
    let hex = try await h.send(
      h.url("/ingest/x"), body: Array(("x" + chunk.map { String(format: "%02x", $0) }.joined()).utf8))
    #expect(hex.status == 403 && hex.blockedReason == "model_weights")
    let event = try #require(h.events.next())
    #expect(event.reason == "model_weights" && event.detail.contains("bundle digits v1"))
    // Random bytes that are not the model pass.
    var g = SystemRandomNumberGenerator()
    let other = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &g) }
    let ok = try await h.send(h.url("/ingest/x"), body: other)
    #expect(ok.status == 200)
    await h.stop()
  }

  @Test("the byte budget is enforced per destination and window")
  func budget() async throws {
    let h = try await Harness(
      destinationExtras: """
          - name: budgeted
            host: 127.0.0.1
            port: UPSTREAM_PORT
            path_prefixes: [/b/]
            allow_private: true
            byte_budget: {bytes: 2500, window_seconds: 3600}
        """)
    let url = "https://127.0.0.1:\(h.upstream.port)/b/x"
    let first = try await h.send(url, body: [UInt8](repeating: 0x61, count: 1000))
    let second = try await h.send(url, body: [UInt8](repeating: 0x61, count: 1000))
    let third = try await h.send(url, body: [UInt8](repeating: 0x61, count: 1000))
    #expect(first.status == 200 && second.status == 200)
    #expect(third.status == 429 && third.blockedReason == "byte_budget")
    #expect(h.upstream.received.count == 2)
    // Another destination has its own (no) budget.
    let other = try await h.send(h.url("/ingest/x"), body: [UInt8](repeating: 0x61, count: 1000))
    #expect(other.status == 200)
    await h.stop()
  }

  @Test("an oversized body is refused with 413, declared or streamed")
  func oversized() async throws {
    let h = try await Harness(maxBody: 4096)
    let r = try await h.send(h.url("/ingest/x"), body: [UInt8](repeating: 0x41, count: 5000))
    #expect(r.status == 413 && r.blockedReason == "body_too_large")
    let ok = try await h.send(h.url("/ingest/x"), body: [UInt8](repeating: 0x41, count: 4000))
    #expect(ok.status == 200)
    await h.stop()
  }

  @Test("CONNECT is refused")
  func connect() async throws {
    let h = try await Harness()
    let (status, headers) = try await rawRequest(
      port: h.proxy.bound.port ?? 0, method: .CONNECT, uri: "localhost:\(h.upstream.port)")
    #expect(status == 403)
    #expect(headers.contains { $0.0 == "x-palisade-egress-block" && $0.1 == "destination" })
    #expect(h.upstream.received.isEmpty)
    await h.stop()
  }

  @Test("the alert webhook receives the event through the sidecar; a refused alert raises no further alert")
  func alertWebhook() async throws {
    let h = try await Harness(extraConfig: "alert_webhook: https://localhost:UPSTREAM_PORT/alerts")
    let r = try await h.send(h.url("/ingest/x"), body: Array(h.configuredCanary.utf8))
    #expect(r.blockedReason == "canary")
    try await waitUntil { h.upstream.received.count >= 1 }
    let alert = try #require(h.upstream.received.first)
    #expect(alert.uri == "/alerts" && alert.method == "POST")
    let event = try JSONDecoder().decode(EgressEvent.self, from: Data(alert.body))
    #expect(event.reason == "canary" && event.location == "body")
    #expect(!String(decoding: alert.body, as: UTF8.self).contains(h.configuredCanary))
    await h.stop()

    // An inspection rule that matches every event: the alert is refused, logged and counted, and that is all.
    let looping = try await Harness(
      extraConfig: "alert_webhook: https://localhost:UPSTREAM_PORT/alerts",
      canaryExtra: #"'"schema":"palisade.egress/v1"'"#)
    _ = try await looping.send(looping.url("/ingest/x"), body: Array(looping.configuredCanary.utf8))
    #expect(looping.events.next()?.reason == "canary")
    try await waitUntil {
      String(decoding: looping.proxy.metrics.render(), as: UTF8.self).contains(#"channel="webhook",result="failed"} 1"#)
    }
    try await Task.sleep(for: .milliseconds(200))
    #expect(looping.upstream.received.isEmpty)
    #expect(looping.events.next(timeoutSeconds: 1) == nil)
    let text = String(decoding: looping.proxy.metrics.render(), as: UTF8.self)
    #expect(text.contains(#"palisade_egress_requests_total{result="blocked",reason="canary",destination="local"} 2"#))
    await looping.stop()
  }

  @Test("a destination that allows CONNECT gets an uninspected tunnel (curl through it), counted")
  func connectAllowed() async throws {
    let h = try await Harness(
      destinationExtras: """
          - {name: tunnel, host: 127.0.0.1, port: UPSTREAM_PORT, allow_private: true, allow_connect: true}
        """)
    let (status, output) = try run([
      "curl", "-sS", "--max-time", "20", "--proxytunnel", "-x", "http://127.0.0.1:\(h.proxy.bound.port ?? 0)",
      "--cacert", h.pki.path("server-ca.pem"), "-d", "hello", "https://127.0.0.1:\(h.upstream.port)/anything",
    ])
    #expect(status == 0, "\(output)")
    #expect(output.hasSuffix("ok 5"), "\(output)")
    #expect(h.upstream.received.map(\.uri) == ["/anything"])
    let text = String(decoding: h.proxy.metrics.render(), as: UTF8.self)
    #expect(text.contains(#"palisade_egress_connect_tunnels_total{destination="tunnel"} 1"#))
    // The same host on the same port without allow_connect for another name: refused.
    let (refused, _) = try await rawRequest(
      port: h.proxy.bound.port ?? 0, method: .CONNECT, uri: "localhost:\(h.upstream.port)")
    #expect(refused == 403)
    await h.stop()
  }

  @Test("metrics count allowed and blocked requests by reason and destination")
  func metrics() async throws {
    let h = try await Harness()
    _ = try await h.send(h.url("/ingest/x"), body: Array("fine".utf8))
    _ = try await h.send(h.url("/nope"))
    let text = String(decoding: h.proxy.metrics.render(), as: UTF8.self)
    #expect(text.contains(#"palisade_egress_requests_total{result="allowed",reason="",destination="local"} 1"#))
    #expect(text.contains(#"palisade_egress_requests_total{result="blocked",reason="path",destination="local"} 1"#))
    #expect(text.contains("palisade_egress_weight_windows"))
    await h.stop()
  }
}

enum TestPKISupport {
  static let spiffe = TestPKI.spiffe("spiffe://palisade.test/sa/egress")
}
