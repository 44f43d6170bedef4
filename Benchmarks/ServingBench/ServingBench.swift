import Dispatch
import Foundation
import GRPCCore
import Logging
import NIOCore
import NIOPosix
import PalisadeClient
import PalisadeCore
import PalisadeProto
import PalisadeServer
import PalisadeTestSupport
import PalisadeIdentity
import PalisadePolicy

/// Serving benchmark: `serving-bench server` runs Palisade over mTLS with a tiny test model (the `simple`
/// add/sub model: two INT32 [1,16] inputs); `serving-bench client` calls it from another process and prints
/// latency percentiles and throughput. Benchmarks/serving.sh runs both and reads the server's CPU time.
@main
enum ServingBench {
  static func main() async throws {
    _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    let args = CommandLine.arguments.dropFirst()
    guard let mode = args.first else {
      print("usage: serving-bench server DIR | client DIR PORT CALLS CONCURRENCY [raw|typed] | auth [ITERATIONS]")
      exit(2)
    }
    let dir = args.dropFirst().first ?? "/tmp/palisade-bench"
    switch mode {
    case "server": try await server(dir: dir)
    case "auth": try authBench(iterations: Int(dir) ?? 20_000)
    case "client":
      let rest = Array(args.dropFirst(2))
      try await client(
        dir: dir, port: Int(rest[0]) ?? 0, calls: Int(rest[1]) ?? 5000, concurrency: Int(rest[2]) ?? 1,
        raw: rest.count < 4 || rest[3] == "raw")
    default:
      print("unknown mode \(mode)")
      exit(2)
    }
  }

  static func server(dir: String) async throws {
    let server = try await TestServer.start(models: [AddSubModel()]) { $0.admin.enabled = false }
    let client = try server.pki.client("bench", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/bench")])
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for (from, to) in [(client.cert, "client.pem"), (client.key, "client.key"), (server.pki.path("ca-bundle.pem"), "ca.pem")] {
      try? FileManager.default.removeItem(atPath: "\(dir)/\(to)")
      try FileManager.default.copyItem(atPath: from, toPath: "\(dir)/\(to)")
    }
    try server.pki.token(for: client.issued, ttl: 850).write(toFile: "\(dir)/token", atomically: true, encoding: .utf8)
    try "\(server.port)".write(toFile: "\(dir)/port", atomically: true, encoding: .utf8)
    // Runs until SIGTERM.
    let stop = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
    signal(SIGTERM, SIG_IGN)
    stop.setEventHandler { server.runtime.shutdown() }
    stop.resume()
    try await server.wait()
  }

  /// Per-call cost of authentication (token verification, cached and uncached) plus authorisation (a policy
  /// decision and a rate-limit bucket), in process.
  static func authBench(iterations: Int) throws {
    let pki = try TestPKI()
    let client = try pki.client("bench", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/bench")])
    let identity = try PeerIdentity(certificate: client.issued.certificate)
    let jwks = try JWKS.parse(Data(try pki.jwksJSON().utf8))
    let verifier = TokenVerifier(
      settings: .init(audience: TestPKI.audience),
      issuers: [.init(issuer: TestPKI.issuerName, kind: .oauth, keys: jwks, requireCertificateBinding: true)])
    let policy = try Policy.parse(
      TestServer.allowAllPolicy + "\n    models: [\"simple*\"]\n    rate_limit: {per_second: 1000000, burst: 1000000}\n")
    let limiter = RateLimiter()
    let tokens = try (0..<iterations).map { _ in "Bearer " + (try pki.token(for: client.issued)) }
    func time(_ body: () throws -> Void) rethrows -> Double {
      let start = ContinuousClock.now
      try body()
      let d = ContinuousClock.now - start
      return (Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12) / Double(iterations)
    }
    let uncached = try time { for t in tokens { _ = try verifier.verify(authorization: t, identity: identity) } }
    let cached = try time { for _ in 0..<iterations { _ = try verifier.verify(authorization: tokens[0], identity: identity) } }
    let facts = Policy.CallFacts(
      spiffeID: identity.spiffeID, subject: nil, scopes: [], rpc: "ModelInfer", model: "simple")
    let authorise = time {
      for _ in 0..<iterations {
        let d = policy.decide(facts)
        if let limit = d.rateLimit { _ = limiter.acquire("\(d.rule ?? "")\u{0}\(facts.spiffeID)", limit: limit) }
      }
    }
    print(String(format: "token_uncached_us=%.2f token_cached_us=%.2f authorise_us=%.2f cached_total_us=%.2f", uncached, cached, authorise, cached + authorise))
  }

  static func client(dir: String, port: Int, calls: Int, concurrency: Int, raw: Bool) async throws {
    let a = Array(Int32(0)..<16)
    let request = Inference_ModelInferRequest.with { r in
      r.modelName = "simple"
      for name in ["INPUT0", "INPUT1"] {
        var input = Inference_ModelInferRequest.InferInputTensor()
        input.name = name
        input.datatype = "INT32"
        input.shape = [1, 16]
        if raw { r.rawInputContents.append(a.withUnsafeBytes { Data($0) }) } else { input.contents.intContents = a }
        r.inputs.append(input)
      }
    }
    let tls = ClientTLSFiles(certificate: "\(dir)/client.pem", privateKey: "\(dir)/client.key", serverCA: "\(dir)/ca.pem")
    let token = try String(contentsOfFile: "\(dir)/token", encoding: .utf8)
    let (latencies, elapsed) = try await withInferenceClient(host: "127.0.0.1", port: port, tls: tls, token: token) {
      client in
      for _ in 0..<500 { _ = try await client.modelInfer(request) }  // warm-up
      let start = ContinuousClock.now
      let perTask = calls / concurrency
      let all = try await withThrowingTaskGroup(of: [Duration].self) { group in
        for _ in 0..<concurrency {
          group.addTask {
            var out: [Duration] = []
            out.reserveCapacity(perTask)
            for _ in 0..<perTask {
              let t0 = ContinuousClock.now
              _ = try await client.modelInfer(request)
              out.append(ContinuousClock.now - t0)
            }
            return out
          }
        }
        var merged: [Duration] = []
        for try await part in group { merged += part }
        return merged
      }
      return (all.sorted(), ContinuousClock.now - start)
    }
    func ms(_ d: Duration) -> String { String(format: "%.3f", Double(d.components.attoseconds) / 1e15 + Double(d.components.seconds) * 1000) }
    let p = { (q: Double) in latencies[min(latencies.count - 1, Int(Double(latencies.count) * q))] }
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    print(
      "calls=\(latencies.count) concurrency=\(concurrency) encoding=\(raw ? "raw" : "typed") p50_ms=\(ms(p(0.5))) p90_ms=\(ms(p(0.9))) p99_ms=\(ms(p(0.99))) calls_per_s=\(String(format: "%.0f", Double(latencies.count) / seconds))"
    )
  }
}
