import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import PalisadeAudit
import PalisadeClient
import PalisadeCore
import PalisadeProto
import PalisadeServer
import PalisadeTestSupport
import PalisadeYAML
import Synchronization
import Testing

/// Canary and shadow rollouts (issue 16, part 1): routing in process (shares over thousands of principals,
/// stickiness, pinned calls), then real servers over mTLS loading signed bundles, where a healthy candidate is
/// promoted and candidates that fail, are slow or shift their outputs are rolled back with the reason.
@Suite struct RolloutRoutingTests {
  func controller(share: Double) async throws -> (RolloutController, ModelResolver) {
    let repository = ModelRepository()
    repository.register(ClassifierModel(version: "1"))
    repository.register(ClassifierModel(version: "2"))
    let metrics = ServerMetrics()
    let logger = Logger(label: "rollout-test")
    let controller = RolloutController(
      repository: repository, bundles: nil, settings: .defaults, metrics: metrics,
      auditor: Auditor(log: nil, metrics: metrics, logger: logger), logger: logger)
    var plan = RolloutPlan()
    plan.share = share
    _ = try await controller.start(model: "classify", candidate: "2", plan: plan, by: "test")
    return (controller, ModelResolver(repository: repository, rollouts: controller))
  }

  @Test func canarySharesHoldAreStickyAndPinnedCallsNeverMove() async throws {
    let (controller, resolver) = try await controller(share: 0.2)
    let n = 4000
    var candidate = 0
    var firstRoutes: [Bool] = []
    for i in 0..<n {
      let (model, route) = try resolver.resolve(
        name: "classify", version: "", principal: "spiffe://palisade.test/sa/caller-\(i)", allows: { _ in true })
      let onCandidate = model.descriptor.version == "2"
      #expect(route?.role == (onCandidate ? .candidate : .stable))
      if onCandidate { candidate += 1 }
      firstRoutes.append(onCandidate)
    }
    // Binomial(4000, 0.2): sd 25 calls; 5 sd either side (the test must not flake, and a broken hash misses by far more).
    let share = Double(candidate) / Double(n)
    #expect(abs(share - 0.2) < 5 * (0.2 * 0.8 / Double(n)).squareRoot(), "candidate share \(share)")
    // Sticky: the same principal gets the same version every time.
    for i in 0..<500 {
      for _ in 0..<3 {
        #expect(
          controller.routesToCandidate(model: "classify", principal: "spiffe://palisade.test/sa/caller-\(i)")
            == firstRoutes[i])
      }
    }
    // Pinned calls never move, whoever calls.
    for i in 0..<200 {
      for pinned in ["1", "2"] {
        let (model, route) = try resolver.resolve(
          name: "classify", version: pinned, principal: "spiffe://palisade.test/sa/caller-\(i)", allows: { _ in true })
        #expect(model.descriptor.version == pinned && route == nil)
      }
    }
    // A caller the policy keeps off the candidate stays on the stable version.
    for i in 0..<500 {
      let (model, _) = try resolver.resolve(
        name: "classify", version: "", principal: "spiffe://palisade.test/sa/caller-\(i)", allows: { $0 != "2" })
      #expect(model.descriptor.version == "1")
    }
    // Unpinned lookups (metadata) see the stable version although the candidate is newer.
    #expect(try resolver.resolve(name: "classify", version: "").descriptor.version == "1")

