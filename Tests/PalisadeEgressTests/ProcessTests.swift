import Foundation
#if canImport(Glibc)
  import Glibc
#endif
import PalisadeEgress
import PalisadeOutbound
import PalisadeTestSupport
import Testing

/// A `palisade egress` process, as operators run it.
final class SidecarProcess {
  let process = Process()
  let stderr = Pipe()

  init(config: String, prefix: [String] = []) throws {
    if prefix.isEmpty {
      process.executableURL = URL(fileURLWithPath: palisadeBinary)
      process.arguments = ["egress", "--config", config]
    } else {
      process.executableURL = URL(fileURLWithPath: prefix[0])
      process.arguments = Array(prefix.dropFirst()) + [palisadeBinary, "egress", "--config", config]
    }
    process.standardError = stderr
    process.standardOutput = FileHandle.nullDevice
    try process.run()
  }

  /// Waits until `host:port` accepts connections.
  func waitListening(host: String, port: Int) async throws -> Bool {
    for _ in 0..<600 {
      if !process.isRunning { return false }
      if canConnect(host: host, port: port) { return true }
      try await Task.sleep(for: .milliseconds(50))
    }
    return false
  }

  func kill() {
    if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
  }

  var log: String { String(decoding: stderr.fileHandleForReading.availableData, as: UTF8.self) }
}

func canConnect(host: String, port: Int) -> Bool {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(fd) }
  var addr = sockaddr_in()
  addr.sin_family = sa_family_t(AF_INET)
  addr.sin_port = in_port_t(UInt16(port).bigEndian)
  inet_pton(AF_INET, host, &addr.sin_addr)
  return withUnsafePointer(to: &addr) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
  } == 0
}

/// A TCP port that is free now (bound to port 0, then released).
func freePort() -> Int {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(fd) }
  var addr = sockaddr_in()
  addr.sin_family = sa_family_t(AF_INET)
  addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
  _ = withUnsafePointer(to: &addr) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
  }
  var len = socklen_t(MemoryLayout<sockaddr_in>.size)
  _ = withUnsafeMutablePointer(to: &addr) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
  }
  return Int(UInt16(bigEndian: addr.sin_port))
}

/// Polls `condition` for up to 15 s.
func waitUntil(_ condition: () async -> Bool) async throws {
  for _ in 0..<600 {
    if await condition() { return }
    try await Task.sleep(for: .milliseconds(25))
  }
}

