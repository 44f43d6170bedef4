import Crypto
import Foundation
import GRPCCore
import Logging
import PalisadeCore
import PalisadeIdentity
import PalisadeProto
import PalisadeClient
@testable import PalisadeServer
import PalisadeSupport
import PalisadeTestSupport
import Synchronization
import Testing

/// Regression tests for the breaks an adversarial review reproduced against a running server (issue 13). Each
/// test drives the attack from outside, over real mTLS, and fails on the code before the fix.
@Suite struct SecurityRegressionTests {
  // MARK: 1. A token crashes the process

  @Test func outOfRangeTimeClaimsAreRefusedNotACrash() async throws {
    let server = try await TestServer.start()
    let good = try goodClient(server)
    for claims: [String: Any] in [
      ["exp": 1e300], ["iat": -1e300], ["exp": 1e300, "iat": -1e300], ["exp": "soon"],
      ["nbf": 1e300], ["iat": 1.7976931348623157e308],
    ] {
      let token = try server.pki.token(for: good.issued, claims: claims)
      let bad = TestClient(cert: good.cert, key: good.key, token: token, issued: good.issued)
      let error = await rpcError {
        _ = try await withClient(server, bad) { try await $0.modelInfer(simpleRequest(raw: true)) }
      }
      #expect(error?.code == .unauthenticated, "\(claims)")
    }
    // Still serving.
    let ok = try await withClient(server, good) { try await $0.modelInfer(simpleRequest(raw: true)) }
    #expect(ok.outputs.count == 2)
    try await server.stop()
  }

  @Test func tokenInspectShowsAnOutOfRangeExpiryInsteadOfCrashing() async throws {
    let pki = try TestPKI()
    let client = try pki.client("ins", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/ins")])
    let token = try pki.token(for: client.issued, claims: ["exp": 1e300])
    let r = try await ProcessTests.run(ProcessTests.binary, ["token", "inspect", "-"], stdin: token)
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout.contains("exp_out_of_range"))
  }

  // MARK: 2. Any caller can take a model down for everyone

