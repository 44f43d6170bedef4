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
import PalisadeScreening
import PalisadeTestSupport
import PalisadeIdentity
import PalisadePolicy
import PalisadeRuntime
import PalisadeAudit

/// Serving benchmark: `serving-bench server` runs Palisade over mTLS with a tiny test model (the `simple`
/// add/sub model: two INT32 [1,16] inputs); `serving-bench client` calls it from another process and prints
/// latency percentiles and throughput. Benchmarks/serving.sh runs both and reads the server's CPU time.
@main
enum ServingBench {
  static func main() async throws {
    _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    let args = CommandLine.arguments.dropFirst()
    guard let mode = args.first else {
      print(
        "usage: serving-bench server DIR [simple|digits] [batch|nobatch] | client DIR PORT CALLS CONCURRENCY [raw|typed] [simple|digits] | auth [ITERATIONS] | pipeline [ITERATIONS] | rollout [ITERATIONS] | pipeline-trace [ITERATIONS] [off|on] | screen [ROWS [FEATURESxROWS]]"
      )
      exit(2)
    }
    let dir = args.dropFirst().first ?? "/tmp/palisade-bench"
    switch mode {
    case "server":
      let rest = Array(args.dropFirst(2))
      try await server(dir: dir, model: rest.first ?? "simple", batching: rest.count < 2 || rest[1] == "batch")
    case "auth": try authBench(iterations: Int(dir) ?? 20_000)
    case "pipeline": try await pipelineBench(iterations: Int(dir) ?? 20_000)
    case "rollout": try await rolloutBench(iterations: Int(dir) ?? 20_000)
    case "pipeline-trace":
      try await tracingBench(iterations: Int(dir) ?? 20_000, traced: args.dropFirst(2).first == "on")
    case "screen": try await screeningBench(rows: Int(dir) ?? 50_000, only: args.dropFirst(2).first)
    case "client":
      let rest = Array(args.dropFirst(2))
      try await client(
        dir: dir, port: Int(rest[0]) ?? 0, calls: Int(rest[1]) ?? 5000, concurrency: Int(rest[2]) ?? 1,
        raw: rest.count < 4 || rest[3] == "raw", model: rest.count < 5 ? "simple" : rest[4])
    default:
      print("unknown mode \(mode)")
      exit(2)
    }
  }

  static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Tests/Fixtures").path

  /// The scikit-learn digits MLP (64 → 10) with the fixtures' reference statistics, as a signed bundle would carry.
  static func digitsModel() throws -> any ServableModel {
    let onnx = try ONNXModel.load(contentsOf: URL(fileURLWithPath: "\(fixtures)/mlp_digits.onnx"))
    let stats = try ReferenceStatisticsBuilder().build(
      try SampleFile.read(path: "\(fixtures)/digits_reference.npy"), covariance: .diagonal)
    var d = onnx.descriptor(name: "digits", version: "1")
    d.contract = ModelContract(maxBatch: 64, allowNonFinite: false)
    d.screening = ScreeningProfile(references: ["input": stats.reference], threshold: stats.suggestedThreshold)
    return try ONNXServableModel(model: onnx, descriptor: d)
  }

  /// One natural digits row per request.
  static func digitsRequest(raw: Bool) throws -> Inference_ModelInferRequest {
    let sample = try SampleFile.read(path: "\(fixtures)/digits_reference.npy")
    let row = sample.values.prefix(64).map { Float($0) }
    return .with {
      $0.modelName = "digits"
      var input = Inference_ModelInferRequest.InferInputTensor()
      input.name = "input"
      input.datatype = "FP32"
      input.shape = [1, 64]
      if raw { $0.rawInputContents = [row.withUnsafeBytes { Data($0) }] } else { input.contents.fp32Contents = row }
      $0.inputs = [input]
    }
  }