@discardableResult
func run(_ args: [String]) throws -> (Int32, String) {
  let p = Process()
  p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
  p.arguments = args
  let out = Pipe()
  p.standardOutput = out
  p.standardError = out
  try p.run()
  let data = out.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

@Suite("Egress sidecar processes", .serialized)
struct EgressProcessTests {
  static func writeConfig(_ pki: TestPKI, host: String, port: Int, upstreamPort: Int) throws -> String {
    try pki.write(
      "egress.yaml",
      """
      listen: {host: \(host), port: \(port)}
      admin: {enabled: false}
      tls: {ca_file: server-ca.pem}
      destinations:
        - {name: local, host: localhost, port: \(upstreamPort), path_prefixes: [/ingest/], allow_private: true}
      """)
  }

  @Test("a config that does not load starts nothing (exit 2)")
  func badConfig() throws {
    let pki = try TestPKI()
    let path = try pki.write("bad.yaml", "destinations:\n  - {host: a.example, mthods: [POST]}\n")
    let (status, output) = try run([palisadeBinary, "egress", "--config", path])
    #expect(status == 2)
    #expect(output.contains("destinations[0].mthods"))
  }

  @Test("sidecar killed: the server's client fails closed and queues; restarted: the queue is delivered")
  func failClosed() async throws {
    let pki = try TestPKI()
    let upstream = try TestHTTPSServer(pki: pki)
    defer { upstream.stop() }
    let port = freePort()
    let config = try Self.writeConfig(pki, host: "127.0.0.1", port: port, upstreamPort: upstream.port)
    let url = "https://localhost:\(upstream.port)/ingest/checkpoint"
    var settings = EgressClient.Settings()
    settings.initialBackoff = .milliseconds(50)
    settings.maxBackoff = .milliseconds(400)
    let client = EgressClient(proxy: .tcp(host: "127.0.0.1", port: port), settings: settings)

    let first = try SidecarProcess(config: config)
    #expect(try await first.waitListening(host: "127.0.0.1", port: port))
    try await client.enqueue(OutboundRequest(url: url, body: Array("one".utf8)))
    try await waitUntil { await client.delivered.count >= 1 }
    #expect(await client.delivered.count == 1)

    first.kill()
    await #expect(throws: OutboundError.self) {
      _ = try await client.send(OutboundRequest(url: url, body: Array("direct?".utf8)))
    }
    try await client.enqueue(OutboundRequest(url: url, body: Array("two".utf8)))
    try await client.enqueue(OutboundRequest(url: url, body: Array("three".utf8)))
    try await waitUntil { await client.failedAttempts >= 3 }
    #expect(await client.failedAttempts >= 3)
    #expect(await client.pending == 2)
    #expect(upstream.received.count == 1)  // nothing went around the sidecar

    let second = try SidecarProcess(config: config)
    defer { second.kill() }
    #expect(try await second.waitListening(host: "127.0.0.1", port: port))
    try await waitUntil { await client.delivered.count >= 3 }
    #expect(await client.delivered.count == 3)
    #expect(await client.pending == 0)
    #expect(upstream.received.map { String(decoding: $0.body, as: UTF8.self) } == ["one", "two", "three"])
    await client.shutdown()
  }

  static let isRoot = getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip")

  @Test(
    "a network namespace whose only link leads to the sidecar reaches destinations through it, and nothing directly",
    .enabled(if: EgressProcessTests.isRoot, "needs root and iproute2 for ip netns; skipped"))
  func networkNamespace() async throws {
    let tag = String(UInt32.random(in: 0..<0xFFFF), radix: 16)
    let ns = "pal-egress-\(tag)"
    let hostSide = "vpe\(tag)a"
    let nsSide = "vpe\(tag)b"
    let subnet = Int.random(in: 0..<64) * 4
    let hostIP = "10.231.\(subnet / 4).1"
    let nsIP = "10.231.\(subnet / 4).2"
    defer {
      _ = try? run(["ip", "link", "del", hostSide])
      _ = try? run(["ip", "netns", "del", ns])
    }
    for cmd in [
      ["ip", "netns", "add", ns],
      ["ip", "link", "add", hostSide, "type", "veth", "peer", "name", nsSide],
      ["ip", "link", "set", nsSide, "netns", ns],
      ["ip", "addr", "add", "\(hostIP)/30", "dev", hostSide],
      ["ip", "link", "set", hostSide, "up"],
      ["ip", "netns", "exec", ns, "ip", "addr", "add", "\(nsIP)/30", "dev", nsSide],
      ["ip", "netns", "exec", ns, "ip", "link", "set", nsSide, "up"],
      ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ] {
      let (status, output) = try run(cmd)
      try #require(status == 0, "\(cmd.joined(separator: " ")): \(output)")
    }
    // The destination listens outside the namespace, on the host's loopback.
    let pki = try TestPKI()
    let upstream = try TestHTTPSServer(pki: pki)
    defer { upstream.stop() }
    let port = 3128
    let config = try Self.writeConfig(pki, host: hostIP, port: port, upstreamPort: upstream.port)
    let sidecar = try SidecarProcess(config: config)
    defer { sidecar.kill() }
    #expect(try await sidecar.waitListening(host: hostIP, port: port))

    let script = """
      import json, socket, sys
      proxy, upstream = sys.argv[1], int(sys.argv[2])
      out = {}
      s = socket.create_connection((proxy, 3128), timeout=10)
      s.sendall(b"POST https://localhost:%d/ingest/x HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nhello" % upstream)
      data = b""
      while True:
          chunk = s.recv(4096)
          if not chunk: break
          data += chunk
      out["via_proxy"] = data.split(b"\\r\\n")[0].decode() + " " + data.split(b"\\r\\n\\r\\n", 1)[-1].decode()
      for name, addr in [("direct_loopback", ("127.0.0.1", upstream)), ("direct_host", (proxy, upstream)), ("direct_internet", ("1.1.1.1", 443))]:
          try:
              socket.create_connection(addr, timeout=3).close()
              out[name] = "connected"
          except OSError as e:
              out[name] = type(e).__name__ + ": " + str(e)
      print(json.dumps(out))
      """
    let (status, output) = try run(["ip", "netns", "exec", ns, "python3", "-c", script, hostIP, String(upstream.port)])
    #expect(status == 0, "\(output)")
    let result = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: String] ?? [:]
    #expect(result["via_proxy"] == "HTTP/1.1 200 OK ok 5", "\(output)")
    for key in ["direct_loopback", "direct_host", "direct_internet"] {
      #expect(result[key] != nil && result[key] != "connected", "\(key): \(output)")
    }
    #expect(upstream.received.count == 1)
  }
}
