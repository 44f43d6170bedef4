import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import PalisadeBundle
import PalisadeClient
import PalisadeProto
import PalisadeServer
import PalisadeScreening
import PalisadeTestSupport
import Testing

/// Stages 6, 7 and 9 over real mTLS with a signed bundle: output policy and padding from the manifest, OOD flags,
/// an extraction attack that ends in quarantine, the admin RPCs that list and lift it, per-stage metrics, and
/// shedding and deadlines through gRPC.
@Suite struct HardeningServingTests {
  static let fixtures = "\(repositoryRoot)/Tests/Fixtures"

  static func policy(screening: String = "manifest") -> String {
    """
    version: 1
    containment: {screening: \(screening), extraction: quarantine, quarantine_seconds: 600}
    rules:
      - name: operators
        principals: [{spiffe: "spiffe://palisade.test/sa/admin"}]
        rpcs: [ListQuarantines, LiftQuarantine]
      - name: callers
        principals: [{spiffe_prefix: "spiffe://palisade.test"}]
        rpcs: ["*"]
    """
  }

  /// The digits MLP with reference statistics from the fixtures' sample and an output policy, signed.
  static func digitsBundle(_ pki: TestPKI, _ factory: TestBundleFactory) async throws -> String {
    let dir = pki.path("models/digits/1")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: "\(fixtures)/mlp_digits.onnx", toPath: "\(dir)/mlp_digits.onnx")
    let stats = try ReferenceStatisticsBuilder().build(
      try SampleFile.read(path: "\(fixtures)/digits_reference.npy"), covariance: .diagonal)
    let manifest = BundleManifest(
      name: "digits", version: 1, created: Date().addingTimeInterval(-60), expires: Date().addingTimeInterval(3600),
      modelFile: "mlp_digits.onnx",
      inputs: [
        .init(
          name: "input", datatype: .fp32, shape: [-1, 64],
          referenceStatistics: .init(
            mean: stats.reference.mean, std: stats.reference.std, covarianceDiagonal: stats.reference.covarianceDiagonal
          ))
      ],
      outputs: [
        .init(name: "label", datatype: .int64, shape: [-1]),
        .init(name: "probabilities", datatype: .fp32, shape: [-1, 10]),
      ],
      labels: ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
      outputPolicy: .init(topK: 3, roundDecimals: 3, padToBucketBytes: 1024),
      screeningPolicy: .init(oodThreshold: stats.suggestedThreshold, action: .flag), maxBatch: 64)
    try Data(try manifest.encodedJSON()).write(to: URL(fileURLWithPath: "\(dir)/manifest.json"))
    _ = try await BundleSigner.sign(directory: dir, key: .p256(factory.key))
    return try pki.write("publisher.pub.pem", factory.publicKeyPEM)
  }

  static func request(_ rows: [[Float]]) -> Inference_ModelInferRequest {
    .with {
      $0.modelName = "digits"
      $0.inputs = [
        .with {
          $0.name = "input"
          $0.datatype = "FP32"
          $0.shape = [Int64(rows.count), 64]
        }
      ]
      $0.rawInputContents = [rows.flatMap { $0 }.withUnsafeBytes { Data($0) }]
    }
  }

  /// Raw BYTES tensor framing: a 4-byte little-endian length before each element.
  static func bytesElements(_ raw: Data) -> [String] {
    var out: [String] = []
    var bytes = [UInt8](raw)[...]
    while bytes.count >= 4 {
      let n =
        Int(bytes[bytes.startIndex]) | Int(bytes[bytes.startIndex + 1]) << 8 | Int(bytes[bytes.startIndex + 2]) << 16
        | Int(bytes[bytes.startIndex + 3]) << 24
      bytes = bytes.dropFirst(4)
      out.append(String(decoding: bytes.prefix(n), as: UTF8.self))
      bytes = bytes.dropFirst(n)
    }
    return out
  }

  @Test func manifestPoliciesExtractionQuarantineAndAdminRPCs() async throws {
    let pki = try TestPKI()
    let keyPath = try await Self.digitsBundle(pki, TestBundleFactory())
    let server = try await TestServer.start(pki: pki, models: [], policy: Self.policy()) {
      $0.models.directories = [pki.path("models")]
      $0.models.stateFile = pki.path("state.json")
      $0.models.trust = [.init(models: "digits", publicKeys: [keyPath])]
    }
    for _ in 0..<200 where !server.runtime.repository.isReady(name: "digits", version: "1") {
      try await Task.sleep(for: .milliseconds(50))
    }
    try #require(
      server.runtime.repository.isReady(name: "digits", version: "1"), "\(server.runtime.repository.index())")
    let stream = try SampleFile.read(path: "\(Self.fixtures)/digits_stream.csv")
    let rows = (0..<stream.rows).map { r in stream.values[(r * 64)..<(r * 64 + 64)].map { Float($0) } }
    let caller = try goodClient(server, "caller")

    // Output policy: top 3 of the ten probabilities with labels, rounded; every response padded to 1 KiB.
    let (responses, metadata) = try await withClient(server, caller) { c in
      var out: [Inference_ModelInferResponse] = []
      for r in rows.prefix(10) { out.append(try await c.modelInfer(Self.request([r]))) }
      return (out, try await c.modelMetadata(.with { $0.name = "digits" }))
    }
    #expect(
      metadata.outputs.map { "\($0.name):\($0.datatype):\($0.shape)" } == [
        "label:INT64:[-1]", "probabilities:BYTES:[-1, 3]",
      ])
    var sizes: Set<Int> = []
    var labels: Set<String> = []
    for response in responses {
      #expect(response.outputs.map(\.name) == ["label", "probabilities"])
      #expect(response.outputs[1].datatype == "BYTES" && response.outputs[1].shape == [1, 3])
      let top = Self.bytesElements(response.rawOutputContents[1])
      #expect(top.count == 3 && top.allSatisfy { $0.split(separator: ":").count == 3 }, "\(top)")
      labels.insert(String(top.first?.split(separator: ":").last ?? ""))
      #expect(response.parameters["palisade_ood_flag"]?.boolParam == false)
      sizes.insert((try response.serializedBytes() as [UInt8]).count)
    }
    #expect(labels.count > 3, "different digits were classified: \(labels)")
    #expect(sizes.count == 1 && (sizes.first ?? 0) % 1024 == 0, "sizes \(sizes)")

    // Random probing: served but flagged, until the extraction monitor quarantines the prober.
    let prober = try goodClient(server, "prober")
    let refusal = await rpcError {
      try await withClient(server, prober) { c in
        var rng = SystemRandomNumberGenerator()
        for i in 0..<300 {
          let r = try await c.modelInfer(Self.request([(0..<64).map { _ in Float.random(in: 0...1, using: &rng) }]))
          if i == 0 { #expect(r.parameters["palisade_ood_flag"]?.boolParam == true) }
        }
      }
    }
    #expect(
      refusal?.code == .permissionDenied && refusal?.message.contains("quarantined") == true,
      "\(String(describing: refusal))")
    // The natural caller is untouched.
    _ = try await withClient(server, caller) { c in try await c.modelInfer(Self.request([rows[0]])) }

    // Operators see and lift the quarantine; callers may not.
    let admin = try goodClient(server, "admin")
    func adminCall<R: Sendable>(
      _ who: TestClient,
      _ body: @escaping @Sendable (Palisade_V1_Admin.Client<HTTP2ClientTransport.Posix>) async throws -> R
    ) async throws -> R {
      try await withAdminClient(
        host: "127.0.0.1", port: server.port,
        tls: ClientTLSFiles(certificate: who.cert, privateKey: who.key, serverCA: server.pki.path("server-ca.pem")),
        token: who.token, body)
    }
    let listed = try await adminCall(admin) { try await $0.listQuarantines(.init()) }
    #expect(listed.quarantines.map(\.principal) == ["spiffe://palisade.test/sa/prober"])
    #expect(listed.quarantines.first?.source == "extraction_monitor" && listed.quarantines.first?.model == "digits")
    #expect((listed.quarantines.first?.untilUnix ?? 0) > Int64(Date().timeIntervalSince1970) + 500)
    let denied = await rpcError { _ = try await adminCall(caller) { try await $0.listQuarantines(.init()) } }
    #expect(denied?.code == .permissionDenied)
    let badLift = await rpcError {
      _ = try await adminCall(admin) { try await $0.liftQuarantine(.with { $0.principal = "prober" }) }
    }
    #expect(badLift?.code == .invalidArgument)
    #expect(
      try await adminCall(admin) {
        try await $0.liftQuarantine(.with { $0.principal = "spiffe://palisade.test/sa/prober" })
      }.lifted)
    _ = try await withClient(server, prober) { c in try await c.modelInfer(Self.request([rows[1]])) }

    // Per-stage metrics and the screening counters.
    let (_, metrics) = try await adminGet(server, "/metrics")
    for needle in [
      #"palisade_stage_duration_seconds_bucket{stage="compute""#,
      #"palisade_stage_duration_seconds_bucket{stage="screen""#,
      #"palisade_stage_duration_seconds_bucket{stage="queue""#,
      #"palisade_extraction_alarms_total{model="digits",detector="ood_share"}"#, "palisade_quarantines_total",
      #"palisade_ood_flagged_total{model="digits",action="flag"}"#, #"palisade_batch_size_bucket{model="digits""#,
      #"palisade_circuit_breaker_state{model="digits"} 0"#, #"palisade_queue_depth{model="digits"}"#,
    ] {
      #expect(metrics.contains(needle), "missing \(needle)")
    }

    // The policy can tighten screening to reject, without a restart.
    try pki.write("policy.yaml", Self.policy(screening: "reject"))
    server.runtime.reloader.checkNow()
    var rejected: RPCError? = nil
    for _ in 0..<100 {
      rejected = await rpcError {
        _ = try await withClient(server, caller) { c in
          try await c.modelInfer(Self.request([Array(repeating: 1, count: 64)]))
        }
      }
      if rejected != nil { break }
      try await Task.sleep(for: .milliseconds(50))
    }
    #expect(
      rejected?.code == .invalidArgument && rejected?.message.contains("training distribution") == true,
      "\(String(describing: rejected))")
    try await server.stop()
  }

  @Test func queuedCallsAreShedWhenFullAndDroppedAtTheirDeadline() async throws {
    let model = DoublingModel(gated: true)
    let server = try await TestServer.start(models: [model]) {
      $0.scheduling.modelMaxConcurrentExecutions = 1
      $0.scheduling.modelQueueLimit = 1
    }
    let caller = try goodClient(server)
    let request = Inference_ModelInferRequest.with {
      $0.modelName = "double"
      $0.inputs = [
        .with {
          $0.name = "IN"
          $0.datatype = "FP32"
          $0.shape = [1, 4]
          $0.contents.fp32Contents = [1, 2, 3, 4]
        }
      ]
    }
    let running = Task { try await withClient(server, caller) { c in try await c.modelInfer(request) } }
    for _ in 0..<400 where model.executions.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
    // One queued call with a deadline: it expires in the queue and never runs.
    let expired = await rpcError {
      _ = try await withClient(server, caller) { c in
        var options = CallOptions.defaults
        options.timeout = .milliseconds(300)
        return try await c.modelInfer(request, options: options)
      }
    }
    #expect(expired?.code == .deadlineExceeded, "\(String(describing: expired))")
    // Fill the queue (1), then the next call is shed.
    let queued = Task { try await withClient(server, caller) { c in try await c.modelInfer(request) } }
    for _ in 0..<400 {
      if try await adminGet(server, "/metrics").1.contains(#"palisade_queue_depth{model="double"} 1"#) { break }
      try await Task.sleep(for: .milliseconds(10))
    }
    let shed = await rpcError { _ = try await withClient(server, caller) { c in try await c.modelInfer(request) } }
    #expect(
      shed?.code == .resourceExhausted && shed?.message.contains("queue is full") == true, "\(String(describing: shed))"
    )
    model.setGate(open: true)
    let queuedResult = await rpcError { _ = try await queued.value }
    #expect(queuedResult == nil, "\(String(describing: queuedResult))")
    #expect(try await running.value.outputs.first?.contents.fp32Contents == [2, 4, 6, 8])
    #expect(model.executions.count == 2, "the expired call never ran: \(model.executions)")
    try await server.stop()
  }
}
