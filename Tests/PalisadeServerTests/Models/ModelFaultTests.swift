import Foundation
#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif
import GRPCCore
import GRPCNIOTransportHTTP2
import PalisadeAudit
import PalisadeBundle
import PalisadeClient
import PalisadeProto
import PalisadeTestSupport
import Synchronization
import Testing

/// Faults around models and the process itself (docs/reliability.md, "Faults"), against real `palisade serve`
/// processes: a model directory that vanishes or turns unreadable when a reload is asked for (the process runs as
/// an unprivileged user, so that permissions bind it), and SIGKILL under load, then a restart.
@Suite(.serialized) struct ModelFaultTests {
  static let nobody: UInt32 = 65534

  @Test(.enabled(if: getuid() == 0, "running the server as another user (so that chmod binds it) needs root"))
  func modelDirectoryVanishingOrUnreadableAtReloadKeepsTheServedVersion() async throws {
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    let models = pki.path("models")
    try await Self.digitsBundle(models, version: 1, factory)
    let config = try Self.config(pki, factory, audit: false)
    try await Shell.run("chown -R \(Self.nobody):\(Self.nobody) \(pki.directory.path)")
    let server = try LoggedProcess.serve(config: config, uid: Self.nobody)
    defer { server.kill() }
    let port = try await server.port()
    #expect(port != 0, "\(server.log)")
    #expect(try await server.waitFor("model loaded"), "\(server.log)")
    let caller = try Self.caller(pki)
    #expect(try await Self.infer(port, pki, caller), "v1 serves: \(server.log)")

    // 1. A new version's directory nobody can read.
    try await Self.digitsBundle(models, version: 2, factory)
    try await Shell.run("chown -R \(Self.nobody):\(Self.nobody) \(models) && chmod 000 \(models)/digits/2")
    var e = await Self.load(port, pki, caller)
    #expect(
      e?.code == .failedPrecondition && e?.message.contains("Permission denied") == true, "\(String(describing: e))")
    #expect(try await Self.infer(port, pki, caller), "v1 still serves")
    let index = try await Self.index(port, pki, caller)
    #expect(index.contains { $0.version == "1" && $0.state == "READY" }, "\(index)")
    #expect(
      index.contains { $0.version == "2" && $0.state == "UNAVAILABLE" && $0.reason.contains("Permission denied") },
      "\(index)")

    // 2. The model's directory itself unreadable.
    try await Shell.run("chmod 000 \(models)/digits")
    e = await Self.load(port, pki, caller)
    #expect(
      e?.code == .failedPrecondition && e?.message.contains("cannot be read: Permission denied") == true,
      "\(String(describing: e))")
    #expect(try await Self.infer(port, pki, caller))

    // 3. The model's directory gone, then the whole models directory gone.
    try await Shell.run("chmod 755 \(models)/digits && mv \(models)/digits \(pki.path("digits-away"))")
    e = await Self.load(port, pki, caller)
    #expect(
      e?.code == .notFound && e?.message.contains("no bundle for model 'digits'") == true, "\(String(describing: e))")
    try await Shell.run("mv \(models) \(pki.path("models-away"))")
    e = await Self.load(port, pki, caller)
    #expect(e?.code == .notFound, "\(String(describing: e))")
    #expect(try await Self.infer(port, pki, caller), "v1 still serves with no model directory at all")

    // Reported: a log line per refusal naming what still serves, and the metric.
    #expect(server.log.components(separatedBy: "model load refused").count - 1 == 4, "\(server.log)")
    #expect(server.log.contains("still_serving"))
    let metrics = try await Self.metrics(server)
    #expect(metrics.contains(#"palisade_model_loads_total{result="refused"} 4"#), "\(metrics)")

    // Back, readable: the reload goes through.
    try await Shell.run(
      "mv \(pki.path("models-away")) \(models) && mv \(pki.path("digits-away")) \(models)/digits && chmod 755 \(models)/digits/2"
    )
    e = await Self.load(port, pki, caller)
    #expect(e == nil, "\(String(describing: e))")
    let after = try await Self.index(port, pki, caller)
    #expect(
      after.contains { $0.version == "2" && $0.state == "READY" } && !after.contains { $0.version == "1" }, "\(after)")
    #expect(try await server.terminate() == 0)
  }

  @Test func sigkillUnderLoadThenRestartRecoversTheLogAndKeepsTheRollbackState() async throws {
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    let models = pki.path("models")
    let unpack = pki.path("unpack")
    try FileManager.default.createDirectory(atPath: unpack, withIntermediateDirectories: true)
    try await Self.digitsBundle(models, version: 1, factory)
    try await Self.digitsBundle(models, version: 2, factory, packed: true)
    let key = try AuditSigningKey.generate(name: "palisade.test/audit")
    _ = try pki.write("audit.key", key.privateKeyPEM, mode: 0o600)
    let pubPath = try pki.write("audit.pub.pem", key.verifyingKey.publicKeyPEM)
    let config = try Self.config(pki, factory, audit: true)
    let caller = try Self.caller(pki)

    let first = try LoggedProcess.serve(config: config)
    defer { first.kill() }
    let port = try await first.port()
    #expect(try await first.waitFor("model loaded"), "\(first.log)")
    #expect(try await Self.infer(port, pki, caller))

    // Load: four callers, each on its own connection, until the kill.
    let answered = Tally()
    let load = Task {
      await withTaskGroup(of: Void.self) { group in
        for _ in 0..<4 {
          group.addTask {
            while !Task.isCancelled {
              do {
                try await withInferenceClient(
                  host: "127.0.0.1", port: port, tls: Self.tls(pki, caller), token: caller.token
                ) { c in
                  while !Task.isCancelled {
                    _ = try await c.modelInfer(Self.digitsRequest())
                    answered.add()
                  }
                }
              } catch {
                try? await Task.sleep(for: .milliseconds(20))
              }
            }
          }
        }
      }
    }
    while answered.value < 50 { try await Task.sleep(for: .milliseconds(20)) }

    // A large packed v3 is being unpacked when SIGKILL comes (the kill waits for its unpack directory to appear).
    try await Self.digitsBundle(models, version: 3, factory, packed: true, paddingMiB: 48)
    let reload = Task { await Self.load(port, pki, caller) }
    var sawUnpack = false
    for _ in 0..<4000 {
      if ((try? FileManager.default.contentsOfDirectory(atPath: unpack)) ?? []).contains(where: {
        $0.hasPrefix("palisade-unpack-") && $0.contains("-digits-3-")
      }) {
        sawUnpack = true
        break
      }
      try await Task.sleep(for: .milliseconds(2))
    }
    first.sigkill()
    load.cancel()
    reload.cancel()
    _ = await load.value
    #expect(answered.value >= 50)
    let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: unpack)) ?? []
    print("ModelFaultTests: SIGKILL during the unpack: \(sawUnpack); left in the unpack directory: \(leftovers)")

    // The rollback state survived: valid JSON, at least the version that was serving.
    let stateData = try Data(contentsOf: URL(fileURLWithPath: pki.path("state.json")))
    let state = try #require(try JSONSerialization.jsonObject(with: stateData) as? [String: Int])
    let accepted = try #require(state["digits"])
    #expect(accepted >= 2, "\(state)")

    // Restart with only v1 on disk: the log recovers, v1 is refused as a rollback.
    let aside = pki.path("aside")
    try FileManager.default.createDirectory(atPath: aside, withIntermediateDirectories: true)
    for v in [2, 3] {
      try FileManager.default.moveItem(atPath: "\(models)/digits/\(v).tar.zst", toPath: "\(aside)/\(v).tar.zst")
    }
    let second = try LoggedProcess.serve(config: config)
    defer { second.kill() }
    let port2 = try await second.port()
    #expect(port2 != 0, "the server restarts on the log the kill left: \(second.log)")
    // What the killed server left half-unpacked is removed by the next one.
    let remaining = (try? FileManager.default.contentsOfDirectory(atPath: unpack)) ?? []
    #expect(Set(leftovers).isDisjoint(with: remaining), "left: \(leftovers), after the restart: \(remaining)")
    #expect(try await second.waitFor("bundle refused"), "\(second.log)")
    let index = try await Self.index(port2, pki, caller)
    #expect(
      index.contains {
        $0.version == "1" && $0.state == "UNAVAILABLE" && $0.reason.contains("older than the accepted \(accepted)")
      },
      "\(index)")

    // The newest archive back: loaded from a fresh unpack and verified; whatever the kill left is never used.
    try FileManager.default.moveItem(atPath: "\(aside)/3.tar.zst", toPath: "\(models)/digits/3.tar.zst")
    let e = await Self.load(port2, pki, caller)
    #expect(e == nil, "\(String(describing: e))")
    #expect(try await Self.infer(port2, pki, caller))
    let after = try await Self.index(port2, pki, caller)
    #expect(after.contains { $0.version == "3" && $0.state == "READY" }, "\(after)")
    #expect(try await second.terminate() == 0)

    let verify = try await ProcessTests.run(
      ProcessTests.binary, ["audit", "verify", pki.path("audit"), "--key", pubPath, "--origin", "palisade.test/audit"])
    #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    let log = try AuditVerifier.verify(directory: pki.path("audit"), key: key.verifyingKey)
    let records = try log.records.map { try JSONDecoder().decode(AuditRecord.self, from: Data($0)) }
    // Sync durability: every answer that reached a caller had its record fsynced first, the kill notwithstanding
    // (the load's answers, plus one call before it and one after the restart).
    let okRecords = records.filter { $0.kind == .call && $0.rpc == "ModelInfer" && $0.status == "OK" }.count
    #expect(okRecords >= answered.value + 2, "\(okRecords) records for \(answered.value) + 2 answers")
    #expect(records.contains { $0.kind == .modelRefused && $0.version == "1" })
    #expect(records.contains { $0.kind == .modelLoad && $0.version == "3" })
  }

  // MARK: helpers

  /// The digits MLP from the fixtures as a signed bundle `<root>/digits/<version>/` (or `<version>.tar.zst`), with
  /// an optional signed padding file (to make unpacking take a while).
  static func digitsBundle(
    _ root: String, version: Int, _ factory: TestBundleFactory, packed: Bool = false, paddingMiB: Int = 0
  ) async throws {
    let dir = "\(root)/digits/\(version)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try FileManager.default.copyItem(
      atPath: "\(repositoryRoot)/Tests/Fixtures/mlp_digits.onnx", toPath: "\(dir)/mlp_digits.onnx")
    if paddingMiB > 0 { try await Shell.run("head -c \(paddingMiB)M /dev/urandom > \(dir)/padding.bin") }
    let manifest = BundleManifest(
      name: "digits", version: version, created: Date().addingTimeInterval(-60),
      expires: Date().addingTimeInterval(3600),
      modelFile: "mlp_digits.onnx",
      inputs: [
        .init(
          name: "input", datatype: .fp32, shape: [-1, 64],
          featureRange: .init(min: Array(repeating: 0, count: 64), max: Array(repeating: 1, count: 64)))
      ],
      outputs: [
        .init(name: "label", datatype: .int64, shape: [-1]),
        .init(name: "probabilities", datatype: .fp32, shape: [-1, 10]),
      ],
      maxBatch: 64)
    try Data(try manifest.encodedJSON()).write(to: URL(fileURLWithPath: "\(dir)/manifest.json"))
    _ = try await BundleSigner.sign(directory: dir, key: .p256(factory.key))
    if packed {
      try BundlePacker.pack(directory: dir, to: "\(root)/digits/\(version).tar.zst")
      try FileManager.default.removeItem(atPath: dir)
    }
  }

  /// Every non-admin RPC, and RepositoryModelLoad (an admin RPC, named).
  static let policy = """
    version: 1
    rules:
      - name: reloads
        principals: [{spiffe_prefix: "spiffe://palisade.test"}]
        rpcs: [RepositoryModelLoad]
      - name: callers
        principals: [{spiffe_prefix: "spiffe://palisade.test"}]
        rpcs: ["*"]
    """

  static func config(_ pki: TestPKI, _ factory: TestBundleFactory, audit: Bool) throws -> String {
    _ = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    defer { _ = try? pki.write("policy.yaml", policy) }
    return try ProcessTests().config(
      pki,
      extra: """
        logging: {level: \(ProcessInfo.processInfo.environment["PALISADE_TEST_LOG"] == nil ? "info" : "trace")}
        models:
          directories: [models]
          state_file: state.json
          unpack_directory: unpack
          integrity_check_seconds: 0
          trust:
            - models: digits
              public_keys: [publisher.pub.pem]
        \(audit ? "audit: {directory: audit, key: audit.key, durability: sync, checkpoint_every_records: 64, origin: palisade.test/audit}" : "")
        """)
  }

  static func caller(_ pki: TestPKI) throws -> TestClient {
    let c = try pki.client("faults", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/faults")])
    return TestClient(cert: c.cert, key: c.key, token: try pki.token(for: c.issued), issued: c.issued)
  }

  static func tls(_ pki: TestPKI, _ caller: TestClient) -> ClientTLSFiles {
    ClientTLSFiles(certificate: caller.cert, privateKey: caller.key, serverCA: pki.path("server-ca.pem"))
  }

  static func digitsRequest() -> Inference_ModelInferRequest {
    .with {
      $0.modelName = "digits"
      $0.inputs = [
        .with {
          $0.name = "input"
          $0.datatype = "FP32"
          $0.shape = [1, 64]
        }
      ]
      $0.rawInputContents = [Data(count: 64 * 4)]
    }
  }

  /// One ModelInfer on digits: answered or not.
  static func infer(_ port: Int, _ pki: TestPKI, _ caller: TestClient) async throws -> Bool {
    let e = await rpcError {
      _ = try await withInferenceClient(host: "127.0.0.1", port: port, tls: tls(pki, caller), token: caller.token) {
        try await $0.modelInfer(digitsRequest())
      }
    }
    return e == nil
  }

  /// RepositoryModelLoad of digits: nil when it loaded.
  static func load(_ port: Int, _ pki: TestPKI, _ caller: TestClient) async -> RPCError? {
    await rpcError {
      _ = try await withInferenceClient(host: "127.0.0.1", port: port, tls: tls(pki, caller), token: caller.token) {
        try await $0.repositoryModelLoad(.with { $0.modelName = "digits" })
      }
    }
  }

  static func index(_ port: Int, _ pki: TestPKI, _ caller: TestClient) async throws
    -> [Inference_RepositoryIndexResponse.ModelIndex]
  {
    try await withInferenceClient(host: "127.0.0.1", port: port, tls: tls(pki, caller), token: caller.token) {
      try await $0.repositoryIndex(.init()).models
    }
  }

  static func metrics(_ server: LoggedProcess) async throws -> String {
    let admin = try await server.listenPort("admin endpoint listening")
    let url = try #require(URL(string: "http://127.0.0.1:\(admin)/metrics"))
    let (data, _) = try await URLSession.shared.data(from: url)
    return String(decoding: data, as: UTF8.self)
  }
}

/// A counter shared by concurrent callers.
final class Tally: Sendable {
  private let count = Atomic<Int>(0)
  func add() { count.add(1, ordering: .relaxed) }
  var value: Int { count.load(ordering: .relaxed) }
}