  @Test func zeroSizedDimensionsAreRefusedInValidation() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    // A model whose dimensions are all free: only the zero-size rule stands between [0, 64] and the runtime.
    var request = Inference_ModelInferRequest()
    request.modelName = "identity_fp32"
    var input = Inference_ModelInferRequest.InferInputTensor()
    input.name = "IN"
    input.datatype = "FP32"
    input.shape = [0, 64]
    request.inputs = [input]
    request.rawInputContents = [Data()]
    let zeroSized = request
    let error = await rpcError { _ = try await withClient(server, client) { try await $0.modelInfer(zeroSized) } }
    #expect(error?.code == .invalidArgument)
    #expect(error?.message.contains("zero-sized dimension") == true)
    try await server.stop()
  }

  @Test func oneCallersFailingRequestsNeverOpenTheCircuitForOthers() async throws {
    let model = PoisonableModel()
    let server = try await TestServer.start(models: [model]) { config in
      config.scheduling.breaker = .init(failureThreshold: 3, openDuration: .seconds(30), halfOpenProbes: 1)
    }
    let attacker = try goodClient(server, "attacker")
    let victim = try goodClient(server, "victim")
    // The attacker finds an input that makes the model fail (a model bug), and repeats it.
    for _ in 0..<10 {
      let error = await rpcError {
        _ = try await withClient(server, attacker) { try await $0.modelInfer(PoisonableModel.request(poison: true)) }
      }
      #expect(error?.code == .internalError || error?.code == .unavailable)
    }
    // The circuit opened for the attacker only.
    let attackerAgain = await rpcError {
      _ = try await withClient(server, attacker) { try await $0.modelInfer(PoisonableModel.request(poison: false)) }
    }
    #expect(attackerAgain?.code == .unavailable)
    let served = try await withClient(server, victim) {
      try await $0.modelInfer(PoisonableModel.request(poison: false))
    }
    #expect(served.outputs.count == 1)
    try await server.stop()
  }

  @Test func aPoisonedRequestInABatchFailsOnlyItsCaller() async throws {
    let model = PoisonableModel(delay: .milliseconds(30))
    let server = try await TestServer.start(models: [model]) { config in
      config.scheduling.maxConcurrentExecutions = 1
      config.scheduling.modelMaxConcurrentExecutions = 1
      config.scheduling.maxDelay = .milliseconds(20)
    }
    let attacker = try goodClient(server, "attacker")
    let victim = try goodClient(server, "victim")
    // One connection per caller, many calls on each: the model is kept busy, so the calls queue and merge.
    async let bad = rpcError {
      try await Task.sleep(for: .milliseconds(10))
      _ = try await withClient(server, attacker) { try await $0.modelInfer(PoisonableModel.request(poison: true)) }
    }
    let served = try await withClient(server, victim) { client in
      try await withThrowingTaskGroup(of: Int.self) { group in
        for _ in 0..<12 {
          group.addTask { try await client.modelInfer(PoisonableModel.request(poison: false)).outputs.count }
        }
        return try await group.reduce(0, +)
      }
    }
    #expect(served == 12, "every good request was served")
    #expect(await bad?.code == .internalError)
    #expect(model.largestBatch.load(ordering: .relaxed) > 1, "the requests were batched")
    try await server.stop()
  }

  // MARK: 4. Streams outlive their tokens

  @Test func aStreamEndsWhenItsTokenExpires() async throws {
    let server = try await TestServer.start { $0.auth.leewaySeconds = 0 }
    let good = try goodClient(server)
    let shortLived = TestClient(
      cert: good.cert, key: good.key, token: try server.pki.token(for: good.issued, ttl: 2), issued: good.issued)
    // The client sends one message, then nothing for far longer than the token lives: the server must end the
    // stream when the token expires, not wait for the next message (which would never be refused otherwise).
    let secondMessageSent = Atomic<Bool>(false)
    let outcome = await rpcError {
      try await withClient(server, shortLived) { client in
        try await client.modelStreamInfer(
          requestProducer: { writer in
            try await writer.write(simpleRequest(raw: true))
            try await Task.sleep(for: .seconds(60))
            secondMessageSent.store(true, ordering: .relaxed)
            try await writer.write(simpleRequest(raw: true))
          },
          onResponse: { response in
            var answered = 0
            for try await message in response.messages {
              #expect(message.errorMessage.isEmpty)
              answered += 1
            }
            #expect(answered <= 1, "nothing is served after the token expired")
          })
      }
    }
    #expect(outcome?.code == .unauthenticated)
    let sent = secondMessageSent.load(ordering: .relaxed)
    #expect(!sent, "the stream ended at expiry, not at the next message")
    try await server.stop()
  }

  @Test func aStreamEndsWhenItsSigningKeyIsRetired() async throws {
    let server = try await TestServer.start { $0.reload.intervalSeconds = 1 }
    let good = try goodClient(server)
    let outcome = await rpcError {
      try await withClient(server, good) { client in
        try await client.modelStreamInfer(
          requestProducer: { writer in
            try await writer.write(simpleRequest(raw: true))
            // Retire the key that signed the stream's token.
            let other = P256.Signing.PrivateKey()
            let jwks = ["keys": [TokenSigningKey.es256(other).jwk(kid: "test-2")]]
            try RotationTests.replace(
              server.pki.path("jwks.json"),
              String(decoding: try JSONSerialization.data(withJSONObject: jwks), as: UTF8.self))
            server.runtime.reloader.checkNow()
            try await Task.sleep(for: .seconds(10))
          },
          onResponse: { response in
            for try await _ in response.messages {}
          })
      }
    }
    #expect(outcome?.code == .unauthenticated)
    try await server.stop()
  }

  @Test func healthWatchesAreBoundedPerConnection() async throws {
    let server = try await TestServer.start { $0.server.limits.maxWatchesPerConnection = 2 }
    let client = try goodClient(server)
    let refused = try await withPalisadeConnection(
      host: "127.0.0.1", port: server.port,
      tls: ClientTLSFiles(certificate: client.cert, privateKey: client.key, serverCA: server.pki.path("server-ca.pem"))
    ) { connection in
      let health = Grpc_Health_V1_Health.Client(wrapping: connection)
      // Two watches held open on this connection...
      let opened = AsyncStream<Void>.makeStream()
      let holders = (0..<2).map { _ in
        Task {
          try await health.watch(.init()) { response in
            for try await _ in response.messages {
              opened.continuation.yield()
              try await Task.sleep(for: .seconds(30))
            }
          }
        }
      }
      var seen = 0
      for await _ in opened.stream {
        seen += 1
        if seen == 2 { break }
      }
      // ...so the third is refused.
      let third = await rpcError {
        try await health.watch(.init()) { response in for try await _ in response.messages {} }
      }
      for holder in holders { holder.cancel() }
      return third
    }
    #expect(refused?.code == .resourceExhausted)
    try await server.stop()
  }

  // MARK: 5. Model-scoped callers see every model

  static let scopedPolicy = """
    version: 1
    rules:
      - name: digits-only
        principals: [{spiffe: "spiffe://palisade.test/sa/tenant-a"}]
        rpcs: ["*"]
        models: ["simple"]
        versions: "=1"
      - name: nothing-else-for-tenant-a
        effect: deny
        principals: [{spiffe: "spiffe://palisade.test/sa/tenant-a"}]
        rpcs: ["*"]
        models: ["*"]
      - name: others
        principals: [{spiffe_prefix: "spiffe://palisade.test"}]
        rpcs: ["*"]
    """

  @Test func listingsShowOnlyWhatThePolicyAllows() async throws {
    let server = try await TestServer.start(
      models: TestServer.defaultModels() + [AddSubModel(name: "simple", version: "2")], policy: Self.scopedPolicy)
    let tenant = try goodClient(server, "tenant-a")
    let (stats, index, readyV2) = try await withClient(server, tenant) { client in
      let stats = try await client.modelStatistics(.init())
      let index = try await client.repositoryIndex(.init())
      let ready = await rpcError {
        _ = try await client.modelReady(
          .with {
            $0.name = "simple"
            $0.version = "2"
          })
      }
      return (stats, index, ready)
    }
    #expect(Set(stats.modelStats.map(\.name)) == ["simple"])
    #expect(Set(stats.modelStats.map(\.version)) == ["1"])
    #expect(index.models.map(\.name) == ["simple"])
    #expect(index.models.map(\.version) == ["1"])
    #expect(readyV2?.code == .permissionDenied, "ModelReady honours the version constraint")
    // Another caller with an unscoped rule still sees everything.
    let other = try goodClient(server, "ops")
    let all = try await withClient(server, other) { try await $0.repositoryIndex(.init()) }
    #expect(all.models.count > 2)
    try await server.stop()
  }

  // MARK: 8. Log injection

  @Test func controlCharactersInCallerValuesCannotForgeLogLines() throws {
    let handler = TextLogHandler(label: "t", level: .info)
    let event = LogEvent(
      level: .notice, message: "policy denied",
      metadata: [
        "model": "digits\n2026-12-04T00:00:00Z info palisade: forged admin=true", "rid": "\u{1B}[31mred\u{202E}",
      ],
      source: "s", file: "f", function: "g", line: 1)
    let line = handler.format(event)
    #expect(line.filter { $0 == "\n" }.count == 1, "one line per event")
    #expect(line.hasSuffix("\n"))
    #expect(line.contains("digits\\n2026"))
    #expect(line.contains("\\u{1B}[31mred\\u{202E}"))
    #expect(!line.contains("\u{1B}"))
    #expect(LogEscaping.escape("a\\nb") == "a\\\\nb", "an escaped value is never ambiguous")
    #expect(LogEscaping.escape("spiffe://palisade.test/sa/x") == "spiffe://palisade.test/sa/x")
  }

  @Test func jsonLogLinesAreOneValidObjectWhateverTheValues() throws {
    var handler = JSONLogHandler(label: "palisade", level: .info)
    handler[metadataKey: "model"] = "from the handler"
    handler[metadataKey: "pod"] = "palisade-0"
    let event = LogEvent(
      level: .notice, message: "token \"refused\"",
      metadata: [
        "model": "digits\n{\"forged\":true}", "rid": "\u{1B}[31m\u{202E}\\", "msg": "not the message",
        "é": "ünïcode \u{1F600}",
      ],
      source: "s", file: "f", function: "g", line: 1)
    let line = handler.format(event)
    #expect(line.filter { $0 == "\n" }.count == 1 && line.hasSuffix("}\n"), "one line per event: \(line)")
    let object = try #require(
      try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String], "valid JSON: \(line)")
    #expect(object["msg"] == "token \"refused\"", "the handler's own fields win over metadata of that name")
    #expect(object["model"] == "digits\\n{\"forged\":true}", "the event's metadata wins over the handler's")
    #expect(object["pod"] == "palisade-0")
    #expect(object["rid"] == "\\u{1B}[31m\\u{202E}\\\\")
    #expect(object["é"] == "ünïcode \u{1F600}")
    #expect(object["level"] == "notice" && object["logger"] == "palisade")
    let time = try #require(object["time"])
    #expect(time.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil, "RFC 3339 UTC: \(time)")
    let keys = line.matches(of: /"([a-zé]+)":/).map { String($0.1) }
    #expect(keys == keys.sorted() && keys.count == 8, "keys sorted, each once: \(keys)")
  }

  @Test func rfc3339TimesMatchFoundationsFormatter() {
    // The refused-call message and the quarantine record format times without a formatter (creating one cost tens
    // of microseconds on a path a quarantined caller drives); the text must stay what ISO8601DateFormatter wrote.
    let reference = ISO8601DateFormatter()
    for seconds in [0.0, 951_782_400.5, 1_796_511_935.999, 4_102_444_799.0, -1.5] {
      let date = Date(timeIntervalSince1970: seconds)
      #expect(RFC3339.string(secondsSince1970: seconds) == reference.string(from: date), "at \(seconds)")
    }
    let fractional = ISO8601DateFormatter()
    fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    for seconds in [0.0, 0.0009, 0.9996, 1.1234, 951_782_400.5, 1_796_511_935.999, 1_796_511_935.9996, -1.5, -0.0004] {
      let date = Date(timeIntervalSince1970: seconds)
      #expect(
        RFC3339.string(secondsSince1970: seconds, milliseconds: true) == fractional.string(from: date),
        "at \(seconds), with milliseconds")
    }
    let event = EgressEvent(
      reason: "r", location: "l", detail: "d", destination: nil, method: "GET", scheme: "https", host: "h", port: 443,
      bodyBytes: 0, time: Date(timeIntervalSince1970: 1_796_511_935.1234))
    #expect(event.time == "2026-12-05T23:05:35.123Z", "the egress sidecar's events are stamped the same way")
    #expect(RFC3339.string(secondsSince1970: 253_402_300_800) == "10000-01-01T00:00:00Z", "no year cut to 4 digits")
    #expect(RFC3339.string(secondsSince1970: .infinity) == "invalid-time")
    #expect(RFC3339.string(secondsSince1970: .nan) == "invalid-time")
    #expect(RFC3339.now().wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil)
  }

  @Test func aModelNameWithANewlineStaysOnOneLineInTheServerLog() async throws {
    let pki = try TestPKI()
    let client = try pki.client("inj", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/inj")])
    for format in ["text", "json"] {
      let serve = try LoggedProcess.serve(config: try ProcessTests().config(pki, extra: "logging: {format: \(format)}"))
      defer { serve.kill() }
      let port = try await serve.port()
      _ = try await ProcessTests.run(
        ProcessTests.binary,
        [
          "call", "infer", "digits\nFORGED-LINE admin=true", "--input", "-", "--target", "127.0.0.1:\(port)", "--cert",
          client.cert, "--key", client.key, "--ca", pki.path("ca-bundle.pem"), "--token",
          try pki.token(for: client.issued),
        ],
        stdin: #"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}"#)
      _ = try await serve.terminate()
      let log = serve.log
      #expect(log.contains("FORGED-LINE"), "the attempt reached the log")
      for line in log.split(separator: "\n") where line.contains("FORGED-LINE") {
        #expect(!line.hasPrefix("FORGED-LINE"), "no line starts with the forged text: \(line)")
      }
    }
  }
}

/// A model that fails (a model bug) on a poison row (first value -1) and doubles otherwise; counts batch sizes.
final class PoisonableModel: ServableModel, Sendable {
  let descriptor: ModelDescriptor = ModelDescriptor(
    name: "poisonable", version: "1", platform: "test",
    inputs: [TensorSpec(name: "x", datatype: .fp32, shape: [-1, 2])],
    outputs: [TensorSpec(name: "y", datatype: .fp32, shape: [-1, 2])])
  let delay: Duration
  let largestBatch = Atomic<Int>(0)

  init(delay: Duration = .zero) { self.delay = delay }

  func infer(_ request: InferenceRequest) async throws -> [Tensor] {
    guard let x = request.inputs.first, let values = x.floatingPointValues else {
      throw PalisadeError(.internal, "no input")
    }
    let rows = Int(x.shape[0])
    largestBatch.max(rows, ordering: .relaxed)
    if delay > .zero { try await Task.sleep(for: delay) }
    for r in 0..<rows where values[r * 2] == -1 {
      throw PalisadeError(.internal, "inference failed", detail: "poison row")
    }
    return [try Tensor(name: "y", shape: x.shape, values: values.map { Float($0 * 2) })]
  }

  static func request(poison: Bool) -> Inference_ModelInferRequest {
    .with { r in
      r.modelName = "poisonable"
      var input = Inference_ModelInferRequest.InferInputTensor()
      input.name = "x"
      input.datatype = "FP32"
      input.shape = [1, 2]
      input.contents.fp32Contents = poison ? [-1, 1] : [1, 2]
      r.inputs = [input]
    }
  }
}