    // After an abort nobody reaches the candidate, which stays loaded.
    let aborted = try await controller.abort(model: "classify", reason: "test", by: "test")
    #expect(aborted.state == .aborted)
    for i in 0..<n {
      #expect(!controller.routesToCandidate(model: "classify", principal: "spiffe://palisade.test/sa/caller-\(i)"))
    }
    #expect(try resolver.resolve(name: "classify", version: "2").descriptor.version == "2")
  }

  @Test func configSectionIsReadWithDefaultsAndCheckedWithTheReason() throws {
    let base =
      "server: {tls: {certificate_chain: a, private_key: b, client_ca_bundle: c}}\nauth: {audience: p, issuers: [{issuer: i, jwks: j}]}\npolicy: {file: p.yaml}"
    #expect(try ServerConfig.parse(base, baseDirectory: "/").rollouts == .defaults)
    let c = try ServerConfig.parse(
      base
        + "\nrollouts:\n  defaults: {share: 0.1, max_label_psi: 0.2}\n  shadow_max_concurrent: 3\n  models:\n    - {model: digits, candidate: 2, mode: shadow}\n",
      baseDirectory: "/")
    #expect(
      c.rollouts.defaults.share == 0.1 && c.rollouts.defaults.maxLabelPSI == 0.2 && c.rollouts.shadowMaxConcurrent == 3)
    let planned = try #require(c.rollouts.models.first)
    #expect(
      planned.model == "digits" && planned.candidate == "2" && planned.plan.mode == .shadow && planned.plan.share == 0.1
    )
    for (text, path) in [
      ("rollouts: {defaults: {share: 2}}", "rollouts.defaults.share"),
      ("rollouts: {models: [{model: m}]}", "rollouts.models[0].candidate"),
      ("rollouts: {defaults: {min_calls: 50, promote_after_calls: 10}}", "rollouts.defaults.promote_after_calls"),
      ("rollouts: {bogus: 1}", "rollouts.bogus"),
    ] {
      do {
        _ = try ServerConfig.parse(base + "\n" + text, baseDirectory: "/")
        Issue.record("accepted: \(text)")
      } catch {
        #expect(error.path == path, "\(error)")
      }
    }
  }

  @Test func labelsAndPSI() throws {
    let scores = try Tensor(name: "S", shape: [2, 3], values: [Float(0.1), 0.7, 0.2, 0.9, 0.05, 0.05])
    #expect(RolloutController.labels([scores]).labels == [1, 0])
    let nan = try Tensor(name: "S", shape: [1, 2], values: [Float.nan, 1])
    #expect(!RolloutController.labels([nan]).finite)
    let ints = try Tensor(name: "L", shape: [3], values: [Int64(4), 2, 4])
    #expect(RolloutController.labels([ints]).labels == [4, 2, 4])
  }
}

@Suite struct RolloutServingTests {
  static let policy =
    TestServer.allowAllPolicy + """

        - name: release-managers
          principals: [{spiffe: "spiffe://palisade.test/sa/operator"}]
          rpcs: [RolloutStart, RolloutStatus, RolloutPromote, RolloutAbort]
          models: ["classify"]
      """

  /// A server loading `classify` v1 from a signed bundle, with v2 (`spec`) written next to it afterwards.
  /// With `planned`, both bundles are on disk at start and the config starts the rollout.
  static func start(
    v2 spec: [String: String], audit: AuditSigningKey? = nil, planned: RolloutPlan? = nil,
    configure: @escaping (inout ServerConfig) -> Void = { _ in }
  ) async throws -> TestServer {
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    let root = pki.path("models")
    try await factory.makeClassifier(root: root, name: "classify", version: 1)
    if planned != nil { try await factory.makeClassifier(root: root, name: "classify", version: 2, spec: spec) }
    let publisher = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    let auditKey = try audit.map { try pki.write("audit.key", $0.privateKeyPEM, mode: 0o600) }
    let server = try await TestServer.start(pki: pki, models: [], policy: Self.policy) {
      $0.models.directories = [root]
      $0.models.stateFile = pki.path("state/accepted.json")
      $0.models.trust = [.init(models: "classify", publicKeys: [publisher])]
      if let auditKey { $0.audit = ServerConfig.Audit(directory: pki.path("audit"), key: auditKey) }
      $0.rollouts.defaults.minCalls = 30
      $0.rollouts.defaults.promoteAfterCalls = 60
      $0.rollouts.defaults.promoteAfterSeconds = 0
      // Latency is judged only where a test asks for it (a loaded 2-core box stalls a call now and then, and
      // with a few dozen calls a p99 is nearly the maximum).
      $0.rollouts.defaults.maxP99Ratio = 1000
      if let planned { $0.rollouts.models = [.init(model: "classify", candidate: "2", plan: planned)] }
      configure(&$0)
    }
    for _ in 0..<200 where !server.runtime.repository.isReady(name: "classify", version: "1") {
      try await Task.sleep(for: .milliseconds(25))
    }
    #expect(server.runtime.repository.isReady(name: "classify", version: "1"))
    if planned == nil { try await factory.makeClassifier(root: root, name: "classify", version: 2, spec: spec) }
    return server
  }

