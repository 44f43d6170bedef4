import Foundation
#if canImport(Glibc)
  import Glibc
#endif
import PalisadeEgress
import PalisadeOutbound
import PalisadeSupport
import Testing

/// Slow and surplus clients against a real proxy on loopback, with raw sockets: timeouts, connection caps and the
/// in-flight body budget.
@Suite("Egress connection limits", .serialized)
struct ConnectionLimitTests {
  @Test("a connection that sends half a request line is closed after header_timeout, on the proxy and the admin port")
  func halfRequestLine() async throws {
    let h = try await Harness(limits: "header_timeout_seconds: 1")
    for port in [h.proxy.bound.port ?? 0, h.proxy.adminBound.port ?? 0] {
      let s = try RawSocket(tcpPort: port)
      #expect(s.send("POST https://localhost:\(h.upstream.port)/ing"))
      let (data, closed) = s.readAll()
      #expect(closed && data.isEmpty, "port \(port): the connection stays open")
    }
    #expect(
      try await h.waitForMetric(
        #"palisade_egress_connections_refused_total{listener="proxy",reason="header_timeout"} 1"#))
    #expect(
      try await h.waitForMetric(
        #"palisade_egress_connections_refused_total{listener="admin",reason="header_timeout"} 1"#))
    // Whole requests are not affected.
    let ok = try await h.send(h.url("/ingest/x"), body: Array("fine".utf8))
    #expect(ok.status == 200)
    #expect(h.upstream.received.count == 1)
    await h.stop()
  }

  @Test("a body that stalls is closed after idle_timeout; one that trickles in is closed after request_timeout")
  func slowBodies() async throws {
    let h = try await Harness(
      limits: "idle_timeout_seconds: 1, request_timeout_seconds: 120, header_timeout_seconds: 5")
    let head =
      "POST https://localhost:\(h.upstream.port)/ingest/x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n"
    let stalled = try RawSocket(tcpPort: h.proxy.bound.port ?? 0)
    #expect(stalled.send(head + "0123456789"))
    let (data, closed) = stalled.readAll()
    #expect(closed && data.isEmpty)
    #expect(
      try await h.waitForMetric(#"palisade_egress_connections_refused_total{listener="proxy",reason="idle_timeout"} 1"#)
    )

    // One byte every 100 ms: never idle for 10 s, but never done within request_timeout (2 s) either.
    let h2 = try await Harness(
      limits: "idle_timeout_seconds: 10, request_timeout_seconds: 2, header_timeout_seconds: 5")
    let trickle = try RawSocket(tcpPort: h2.proxy.bound.port ?? 0)
    #expect(trickle.send(head))
    var closedByProxy = false
    for _ in 0..<600 {  // up to 60 s of trickling; the proxy closes long before
      if trickle.peerClosed || !trickle.send("x") {
        closedByProxy = true
        break
      }
      try await Task.sleep(for: .milliseconds(100))
    }
    #expect(closedByProxy)
    #expect(
      try await h2.waitForMetric(
        #"palisade_egress_connections_refused_total{listener="proxy",reason="request_timeout"} 1"#))
    #expect(h.upstream.received.isEmpty && h2.upstream.received.isEmpty)
    await h.stop()
    await h2.stop()
  }

  @Test("a client that pipelines requests and never reads the answers is closed once the socket stays full")
  func neverReads() async throws {
    let h = try await Harness(limits: "idle_timeout_seconds: 1")
    let sink = try RawSocket(tcpPort: h.proxy.adminBound.port ?? 0, receiveBuffer: 4096)
    let request = String(repeating: "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n", count: 100)
    let stalled = #"palisade_egress_connections_refused_total{listener="admin",reason="write_stalled"} 1"#
    // More requests whenever the socket takes them, until the server's buffers are full and the guard fires
    // (a bound of 20 s for a broken test, not a timing assertion).
    for _ in 0..<400 where !h.metricsText.contains(stalled) {
      sink.sendWithoutWaiting(request)
      try await Task.sleep(for: .milliseconds(50))
    }
    #expect(h.metricsText.contains(stalled))
    #expect(sink.readAll().closed, "the stalled connection is closed")
    await h.stop()
  }

  @Test("/metrics is rendered at most max_metrics_renders_per_second times a second; the rest get the last render")
  func metricsRenderBudget() async throws {
    let h = try await Harness(admin: "max_metrics_renders_per_second: 2")
    for _ in 0..<10 {
      let s = try RawSocket(tcpPort: h.proxy.adminBound.port ?? 0)
      #expect(s.send("GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"))
      let answer = String(decoding: s.readAll().data, as: UTF8.self)
      #expect(answer.hasPrefix("HTTP/1.1 200") && answer.contains("palisade_egress_open_connections"))
    }
    #expect(
      h.metricsText.split(separator: "\n").contains { $0.hasPrefix("palisade_egress_admin_metrics_cached_total ") })
    await h.stop()
  }

  @Test("the connection caps refuse the N+1th connection (per address, then in total) with 503, on both listeners")
  func connectionCaps() async throws {
    let h = try await Harness(
      limits:
        "max_connections: 3, max_connections_per_address: 2, header_timeout_seconds: 120, idle_timeout_seconds: 120",
      admin: "max_connections: 1")
    let port = h.proxy.bound.port ?? 0
    let a = try RawSocket(tcpPort: port)
    let b = try RawSocket(tcpPort: port)
    #expect(try await h.waitForMetric(#"palisade_egress_open_connections{listener="proxy"} 2.0"#))
    // Third from 127.0.0.1: over the per-address cap.
    let c = try RawSocket(tcpPort: port)
    let (refused, closed) = c.readAll()
    let text = String(decoding: refused, as: UTF8.self)
    #expect(closed && text.hasPrefix("HTTP/1.1 503") && text.contains("too_many_connections"), "\(text)")
    // A Unix socket client is another source: admitted, and now the total cap is reached.
    let u = try RawSocket(unixPath: h.proxySocketPath)
    #expect(try await h.waitForMetric(#"palisade_egress_open_connections{listener="proxy"} 3.0"#))
    let u2 = try RawSocket(unixPath: h.proxySocketPath)
    let (refusedTotal, closedTotal) = u2.readAll()
    #expect(closedTotal && String(decoding: refusedTotal, as: UTF8.self).hasPrefix("HTTP/1.1 503"))
    let metrics = h.metricsText
    #expect(
      metrics.contains(
        #"palisade_egress_connections_refused_total{listener="proxy",reason="max_connections_per_address"} 1"#))
    #expect(
      metrics.contains(#"palisade_egress_connections_refused_total{listener="proxy",reason="max_connections"} 1"#))
    // A closed connection frees its place.
    a.close()
    #expect(try await h.waitForMetric(#"palisade_egress_open_connections{listener="proxy"} 2.0"#))
    let ok = try await h.send(h.url("/ingest/x"), body: Array("after".utf8))
    #expect(ok.status == 200)

    let adminPort = h.proxy.adminBound.port ?? 0
    let heldAdmin = try RawSocket(tcpPort: adminPort)
    #expect(try await h.waitForMetric(#"palisade_egress_open_connections{listener="admin"} 1.0"#))
    let extraAdmin = try RawSocket(tcpPort: adminPort)
    let (adminRefused, adminClosed) = extraAdmin.readAll()
    #expect(adminClosed && String(decoding: adminRefused, as: UTF8.self).hasPrefix("HTTP/1.1 503"))
    #expect(
      h.metricsText.contains(#"palisade_egress_connections_refused_total{listener="admin",reason="max_connections"} 1"#)
    )
    for s in [b, c, u, u2, heldAdmin, extraAdmin] { s.close() }
    await h.stop()
  }

  @Test("many slow uploads cannot grow memory past max_inflight_body_bytes: the next body gets 503 until one finishes")
  func inflightBudget() async throws {
    let h = try await Harness(maxBody: 8000, limits: "max_inflight_body_bytes: 10000, idle_timeout_seconds: 120")
    let slow = try RawSocket(tcpPort: h.proxy.bound.port ?? 0)
    let head =
      "POST https://localhost:\(h.upstream.port)/ingest/slow HTTP/1.1\r\nhost: localhost\r\ncontent-length: 8000\r\nconnection: close\r\n\r\n"
    #expect(slow.send(head + String(repeating: "a", count: 6000)))
    #expect(try await h.waitForMetric("palisade_egress_inflight_body_bytes 6000.0"))
    let refused = try await h.send(h.url("/ingest/other"), body: [UInt8](repeating: 0x62, count: 5000))
    #expect(refused.status == 503)
    #expect(refused.headers.contains { $0.0 == "x-palisade-egress-error" && $0.1 == "overloaded" })
    #expect(refused.blockedReason == nil, "not a policy refusal: the server's client retries it")
    #expect(
      h.metricsText.contains(
        #"palisade_egress_connections_refused_total{listener="proxy",reason="max_inflight_body_bytes"} 1"#))
    // The slow upload finishes and is answered; its bytes are given back.
    #expect(slow.send(String(repeating: "a", count: 2000)))
    let (answer, _) = slow.readAll()
    #expect(String(decoding: answer, as: UTF8.self).hasPrefix("HTTP/1.1 200"))
    #expect(try await h.waitForMetric("palisade_egress_inflight_body_bytes 0.0"))
    let ok = try await h.send(h.url("/ingest/other"), body: [UInt8](repeating: 0x62, count: 5000))
    #expect(ok.status == 200)
    #expect(h.upstream.received.map(\.uri) == ["/ingest/slow", "/ingest/other"])
    await h.stop()
  }

  @Test("a compressed body (Content-Encoding or a transfer coding other than chunked) is refused with 415")
  func contentEncoding() async throws {
    let h = try await Harness()
    for (name, value) in [
      ("content-encoding", "gzip"), ("content-encoding", "identity, br"), ("Content-Encoding", "deflate"),
    ] {
      let r = try await h.send(h.url("/ingest/x"), headers: [(name, value)], body: [0x1f, 0x8b, 0x08, 0x00])
      #expect(r.status == 415 && r.blockedReason == "content_encoding", "\(name): \(value)")
    }
    let identity = try await h.send(
      h.url("/ingest/x"), headers: [("content-encoding", "identity")], body: Array("plain".utf8))
    #expect(identity.status == 200)
    let s = try RawSocket(tcpPort: h.proxy.bound.port ?? 0)
    s.send(
      "POST https://localhost:\(h.upstream.port)/ingest/x HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    )
    let (answer, _) = s.readAll()
    #expect(
      String(decoding: answer, as: UTF8.self).hasPrefix("HTTP/1.1 415"), "\(String(decoding: answer, as: UTF8.self))")
    #expect(h.upstream.received.count == 1)
    let event = try #require(h.events.next())
    #expect(event.reason == "content_encoding" && event.detail.hasPrefix("Content-Encoding gzip"))
    // An unknown coding is refused too, and its text (the sender's) is not echoed into events and logs.
    let odd = try await h.send(h.url("/ingest/x"), headers: [("content-encoding", "leak-7f3e9a1c55d04b2e")], body: [1])
    #expect(odd.status == 415 && odd.blockedReason == "content_encoding")
    var last: EgressEvent?
    while let e = h.events.next(timeoutSeconds: 1) { last = e }
    #expect(last?.detail.contains("(unrecognised)") == true && last?.detail.contains("leak-") == false)
    await h.stop()
  }

  @Test("IPv4-compatible and NAT64 forms of the metadata address are refused as metadata even with allow_private")
  func embeddedMetadata() async throws {
    let h = try await Harness(
      destinationExtras: """
          - {name: compat, host: "::a9fe:a9fe", port: 80, scheme: http, allow_private: true}
          - {name: nat64, host: "64:ff9b::a9fe:a9fe", port: 80, scheme: http, allow_private: true}
          - {name: sixtofour, host: "2002:a9fe:a9fe::1", port: 80, scheme: http, allow_private: true}
        """)
    for host in ["::a9fe:a9fe", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1"] {
      let r = try await h.send("http://[\(host)]/latest/meta-data/")
      #expect(
        r.status == 403 && r.blockedReason == "metadata_address", "\(host): \(r.status) \(r.blockedReason ?? "-")")
    }
    await h.stop()
  }
}
