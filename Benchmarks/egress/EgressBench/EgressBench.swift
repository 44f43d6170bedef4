// Egress sidecar benchmark: latency and throughput of requests with 1 KB and 1 MB bodies sent through the
// sidecar (full inspection, TLS originated by the sidecar) against the same requests sent directly over TLS to
// the same local HTTPS server, in the same run. Both paths open one TLS connection per request.
//
//   swift build -c release --scratch-path .build-release --product egress-bench
//   .build-release/release/egress-bench [--requests N] [--concurrency C]
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import PalisadeEgress
import PalisadeOutbound
import Crypto
import SwiftASN1
import X509

/// The destination: answers 200 with the body length.
final class Upstream: ChannelInboundHandler, @unchecked Sendable {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart
  var count = 0
  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head: count = 0
    case .body(let b): count += b.readableBytes
    case .end:
      let reply = ByteBuffer(string: "ok \(count)")
      var headers = HTTPHeaders()
      headers.add(name: "content-length", value: String(reply.readableBytes))
      context.write(
        wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
      context.write(wrapOutboundOut(.body(.byteBuffer(reply))), promise: nil)
      context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
  }
}

/// A throwaway CA and a server certificate for localhost/127.0.0.1, written to a temp directory (keys never leave it).
struct BenchPKI {
  let directory: URL
  func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

  init() throws {
    directory = FileManager.default.temporaryDirectory.appendingPathComponent("egress-bench-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let caKey = P256.Signing.PrivateKey()
    let caName = try DistinguishedName { CommonName("Egress Bench CA") }
    let ca = try Certificate(
      version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: Certificate.PublicKey(caKey.publicKey),
      notValidBefore: Date().addingTimeInterval(-3600), notValidAfter: Date().addingTimeInterval(86_400),
      issuer: caName, subject: caName, signatureAlgorithm: .ecdsaWithSHA256,
      extensions: try Certificate.Extensions {
        Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
        Critical(KeyUsage(keyCertSign: true))
      },
      issuerPrivateKey: Certificate.PrivateKey(caKey))
    let key = P256.Signing.PrivateKey()
    let leaf = try Certificate(
      version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: Certificate.PublicKey(key.publicKey),
      notValidBefore: Date().addingTimeInterval(-3600), notValidAfter: Date().addingTimeInterval(86_400),
      issuer: caName, subject: try DistinguishedName { CommonName("localhost") }, signatureAlgorithm: .ecdsaWithSHA256,
      extensions: try Certificate.Extensions {
        Critical(BasicConstraints.notCertificateAuthority)
        SubjectAlternativeNames([.dnsName("localhost"), .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1]))])
        try ExtendedKeyUsage([.serverAuth])
      },
      issuerPrivateKey: Certificate.PrivateKey(caKey))
    try ca.serializeAsPEM().pemString.write(toFile: path("server-ca.pem"), atomically: true, encoding: .utf8)
    try leaf.serializeAsPEM().pemString.write(toFile: path("server.pem"), atomically: true, encoding: .utf8)
    try key.pemRepresentation.write(toFile: path("server.key"), atomically: true, encoding: .utf8)
    try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path("server.key"))
  }
}

func argument(_ name: String, _ fallback: Int) -> Int {
  let args = CommandLine.arguments
  guard let i = args.firstIndex(of: name), i + 1 < args.count, let v = Int(args[i + 1]) else { return fallback }
  return v
}

struct Result {
  var p50: Double
  var p99: Double
  var rps: Double
  var mbps: Double
}