  static func admin<R: Sendable>(
    _ server: TestServer, _ who: TestClient,
    _ body: @escaping @Sendable (Palisade_V1_Admin.Client<HTTP2ClientTransport.Posix>) async throws -> R
  ) async throws -> R {
    try await withAdminClient(
      host: "127.0.0.1", port: server.port,
      tls: ClientTLSFiles(certificate: who.cert, privateKey: who.key, serverCA: server.pki.path("server-ca.pem")),
      token: who.token, body)
  }

  /// The i-th call's input: a skewed class mix (70% class 0), so that a permutation of the labels moves it.
  static func request(_ i: Int, version: String = "") -> Inference_ModelInferRequest {
    let cls = i % 10 < 7 ? 0 : i % 10 - 6
    var row: [Float] = [0.1, 0.2, 0.3, 0.4].map { $0 + Float(i % 7) * 0.01 }
    row[cls] = 2
    return .with {
      $0.modelName = "classify"
      $0.modelVersion = version
      $0.inputs = [
        .with {
          $0.name = "IN"
          $0.datatype = "FP32"
          $0.shape = [1, 4]
          $0.contents.fp32Contents = row
        }
      ]
    }
  }

  /// Callers until at least `each` land on either side of the active canary (a principal's side is sticky).
  static func callersOnBothSides(_ server: TestServer, each: Int) throws -> (
    stable: [TestClient], candidate: [TestClient]
  ) {
    var stable: [TestClient] = []
    var candidate: [TestClient] = []
    var i = 0
    while (stable.count < each || candidate.count < each) && i < 200 {
      let name = "caller-\(i)"
      i += 1
      let toCandidate = server.runtime.rollouts.routesToCandidate(
        model: "classify", principal: "spiffe://palisade.test/sa/\(name)")
      if toCandidate && candidate.count < each {
        candidate.append(try goodClient(server, name))
      } else if !toCandidate && stable.count < each {
        stable.append(try goodClient(server, name))
      }
    }
    return (stable, candidate)
  }

  /// `calls` calls from each caller (one connection each, all callers at once); the versions that answered, and
  /// the calls that failed.
  static func traffic(_ server: TestServer, _ callers: [TestClient], calls: Int) async -> (
    versions: [String: Int], failures: [String]
  ) {
    await withTaskGroup(of: ([String], [String]).self) { group in
      for caller in callers {
        group.addTask {
          do {
            return try await withClient(server, caller) { c in
              var versions: [String] = []
              var failures: [String] = []
              for i in 0..<calls {
                do {
                  versions.append(try await c.modelInfer(Self.request(i)).modelVersion)
                } catch {
                  failures.append("\(error)")
                }
              }
              return (versions, failures)
            }
          } catch {
            return ([], ["connection: \(error)"])
          }
        }
      }
      var versions: [String: Int] = [:]
      var failures: [String] = []
      for await (v, f) in group {
        for x in v { versions[x, default: 0] += 1 }
        failures += f
      }
      return (versions, failures)
    }
  }

  static func status(_ server: TestServer, _ operator: TestClient) async throws -> Palisade_V1_Rollout? {
    try await admin(server, `operator`) { try await $0.rolloutStatus(.with { $0.model = "classify" }) }.rollouts.first
  }

  /// Waits (up to 10 s) until the rollout leaves the active state.
  static func ended(_ server: TestServer, _ operator: TestClient) async throws -> Palisade_V1_Rollout? {
    for _ in 0..<200 {
      if let s = try await status(server, `operator`), s.state != "active" { return s }
      try await Task.sleep(for: .milliseconds(50))
    }
    return try await status(server, `operator`)
  }