  static func server(dir: String, model: String, batching: Bool) async throws {
    let models: [any ServableModel] = model == "digits" ? [try digitsModel()] : [AddSubModel()]
    let server = try await TestServer.start(models: models) {
      $0.admin.enabled = false
      $0.scheduling.batching = batching
      $0.logging.accessLog = false
    }
    let client = try server.pki.client("bench", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/bench")])
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for (from, to) in [
      (client.cert, "client.pem"), (client.key, "client.key"), (server.pki.path("ca-bundle.pem"), "ca.pem"),
    ] {
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
      TestServer.allowAllPolicy + "\n    models: [\"simple*\"]\n    rate_limit: {per_second: 1000000, burst: 1000000}\n"
    )
    let limiter = RateLimiter()
    let tokens = try (0..<iterations).map { _ in "Bearer " + (try pki.token(for: client.issued)) }
    func time(_ body: () throws -> Void) rethrows -> Double {
      let start = ContinuousClock.now
      try body()
      let d = ContinuousClock.now - start
      return (Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12) / Double(iterations)
    }
    let uncached = try time { for t in tokens { _ = try verifier.verify(authorization: t, identity: identity) } }
    let cached = try time {
      for _ in 0..<iterations { _ = try verifier.verify(authorization: tokens[0], identity: identity) }
    }
    let facts = Policy.CallFacts(
      spiffeID: identity.spiffeID, subject: nil, scopes: [], rpc: "ModelInfer", model: "simple")
    let authorise = time {
      for _ in 0..<iterations {
        let d = policy.decide(facts)
        if let limit = d.rateLimit { _ = limiter.acquire("\(d.rule ?? "")\u{0}\(facts.spiffeID)", limit: limit) }
      }
    }
    print(
      String(
        format: "token_uncached_us=%.2f token_cached_us=%.2f authorise_us=%.2f cached_total_us=%.2f", uncached, cached,
        authorise, cached + authorise))
  }

  /// Per-call cost of the whole in-process pipeline (authorise, resolve, validate, screen, schedule, compute,
  /// harden, encode) against calling the model directly, on the digits MLP with one row per call.
  static func pipelineBench(iterations: Int) async throws {
    let model = try digitsModel()
    let pki = try TestPKI()
    let client = try pki.client("bench", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/bench")])
    let call = CallContext(identity: try PeerIdentity(certificate: client.issued.certificate), requestID: "bench")
    let metrics = ServerMetrics()
    let policy = PolicyStore(
      try Policy.parse(TestServer.allowAllPolicy + "\n    rate_limit: {per_second: 1000000, burst: 1000000}\n"))
    var logger = Logger(label: "bench")
    logger.logLevel = .critical
    let repository = ModelRepository(required: [])
    repository.register(model)
    let authorizer = Authorizer(store: policy, metrics: metrics, logger: logger, exemptRPCs: [])
    func pipeline(screening: Bool, audit: AuditConfiguration.Durability? = nil) throws -> InferencePipeline {
      var settings = InputScreener.Settings.defaults
      settings.extractionMonitor = screening
      var auditor: Auditor? = nil
      if let audit {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bench-audit-\(UUID())").path
        let key = try AuditSigningKey.generate(name: "bench")
        let keyPath = dir + ".key"
        try key.privateKeyPEM.write(toFile: keyPath, atomically: true, encoding: .utf8)
        chmod(keyPath, 0o600)
        var c = AuditConfiguration(directory: dir, keyFile: keyPath)
        c.durability = audit
        c.origin = "bench"
        auditor = Auditor(log: try AuditLog.open(configuration: c), metrics: metrics, logger: logger)
      }
      return InferencePipeline(
        repository: repository, statistics: ModelStatisticsStore(), authorizer: authorizer,
        screener: InputScreener(
          settings: settings, policy: policy, quarantines: QuarantineStore(), metrics: metrics, logger: logger),
        scheduler: Scheduler(settings: .defaults, metrics: metrics), metrics: metrics, logger: logger, auditor: auditor)
    }
    let full = try pipeline(screening: true)
    let request = try digitsRequest(raw: true)
    let inputs = [
      try Tensor(
        name: "input", shape: [1, 64],
        values: (try SampleFile.read(path: "\(fixtures)/digits_reference.npy")).values.prefix(64).map { Float($0) })
    ]
    // Process CPU per call beside the wall time: the audit writer's thread works on the other core, which the
    // caller's wall time does not show.
    var cpu: [String: Double] = [:]
    func processCPU() -> Double {
      var usage = rusage()
      getrusage(RUSAGE_SELF.rawValue, &usage)
      return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
    }
    func time(_ label: String = "", _ body: () async throws -> Void) async rethrows -> Double {
      let cpu0 = processCPU()
      let start = ContinuousClock.now
      try await body()
      let d = ContinuousClock.now - start
      cpu[label] = (processCPU() - cpu0) / Double(iterations)
      return (Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12) / Double(iterations)
    }
    for _ in 0..<1000 {
      _ = try await model.infer(InferenceRequest(inputs: inputs))
      _ = try await full.infer(request, call: call, rpc: "ModelInfer")
    }
    let direct = try await time("direct") {
      for _ in 0..<iterations { _ = try await model.infer(InferenceRequest(inputs: inputs)) }
    }
    let piped = try await time("pipeline") {
      for _ in 0..<iterations { _ = try await full.infer(request, call: call, rpc: "ModelInfer") }
    }
    let noMonitor = try pipeline(screening: false)
    let pipedNoMonitor = try await time("pipeline_without_extraction_monitor") {
      for _ in 0..<iterations { _ = try await noMonitor.infer(request, call: call, rpc: "ModelInfer") }
    }
    let batched = try pipeline(screening: true, audit: .batched)
    let pipedBatched = try await time("audit_batched") {
      for _ in 0..<iterations { _ = try await batched.infer(request, call: call, rpc: "ModelInfer") }
    }
    let synced = try pipeline(screening: true, audit: .sync)
    let syncIterations = min(iterations, 2000)
    let start = ContinuousClock.now
    for _ in 0..<syncIterations { _ = try await synced.infer(request, call: call, rpc: "ModelInfer") }
    let d = ContinuousClock.now - start
    let pipedSync =
      (Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12) / Double(syncIterations)
    print(
      String(
        format:
          "model_direct_us=%.2f pipeline_us=%.2f pipeline_overhead_us=%.2f pipeline_without_extraction_monitor_us=%.2f ratio=%.2f audit_batched_us=%.2f audit_sync_one_caller_us=%.2f",
        direct, piped, piped - direct, pipedNoMonitor, piped / direct, pipedBatched, pipedSync))
    print(
      String(
        format:
          "cpu: model_direct_us=%.2f pipeline_us=%.2f pipeline_without_extraction_monitor_us=%.2f audit_batched_us=%.2f audit_batched_over_pipeline_us=%.2f",
        cpu["direct"] ?? 0, cpu["pipeline"] ?? 0, cpu["pipeline_without_extraction_monitor"] ?? 0,
        cpu["audit_batched"] ?? 0, (cpu["audit_batched"] ?? 0) - (cpu["pipeline"] ?? 0)))
  }

  /// The whole in-process pipeline (digits, one row per call, no audit log) with tracing off (as configured by
  /// default: no tracer at all) or on (every call sampled, spans batched for an OTLP exporter whose collector is
  /// absent, as the fast path makes them). Under callgrind, the difference between two iteration counts is the
  /// per-call instruction count (docs/benchmarks.md, Tracing).
  static func tracingBench(iterations: Int, traced: Bool) async throws {
    let model = try digitsModel()
    let pki = try TestPKI()
    let client = try pki.client("bench", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/bench")])
    let call = CallContext(identity: try PeerIdentity(certificate: client.issued.certificate), requestID: "bench")
    let metrics = ServerMetrics()
    let policy = PolicyStore(
      try Policy.parse(TestServer.allowAllPolicy + "\n    rate_limit: {per_second: 1000000, burst: 1000000}\n"))
    var logger = Logger(label: "bench")
    logger.logLevel = .critical
    let repository = ModelRepository(required: [])
    repository.register(model)
    let pipeline = InferencePipeline(
      repository: repository, statistics: ModelStatisticsStore(),
      authorizer: Authorizer(store: policy, metrics: metrics, logger: logger, exemptRPCs: []),
      screener: InputScreener(
        settings: .defaults, policy: policy, quarantines: QuarantineStore(), metrics: metrics, logger: logger),
      scheduler: Scheduler(settings: .defaults, metrics: metrics), metrics: metrics, logger: logger)
    let request = try digitsRequest(raw: true)
    var settings = TracingSettings()
    settings.enabled = true
    settings.endpoint = "http://127.0.0.1:9"  // discard port: nothing listens, exports fail and are dropped
    let tracing = traced ? try CallTracer.make(settings, logger: logger, environment: [:]) : nil
    let exporter = Task { [tracing] in try await tracing?.service.run() }
    defer { exporter.cancel() }
    let tracer = tracing?.tracer
    func one() async throws {
      // What InferenceFastPath does around the pipeline.
      let spans = tracer?.startCall(
        rpc: "ModelInfer", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
      spans?.identified(requestID: call.requestID)
      spans?.ended(.authenticate)
      _ = try await pipeline.infer(request, call: call, rpc: "ModelInfer", spans: spans)
      spans?.finish(nil)
    }
    for _ in 0..<min(iterations, 1000) { try await one() }
    let start = ContinuousClock.now
    for _ in 0..<iterations { try await one() }
    let d = ContinuousClock.now - start
    let us = (Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12) / Double(iterations)
    print(String(format: "tracing=%@ pipeline_us=%.2f", traced ? "on" : "off", us))
  }

  static func client(dir: String, port: Int, calls: Int, concurrency: Int, raw: Bool, model: String) async throws {
    let a = Array(Int32(0)..<16)
    let digits = model == "digits" ? try digitsRequest(raw: raw) : nil
    let request =
      digits
      ?? Inference_ModelInferRequest.with { r in
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
    let tls = ClientTLSFiles(
      certificate: "\(dir)/client.pem", privateKey: "\(dir)/client.key", serverCA: "\(dir)/ca.pem")
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
    func ms(_ d: Duration) -> String {
      String(format: "%.3f", Double(d.components.attoseconds) / 1e15 + Double(d.components.seconds) * 1000)
    }
    let p = { (q: Double) in latencies[min(latencies.count - 1, Int(Double(latencies.count) * q))] }
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    print(
      "model=\(model) calls=\(latencies.count) concurrency=\(concurrency) encoding=\(raw ? "raw" : "typed") p50_ms=\(ms(p(0.5))) p90_ms=\(ms(p(0.9))) p99_ms=\(ms(p(0.99))) calls_per_s=\(String(format: "%.0f", Double(latencies.count) / seconds))"
    )
  }

  /// What version routing costs an unpinned call (issue 16): the in-process pipeline on the digits MLP without a
  /// rollout controller (as before rollouts), with one and no rollout anywhere (the common case: one atomic load),
  /// with a rollout on another model (a lock and a dictionary lookup), and with an active canary on this model
  /// (a keyed hash, the windows, the labels). Rounds interleave the variants; the best of each is printed.
  static func rolloutBench(iterations: Int) async throws {
    let v1 = try digitsModel()
    let v2 = Versioned(inner: v1, version: "2")
    let pki = try TestPKI()
    let client = try pki.client("bench", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/bench")])
    let call = CallContext(identity: try PeerIdentity(certificate: client.issued.certificate), requestID: "bench")
    let metrics = ServerMetrics()
    let policy = PolicyStore(
      try Policy.parse(TestServer.allowAllPolicy + "\n    rate_limit: {per_second: 1000000, burst: 1000000}\n"))
    var logger = Logger(label: "bench")
    logger.logLevel = .critical
    let auditor = Auditor(log: nil, metrics: metrics, logger: logger)
    func pipeline(_ rollout: String?) async throws -> InferencePipeline {
      let repository = ModelRepository(required: [])
      repository.register(v1)
      repository.register(v2)
      repository.register(Versioned(inner: v1, version: "1", name: "other"))
      repository.register(Versioned(inner: v1, version: "2", name: "other"))
      var controller: RolloutController?
      if let rollout {
        let c = RolloutController(
          repository: repository, bundles: nil, settings: .defaults, metrics: metrics, auditor: auditor, logger: logger)
        if !rollout.isEmpty {
          var plan = RolloutPlan()
          plan.share = 0.5
          plan.minCalls = 1_000_000_000
          plan.promoteAfterCalls = 1_000_000_000
          plan.promoteAfterSeconds = 0
          _ = try await c.start(model: rollout, candidate: "2", plan: plan, by: "bench")
        }
        controller = c
      }
      var settings = InputScreener.Settings.defaults
      settings.extractionMonitor = false
      return InferencePipeline(
        repository: repository, statistics: ModelStatisticsStore(),
        authorizer: Authorizer(store: policy, metrics: metrics, logger: logger, exemptRPCs: []),
        screener: InputScreener(
          settings: settings, policy: policy, quarantines: QuarantineStore(), metrics: metrics, logger: logger),
        scheduler: Scheduler(settings: .defaults, metrics: metrics), metrics: metrics, logger: logger,
        rollouts: controller)
    }
    let request = try digitsRequest(raw: true)
    let variants: [(String, InferencePipeline)] = [
      ("no_controller", try await pipeline(nil)), ("controller_no_rollout", try await pipeline("")),
      ("rollout_on_other_model", try await pipeline("other")), ("canary_on_this_model", try await pipeline("digits")),
    ]
    var best: [String: Double] = [:]
    for _ in 0..<3 {
      for (name, p) in variants {
        for _ in 0..<500 { _ = try await p.infer(request, call: call, rpc: "ModelInfer") }
        let start = ContinuousClock.now
        for _ in 0..<iterations { _ = try await p.infer(request, call: call, rpc: "ModelInfer") }
        let d = ContinuousClock.now - start
        let us = (Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12) / Double(iterations)
        best[name] = min(best[name] ?? .infinity, us)
      }
    }
    // The routing decision alone (a keyed hash of a SPIFFE ID), without the pipeline.
    let controller = RolloutController(
      repository: {
        let r = ModelRepository()
        r.register(v1)
        r.register(v2)
        return r
      }(), bundles: nil,
      settings: .defaults, metrics: metrics, auditor: auditor, logger: logger)
    var plan = RolloutPlan()
    plan.share = 0.5
    _ = try await controller.start(model: "digits", candidate: "2", plan: plan, by: "bench")
    let principal = "spiffe://palisade.test/sa/bench"
    var hits = 0
    let start = ContinuousClock.now
    for _ in 0..<(iterations * 10) where controller.route(model: "digits", principal: principal)?.role == .candidate {
      hits += 1
    }
    let d = ContinuousClock.now - start
    let routeNs =
      (Double(d.components.seconds) * 1e9 + Double(d.components.attoseconds) / 1e9) / Double(iterations * 10)
    print(
      variants.map { "\($0.0)_us=" + String(format: "%.2f", best[$0.0] ?? 0) }.joined(separator: " ")
        + String(format: " route_decision_ns=%.0f (candidate=%d)", routeNs, hits > 0 ? 1 : 0))
  }
}

/// A model under another version (and name): rollouts need two versions of one model.
struct Versioned: ServableModel {
  let inner: any ServableModel
  let descriptor: ModelDescriptor
  init(inner: any ServableModel, version: String, name: String? = nil) {
    self.inner = inner
    var d = inner.descriptor
    d.version = version
    if let name { d.name = name }
    descriptor = d
  }
  func infer(_ request: InferenceRequest) async throws -> [Tensor] { try await inner.infer(request) }
}