func measure(
  _ body: [UInt8], requests: Int, concurrency: Int, _ send: @escaping @Sendable ([UInt8]) async throws -> Int
)
  async throws -> Result
{
  for _ in 0..<5 {
    let status = try await send(body)
    precondition(status == 200, "warm-up request failed with \(status)")
  }
  var latencies: [Double] = []
  for _ in 0..<requests {
    let start = ContinuousClock.now
    let status = try await send(body)
    precondition(status == 200, "request failed with \(status)")
    let d = ContinuousClock.now - start
    latencies.append(Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) / 1e15)
  }
  latencies.sort()
  let total = requests * 2
  let start = ContinuousClock.now
  try await withThrowingTaskGroup(of: Void.self) { group in
    for worker in 0..<concurrency {
      group.addTask {
        for _ in stride(from: worker, to: total, by: concurrency) { _ = try await send(body) }
      }
    }
    try await group.waitForAll()
  }
  let elapsed = ContinuousClock.now - start
  let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
  return Result(
    p50: latencies[latencies.count / 2], p99: latencies[min(latencies.count - 1, latencies.count * 99 / 100)],
    rps: Double(total) / seconds, mbps: Double(total * body.count) / seconds / 1e6)
}

@main
enum EgressBench {
  static func main() async throws {
    let pki = try BenchPKI()
    defer { try? FileManager.default.removeItem(at: pki.directory) }
    let serverTLS = try NIOSSLContext(
      configuration: .makeServerConfiguration(
        certificateChain: try NIOSSLCertificate.fromPEMFile(pki.path("server.pem")).map { .certificate($0) },
        privateKey: .privateKey(try NIOSSLPrivateKey(file: pki.path("server.key"), format: .pem))))
    let upstreamChannel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverTLS))
          try channel.pipeline.syncOperations.configureHTTPServerPipeline()
          try channel.pipeline.syncOperations.addHandler(Upstream())
        }
      }
      .bind(host: "127.0.0.1", port: 0).get()
    let upstreamPort = upstreamChannel.localAddress?.port ?? 0

    // A bundle with 8 MiB of random weights and a canary, so that every inspection runs at full cost.
    let bundle = pki.directory.appendingPathComponent("models/bench/1")
    try FileManager.default.createDirectory(at: bundle, withIntermediateDirectories: true)
    var rng = SystemRandomNumberGenerator()
    try Data((0..<(8 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) }).write(
      to: bundle.appendingPathComponent("weights.bin"))
    try Data(#"{"name": "bench", "version": 1, "canary_tokens": ["bench-canary-0123456789"]}"#.utf8)
      .write(to: bundle.appendingPathComponent("manifest.json"))

    let config = try EgressConfig.parse(
      """
      listen: {host: 127.0.0.1, port: 0}
      admin: {enabled: false}
      tls: {ca_file: \(pki.path("server-ca.pem"))}
      limits: {max_body_bytes: 4194304}
      destinations:
        - {name: bench, host: localhost, port: \(upstreamPort), path_prefixes: [/], allow_private: true}
      inspection:
        bundle_directories: [\(pki.directory.appendingPathComponent("models").path)]
      logging: {level: error}
      """)
    var logger = Logger(label: "egress-bench")
    logger.logLevel = .error
    let proxy = try EgressProxy(config: config, logger: logger)
    let fingerprints = try BundleFingerprints.load(
      directories: config.inspection.bundleDirectories, settings: config.inspection.weights)
    let proxyTask = Task { try await proxy.run() }
    while proxy.bound.port == nil { try await Task.sleep(for: .milliseconds(10)) }
    let proxyPort = proxy.bound.port ?? 0

    var clientTLSConfig = TLSConfiguration.makeClientConfiguration()
    clientTLSConfig.trustRoots = .file(pki.path("server-ca.pem"))
    let clientTLS = try NIOSSLContext(configuration: clientTLSConfig)

    // One request straight to the destination over a fresh TLS connection.
    let direct: @Sendable ([UInt8]) async throws -> Int = { body in
      let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        .connect(host: "127.0.0.1", port: upstreamPort) { channel in
          channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(
              NIOSSLClientHandler(context: clientTLS, serverHostname: "localhost"))
            try channel.pipeline.syncOperations.addHTTPClientHandlers()
            return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
              wrappingChannelSynchronously: channel)
          }
        }
      return try await channel.executeThenClose { inbound, outbound in
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/ingest")
        head.headers.add(name: "host", value: "localhost:\(upstreamPort)")
        head.headers.add(name: "content-length", value: String(body.count))
        head.headers.add(name: "connection", value: "close")
        try await outbound.write(.head(head))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
        try await outbound.write(.end(nil))
        var status = 0
        for try await part in inbound {
          if case .head(let h) = part { status = Int(h.status.code) }
          if case .end = part { break }
        }
        return status
      }
    }

    let viaClient = EgressClient(proxy: .tcp(host: "127.0.0.1", port: proxyPort))
    let viaSidecar: @Sendable ([UInt8]) async throws -> Int = { body in
      try await viaClient.send(OutboundRequest(url: "https://localhost:\(upstreamPort)/ingest", body: body)).status
    }

    let requests = argument("--requests", 200)
    let concurrency = argument("--concurrency", 4)
    print(
      "egress-bench: \(requests) sequential requests for latency, \(requests * 2) at concurrency \(concurrency) for throughput"
    )
    print("inspection: \(proxy.summary)")
    print("")
    print("| body | path | p50 ms | p99 ms | req/s | MB/s |")
    print("|---|---|---|---|---|---|")
    var ratios: [String] = []
    for (label, size, n) in [("1 KB", 1024, requests), ("1 MB", 1 << 20, max(20, requests / 10))] {
      // Printable random text: the kind of body audit shipping sends, and every base64/hex decoder runs on it.
      let alphabet = Array("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 {}\":,.\n".utf8)
      let body = (0..<size).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] }
      // The inspection alone (same settings and fingerprints as the proxy), to separate it from the network hop.
      let inspector = Inspector(
        settings: config.inspection, canaries: fingerprints.canaries, weights: fingerprints.weights)
      let inspectStart = ContinuousClock.now
      for _ in 0..<10 {
        precondition(inspector.inspect(uri: "/ingest", headers: [], body: body) == nil, "benign body flagged")
      }
      let inspectMs = (ContinuousClock.now - inspectStart) / 10
      let ms = Double(inspectMs.components.attoseconds) / 1e15 + Double(inspectMs.components.seconds) * 1e3
      print(String(format: "inspection alone, %@: %.3f ms per request", label, ms))
      if CommandLine.arguments.contains("--breakdown") {
        for (name, tweak) in [
          ("no base64 decoding", { (s: inout EgressConfig.Inspection) in s.decodeBase64 = false }),
          ("no hex decoding", { (s: inout EgressConfig.Inspection) in s.decodeHex = false }),
          (
            "no runs at all",
            { (s: inout EgressConfig.Inspection) in
              s.decodeHex = false
              s.decodeBase64 = false
              s.highEntropy.enabled = false
            }
          ),
        ] {
          var settings = config.inspection
          tweak(&settings)
          let i = Inspector(settings: settings, canaries: fingerprints.canaries, weights: fingerprints.weights)
          let t0 = ContinuousClock.now
          for _ in 0..<10 { _ = i.inspect(uri: "/ingest", headers: [], body: body) }
          print("  \(name): \((ContinuousClock.now - t0) / 10)")
        }
        let t0 = ContinuousClock.now
        for _ in 0..<10 { _ = fingerprints.weights?.firstMatch(in: body) }
        print("  weights alone: \((ContinuousClock.now - t0) / 10)")
      }
      let d = try await measure(body, requests: n, concurrency: concurrency, direct)
      let s = try await measure(body, requests: n, concurrency: concurrency, viaSidecar)
      for (path, r) in [("direct TLS", d), ("via sidecar", s)] {
        print(String(format: "| %@ | %@ | %.2f | %.2f | %.0f | %.1f |", label, path, r.p50, r.p99, r.rps, r.mbps))
      }
      ratios.append(
        String(
          format: "%@: p50 latency +%.2f ms (x%.2f), throughput x%.2f of direct", label, s.p50 - d.p50, s.p50 / d.p50,
          s.rps / d.rps))
    }
    print("")
    for r in ratios { print(r) }
    proxyTask.cancel()
    _ = try? await proxyTask.value
    try await upstreamChannel.close()

  }
}