  @Test func healthyCandidateIsPromotedAuditedAndCounted() async throws {
    let key = try AuditSigningKey.generate(name: "palisade.dev/audit")
    let server = try await Self.start(v2: [:], audit: key)
    let op = try goodClient(server, "operator")
    // Administrative: a caller without the grant is refused.
    let stranger = try goodClient(server, "stranger")
    let denied = await rpcError { _ = try await Self.admin(server, stranger) { try await $0.rolloutStatus(.init()) } }
    #expect(denied?.code == .permissionDenied)

    let started = try await Self.admin(server, op) {
      try await $0.rolloutStart(
        .with {
          $0.model = "classify"
          $0.share = 0.5
        })
    }
    #expect(started.rollouts.first?.state == "active" && started.rollouts.first?.candidateVersion == "2", "\(started)")
    #expect(
      server.runtime.repository.isReady(name: "classify", version: "1"),
      "the stable version stays while the candidate loads")
    // Two callers on each side: promotion needs min_principals (2) candidate callers, each counting for at most
    // half of promote_after_calls.
    let (stable, candidate) = try Self.callersOnBothSides(server, each: 2)
    let result = await Self.traffic(server, stable + candidate, calls: 40)
    #expect(result.failures.isEmpty, "\(result.failures.prefix(3))")
    let s = try #require(try await Self.ended(server, op))
    #expect(s.state == "promoted", "\(s)")
    #expect(s.reason.contains("within every threshold"), "\(s.reason)")
    #expect(s.candidate.calls >= 30 && s.stable.calls > 0 && s.candidate.errors == 0, "\(s)")
    // The promoted version takes every unpinned call; the old stable version retired.
    for _ in 0..<100 where server.runtime.repository.isReady(name: "classify", version: "1") {
      try await Task.sleep(for: .milliseconds(20))
    }
    #expect(server.runtime.repository.versions(of: "classify") == ["2"])
    let after = try await withClient(server, stable[0]) { c in try await c.modelInfer(Self.request(0)) }
    #expect(after.modelVersion == "2")
    let metrics = try await adminGet(server, "/metrics").1
    #expect(metrics.contains(#"palisade_rollout_events_total{model="classify",event="start"} 1"#), "\(metrics)")
    #expect(metrics.contains(#"palisade_rollout_events_total{model="classify",event="promote"} 1"#))
    #expect(metrics.contains(#"palisade_rollout_state{model="classify"} 2"#))
    try await server.stop()
    let log = try AuditVerifier.verify(directory: server.pki.path("audit"), key: key.verifyingKey)
    let records = try log.records.map { try JSONDecoder().decode(AuditRecord.self, from: Data($0)) }
    #expect(
      records.contains {
        $0.kind == .other("rollout_start") && $0.version == "2" && $0.principal == "spiffe://palisade.test/sa/operator"
      })
    #expect(records.contains { $0.kind == .other("rollout_promote") && $0.version == "2" })
  }

  @Test func operatorsAbortAndPromoteByHand() async throws {
    let server = try await Self.start(v2: [:]) {
      $0.rollouts.defaults.promoteAfterCalls = 100_000
      $0.rollouts.defaults.minCalls = 1000
    }
    let op = try goodClient(server, "operator")
    let unknown = await rpcError {
      _ = try await Self.admin(server, op) { try await $0.rolloutStart(.with { $0.model = "nope" }) }
    }
    #expect(
      unknown?.code == .permissionDenied, "the operator's rule covers classify only: \(String(describing: unknown))")
    _ = try await Self.admin(server, op) {
      try await $0.rolloutStart(
        .with {
          $0.model = "classify"
          $0.share = 1
        })
    }
    let twice = await rpcError {
      _ = try await Self.admin(server, op) { try await $0.rolloutStart(.with { $0.model = "classify" }) }
    }
    #expect(twice?.code == .failedPrecondition, "\(String(describing: twice))")
    let caller = try goodClient(server, "caller")
    #expect(try await withClient(server, caller) { c in try await c.modelInfer(Self.request(0)) }.modelVersion == "2")

    let aborted = try await Self.admin(server, op) {
      try await $0.rolloutAbort(
        .with {
          $0.model = "classify"
          $0.reason = "not today"
        })
    }
    #expect(
      aborted.rollouts.first?.state == "aborted" && aborted.rollouts.first?.reason.contains("not today") == true,
      "\(aborted)")
    #expect(try await withClient(server, caller) { c in try await c.modelInfer(Self.request(0)) }.modelVersion == "1")
    #expect(server.runtime.repository.isReady(name: "classify", version: "2"), "an aborted candidate stays loaded")

    _ = try await Self.admin(server, op) {
      try await $0.rolloutStart(
        .with {
          $0.model = "classify"
          $0.candidateVersion = "2"
          $0.share = 0.5
        })
    }
    let promoted = try await Self.admin(server, op) { try await $0.rolloutPromote(.with { $0.model = "classify" }) }
    #expect(promoted.rollouts.first?.state == "promoted", "\(promoted)")
    #expect(try await withClient(server, caller) { c in try await c.modelInfer(Self.request(0)) }.modelVersion == "2")
    #expect(server.runtime.repository.versions(of: "classify") == ["2"])
    let none = await rpcError {
      _ = try await Self.admin(server, op) { try await $0.rolloutPromote(.with { $0.model = "classify" }) }
    }
    #expect(none?.code == .failedPrecondition)
    try await server.stop()
  }

  /// `palisade rollout` as an operator runs it: a real process against the server, JSON on stdout, the reason of
  /// a refusal on stderr with a non-zero exit.
  @Test func rolloutCommandStartsWatchesAndAborts() async throws {
    let server = try await Self.start(v2: [:]) {
      $0.rollouts.defaults.promoteAfterCalls = 100_000
      $0.rollouts.defaults.minCalls = 1000
    }
    let op = try goodClient(server, "operator")
    func cli(_ who: TestClient, _ arguments: [String]) async throws -> ProcessTests.Result {
      try await ProcessTests.run(
        ProcessTests.binary,
        ["rollout"] + arguments + [
          "--target", "127.0.0.1:\(server.port)", "--cert", who.cert, "--key", who.key, "--ca",
          server.pki.path("server-ca.pem"), "--token", who.token ?? "",
        ])
    }
    func object(_ text: String) throws -> [String: Any] {
      let line = try #require(text.split(separator: "\n").first.map(String.init), "no output")
      return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }
    let none = try await cli(op, ["status", "classify"])
    #expect(none.status == 0 && none.stdout.isEmpty && none.stderr.contains("no rollouts of 'classify'"), "\(none)")

    let started = try await cli(op, ["start", "classify", "--share", "1"])
    #expect(started.status == 0, "\(started.stderr)")
    let active = try object(started.stdout)
    #expect(active["state"] as? String == "active" && active["mode"] as? String == "canary", "\(started.stdout)")
    #expect((active["candidate"] as? [String: Any])?["version"] as? String == "2")

    let status = try object(try await cli(op, ["status"]).stdout)
    #expect(status["rollout_id"] as? String == active["rollout_id"] as? String)

    // A caller without the release-managers rule is refused, and the rollout is untouched.
    let stranger = try goodClient(server, "stranger")
    let denied = try await cli(stranger, ["abort", "classify"])
    #expect(denied.status != 0 && denied.stderr.lowercased().contains("permission"), "\(denied)")
    #expect(try object(try await cli(op, ["status", "classify"]).stdout)["state"] as? String == "active")

    let aborted = try object(try await cli(op, ["abort", "classify", "--reason", "not today"]).stdout)
    #expect(aborted["state"] as? String == "aborted", "\(aborted)")
    #expect((aborted["reason"] as? String)?.contains("not today") == true, "\(aborted)")
    let bad = try await cli(op, ["start", "classify", "--share", "2"])
    #expect(bad.status != 0 && bad.stderr.contains("--share must be in (0, 1]"), "\(bad)")
    try await server.stop()
  }

  @Test func aPromotedPlannedRolloutLeftInTheConfigServesTheCandidateAfterARestart() async throws {
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    let root = pki.path("models")
    try await factory.makeClassifier(root: root, name: "classify", version: 1)
    try await factory.makeClassifier(root: root, name: "classify", version: 2)
    let publisher = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    var plan = RolloutPlan()
    plan.share = 1
    plan.minCalls = 5
    plan.promoteAfterCalls = 5
    plan.minPrincipals = 1  // one caller: this test is about the restart, RolloutJudgeTests about the callers
    func boot() async throws -> TestServer {
      let server = try await TestServer.start(pki: pki, models: [], policy: Self.policy) {
        $0.models.directories = [root]
        $0.models.stateFile = pki.path("state/accepted.json")
        $0.models.trust = [.init(models: "classify", publicKeys: [publisher])]
        $0.rollouts.models = [.init(model: "classify", candidate: "2", plan: plan)]
      }
      for _ in 0..<200 where !server.runtime.repository.isReady(name: "classify", version: "2") {
        try await Task.sleep(for: .milliseconds(25))
      }
      return server
    }
    let first = try await boot()
    let caller = try goodClient(first, "caller")
    let result = await Self.traffic(first, [caller], calls: 10)
    #expect(result.failures.isEmpty)
    #expect(first.runtime.rollouts.status(model: "classify").first?.state == .promoted)
    try await first.stop()
    // The same config again: v2 is accepted now, so v1 (below it) would be refused by anti-rollback; v2 serves.
    let second = try await boot()
    #expect(second.runtime.repository.versions(of: "classify") == ["2"])
    #expect(try await withClient(second, caller) { c in try await c.modelInfer(Self.request(0)) }.modelVersion == "2")
    try await second.stop()
  }

  @Test func failingCandidateIsRolledBackAndStaysLoaded() async throws {
    let server = try await Self.start(v2: ["fail": "1"])
    let op = try goodClient(server, "operator")
    // Versions are canonical: "01" is the stable version 1 (refused, nothing loaded again), "+2" is no version.
    for (version, message) in [("01", "already the stable version"), ("+2", "positive integer")] {
      let refused = await rpcError {
        _ = try await Self.admin(server, op) {
          try await $0.rolloutStart(
            .with {
              $0.model = "classify"
              $0.candidateVersion = version
            })
        }
      }
      #expect(
        refused?.code == .invalidArgument && refused?.message.contains(message) == true,
        "\(version): \(String(describing: refused))")
    }
    _ = try await Self.admin(server, op) {
      try await $0.rolloutStart(
        .with {
          $0.model = "classify"
          $0.candidateVersion = "2"
          $0.share = 0.5
        })
    }
    let (stable, candidate) = try Self.callersOnBothSides(server, each: 1)
    _ = await Self.traffic(server, stable + candidate, calls: 45)
    let s = try #require(try await Self.ended(server, op))
    #expect(s.state == "rolled_back", "\(s)")
    #expect(s.reason.contains("error rate"), "\(s.reason)")
    // The candidate takes no more unpinned calls, but is still loaded (pinned calls reach it).
    let back = try await withClient(server, candidate[0]) { c in try await c.modelInfer(Self.request(1)) }
    #expect(back.modelVersion == "1")
    #expect(server.runtime.repository.isReady(name: "classify", version: "2"))
    let pinned = await rpcError {
      _ = try await withClient(server, candidate[0]) { c in try await c.modelInfer(Self.request(1, version: "2")) }
    }
    #expect(pinned != nil && pinned?.code != .notFound, "\(String(describing: pinned))")
    // A next rollout that cannot start (no bundle for its candidate) leaves the rolled-back one holding v2 off.
    let missing = await rpcError {
      _ = try await Self.admin(server, op) {
        try await $0.rolloutStart(
          .with {
            $0.model = "classify"
            $0.candidateVersion = "3"
          })
      }
    }
    #expect(missing?.code == .notFound, "\(String(describing: missing))")
    #expect(
      try await withClient(server, candidate[0]) { c in try await c.modelInfer(Self.request(1)) }.modelVersion == "1")
    #expect(try await Self.status(server, op)?.state == "rolled_back")
    let metrics = try await adminGet(server, "/metrics").1
    #expect(metrics.contains(#"palisade_rollout_events_total{model="classify",event="rollback"} 1"#), "\(metrics)")
    try await server.stop()
  }

  @Test func slowCandidateIsRolledBackOnLatency() async throws {
    let server = try await Self.start(v2: ["ms": "60"]) { $0.rollouts.defaults.maxP99Ms = 40 }
    let op = try goodClient(server, "operator")
    _ = try await Self.admin(server, op) {
      try await $0.rolloutStart(
        .with {
          $0.model = "classify"
          $0.share = 0.5
        })
    }
    // Latency is judged once two callers reached the candidate (one caller's load is not the candidate's fault).
    let (stable, candidate) = try Self.callersOnBothSides(server, each: 2)
    let result = await Self.traffic(server, stable + candidate, calls: 30)
    #expect(result.failures.isEmpty)
    let s = try #require(try await Self.ended(server, op))
    #expect(s.state == "rolled_back" && s.reason.contains("p99 latency"), "\(s)")
    try await server.stop()
  }

  @Test func shiftedCandidateIsRolledBackUnderConcurrentLoadWithoutLosingACall() async throws {
    let server = try await Self.start(v2: ["roll": "1"])
    let op = try goodClient(server, "operator")
    _ = try await Self.admin(server, op) {
      try await $0.rolloutStart(
        .with {
          $0.model = "classify"
          $0.mode = "canary"
          $0.share = 0.5
        })
    }
    let (stable, candidate) = try Self.callersOnBothSides(server, each: 3)
    let result = await Self.traffic(server, stable + candidate, calls: 60)
    // Every call was answered, by one version or the other, across the rollback.
    #expect(result.failures.isEmpty, "\(result.failures.prefix(3))")
    #expect(result.versions.values.reduce(0, +) == 6 * 60, "\(result.versions)")
    let s = try #require(try await Self.ended(server, op))
    #expect(s.state == "rolled_back" && s.reason.contains("output shift"), "\(s)")
    #expect(s.labelPsi > 0.25)
    let back = try await withClient(server, candidate[0]) { c in try await c.modelInfer(Self.request(0)) }
    #expect(back.modelVersion == "1")
    try await server.stop()
  }

  @Test func shadowCandidateIsComparedOffThePathAndRolledBackOnDisagreement() async throws {
    // Started by the config at boot: v1 loads as the stable version, then the rollout loads v2.
    var plan = RolloutPlan()
    plan.mode = .shadow
    plan.share = 1
    plan.minCalls = 30
    plan.promoteAfterCalls = 60
    plan.promoteAfterSeconds = 0
    plan.maxP99Ratio = 1000
    let key = try AuditSigningKey.generate(name: "palisade.dev/audit")
    let server = try await Self.start(v2: ["roll": "1"], audit: key, planned: plan) {
      $0.rollouts.shadowMaxConcurrent = 2
    }
    let op = try goodClient(server, "operator")
    for _ in 0..<200 where !server.runtime.repository.isReady(name: "classify", version: "2") {
      try await Task.sleep(for: .milliseconds(25))
    }
    #expect(try await Self.status(server, op)?.state == "active")
    let callers = [try goodClient(server, "caller"), try goodClient(server, "caller-2")]
    let result = await Self.traffic(server, callers, calls: 75)
    // The callers only ever see the stable version.
    #expect(result.failures.isEmpty && result.versions == ["1": 150], "\(result)")
    let s = try #require(try await Self.ended(server, op))
    #expect(s.state == "rolled_back" && s.reason.contains("shadow agreement"), "\(s)")
    #expect(s.shadowCompared >= 30 && s.shadowAgreement < 0.5, "\(s)")
    try await server.stop()
    // The callers' data went to v2 as well: their call records say so (v1 answered).
    let log = try AuditVerifier.verify(directory: server.pki.path("audit"), key: key.verifyingKey)
    let records = try log.records.map { try JSONDecoder().decode(AuditRecord.self, from: Data($0)) }
    let shadowed = records.filter {
      $0.kind == .call && $0.version == "1" && $0.reason?.contains("candidate version 2 (shadow rollout)") == true
    }
    #expect(shadowed.count >= 30, "\(shadowed.count) call records name the shadow run")
  }
}
