import Foundation
import PalisadeAudit
import PalisadeBundle
@testable import PalisadeServer
import PalisadeTestSupport
import PalisadeYAML
import Testing

/// OpenTelemetry tracing (docs/operations.md, Tracing) end to end: a real `palisade serve` with a signed model, an
/// OTLP/gRPC receiver built from `opentelemetry-proto` and grpcio, and grpcio callers that send W3C `traceparent`
/// headers.
@Suite(.serialized) struct TracingTests {
  /// One span as the receiver wrote it.
  struct Span: Decodable {
    var trace_id: String
    var span_id: String
    var parent_span_id: String
    var name: String
    var kind: Int
    var start: UInt64
    var end: UInt64
    var status_code: Int
    var attributes: [String: AttributeValue]
    var resource: [String: AttributeValue]

    func string(_ key: String) -> String? {
      if case .string(let s) = attributes[key] { return s }
      return nil
    }
    func int(_ key: String) -> Int? {
      if case .int(let i) = attributes[key] { return i }
      return nil
    }
  }

  enum AttributeValue: Decodable, Equatable {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case other

    init(from decoder: any Decoder) throws {
      let c = try decoder.singleValueContainer()
      if let b = try? c.decode(Bool.self) {
        self = .bool(b)
      } else if let i = try? c.decode(Int.self) {
        self = .int(i)
      } else if let d = try? c.decode(Double.self) {
        self = .double(d)
      } else if let s = try? c.decode(String.self) {
        self = .string(s)
      } else {
        self = .other
      }
    }

    var text: String {
      switch self {
      case .string(let s): s
      case .int(let i): "\(i)"
      case .double(let d): "\(d)"
      case .bool(let b): "\(b)"
      case .other: ""
      }
    }
  }

  // W3C trace context: version 00, 16-byte trace id, 8-byte parent span id, flags 01 (sampled).
  static let okTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
  static let okParent = "00f067aa0ba902b7"
  static let missingTrace = "0af7651916cd43dd8448eb211c80319c"
  static let streamTrace = "a3ce929d0e0e47364bf92f3577b34da6"
  static let streamParent = "b7ad6b7169203331"

  static let stages = [
    "authenticate", "authorise", "resolve", "validate", "screen", "compute", "harden", "encode", "audit",
  ]

  @Test func spansContinueTheCallersTraceWithAStagePerPipelineStep() async throws {
    let run = try await Self.serveAndCall(tracing: "enabled: true")
    defer { run.stop() }
    // Wait (bounded) for every expected trace to arrive.
    var spans: [Span] = []
    let deadline = ContinuousClock.now + .seconds(30)
    while ContinuousClock.now < deadline {
      spans = try Self.spans(run.out)
      let traces = Set(spans.map(\.trace_id))
      if [Self.okTrace, Self.missingTrace, Self.streamTrace].allSatisfy(traces.contains), traces.count >= 5,
        spans.filter({ $0.name == "audit" }).count >= 5
      {
        break
      }
      try await Task.sleep(for: .milliseconds(100))
    }
    #expect(try await run.server.terminate() == 0)

    // 1. ModelInfer with the caller's traceparent: the server span is the caller's span's child, every stage its
    // child, all in the caller's trace, with model, version and status.
    let ok = spans.filter { $0.trace_id == Self.okTrace }
    let root = try #require(
      ok.first { $0.kind == 2 }, "a SERVER span in the caller's trace: \(spans)\n\(run.server.log)\n\(run.receiver.log)"
    )
    #expect(root.name == "inference.GRPCInferenceService/ModelInfer")
    #expect(root.parent_span_id == Self.okParent)
    #expect(root.string("rpc.system") == "grpc")
    #expect(root.string("rpc.method") == "ModelInfer")
    #expect(root.int("rpc.grpc.status_code") == 0)
    #expect(root.string("palisade.model") == "digits")
    #expect(root.string("palisade.model.version") == "1")
    #expect(root.string("palisade.request_id")?.isEmpty == false)
    #expect(root.resource["service.name"] == .string("palisade-test"))
    let children = ok.filter { $0.span_id != root.span_id }
    #expect(children.map(\.name).sorted() == Self.stages.sorted(), "\(children.map(\.name))")
    for child in children {
      #expect(child.parent_span_id == root.span_id, "\(child.name)")
      #expect(child.kind == 1, "\(child.name) is INTERNAL")
      #expect(child.status_code != 2, "\(child.name) did not fail")
      #expect(child.start >= root.start && child.end <= root.end, "\(child.name) lies within the call")
    }
    // Stages after resolution name the model; the stages follow one another.
    for name in ["resolve", "validate", "screen", "compute", "harden", "encode", "audit"] {
      let s = try #require(children.first { $0.name == name })
      #expect(s.string("palisade.model") == "digits" && s.string("palisade.model.version") == "1", "\(name)")
    }
    let ordered = Self.stages.compactMap { n in children.first { $0.name == n } }
    for (a, b) in zip(ordered, ordered.dropFirst()) { #expect(a.end <= b.start, "\(a.name) ends before \(b.name)") }

    // 2. An unknown model: NOT_FOUND on the server span and on the stage that refused it; no model name recorded
    // (a caller-chosen string never reaches the collector).
    let missing = spans.filter { $0.trace_id == Self.missingTrace }
    let missingRoot = try #require(missing.first { $0.kind == 2 })
    #expect(missingRoot.int("rpc.grpc.status_code") == 5)
    #expect(missingRoot.status_code == 2, "ERROR status")
    let refused = try #require(missing.first { $0.name == "resolve" })
    #expect(refused.status_code == 2 && refused.int("rpc.grpc.status_code") == 5)
    #expect(missing.contains { $0.name == "audit" }, "the refusal's audit record is a stage too")
    #expect(!missing.contains { $0.name == "validate" }, "nothing runs after the refusal")
    #expect(missing.allSatisfy { $0.string("palisade.model") == nil })

    // 3. A stream message: its own server span under the stream's traceparent, stages from authorise on.
    let stream = spans.filter { $0.trace_id == Self.streamTrace }
    let streamRoot = try #require(stream.first { $0.kind == 2 })
    #expect(streamRoot.name == "inference.GRPCInferenceService/ModelStreamInfer")
    #expect(streamRoot.parent_span_id == Self.streamParent)
    #expect(Set(stream.filter { $0.kind == 1 }.map(\.name)) == Set(Self.stages.dropFirst()))

    // 4, 5. No traceparent, or a malformed one: a new trace whose server span has no parent; the malformed header
    // is neither logged nor exported.
    let fresh = spans.filter {
      ![Self.okTrace, Self.missingTrace, Self.streamTrace].contains($0.trace_id) && $0.kind == 2
    }
    #expect(fresh.count == 2 && fresh.allSatisfy { $0.parent_span_id == "" }, "\(fresh)")
    #expect(!run.server.log.contains("SECRET"), "\(run.server.log)")

    // No token, certificate, principal or tensor bytes anywhere: not in an attribute, not in the exported bytes.
    let raw = try Data(contentsOf: URL(fileURLWithPath: run.raw))
    for needle in [
      run.token, String(run.token.split(separator: ".").last ?? ""), run.principal, run.certificateBase64Prefix,
      "SECRET",
    ] {
      #expect(
        !spans.contains { s in s.attributes.values.contains { $0.text.contains(needle) } }, "\(needle) in an attribute")
      #expect(raw.range(of: Data(needle.utf8)) == nil, "\(needle) in the exported bytes")
    }
    #expect(raw.range(of: run.tensor.prefix(16)) == nil, "tensor bytes in the exported bytes")
    #expect(raw.range(of: Data(run.tensor.map { String(format: "%02x", $0) }.joined().prefix(32).utf8)) == nil)
  }

  /// A caller's sampled flag is kept only within sample_ratio (the server's draw); unsampled stays unsampled; the
  /// trace and parent ids are carried on either way.
  @Test func aCallersSampledFlagIsFollowedOnlyWithinTheSampleRatio() {
    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    #expect(TraceHeaders.admitted(sampled, ratio: 1) == sampled)
    #expect(TraceHeaders.admitted(sampled, ratio: 0) == unsampled)
    #expect(TraceHeaders.admitted(unsampled, ratio: 0.5) == unsampled)
    #expect(TraceHeaders.admitted("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03", ratio: 0).hasSuffix("-02"))
    let kept = (0..<4000).filter { _ in TraceHeaders.admitted(sampled, ratio: 0.25) == sampled }.count
    #expect((800...1200).contains(kept), "\(kept) of 4000 kept at 0.25")
    #expect(TraceHeaders.isValid(TraceHeaders.admitted(sampled, ratio: 0)))
  }

  @Test func tracingOffExportsNothing() async throws {
    // The section present but off, pointing at a live receiver: nothing may arrive there.
    let run = try await Self.serveAndCall(tracing: "enabled: false")
    defer { run.stop() }
    try await Task.sleep(for: .seconds(1))
    #expect(try await run.server.terminate() == 0)
    #expect(!run.server.log.contains("tracing on"))
    #expect(!FileManager.default.fileExists(atPath: run.raw), "an export request arrived with tracing off")
    #expect(try Self.spans(run.out).isEmpty)
  }

  @Test func otelEnvironmentVariablesAreRefusedWhenTracingIsOn() async throws {
    let pki = try TestPKI()
    let path = try ProcessTests().config(pki, extra: "tracing: {enabled: true}")
    let process = Process()
    process.executableURL = URL(fileURLWithPath: ProcessTests.binary)
    process.arguments = ["serve", "--config", path, "--check"]
    process.environment = ProcessInfo.processInfo.environment.merging(
      ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4317"]) { $1 }
    let err = Pipe()
    process.standardError = err
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    #expect(process.terminationStatus == 2)
    #expect(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "\(stderr)")
  }

  @Test func sectionIsOffByDefaultAndTakesOnlyALoopbackCollector() throws {
    #expect(try TracingSettings(yaml: nil) == .defaults)
    #expect(!TracingSettings.defaults.enabled)
    // The annotated example spells out every default.
    #expect(try ServerConfig.load(path: "\(repositoryRoot)/deploy/palisade.example.yaml").tracing == .defaults)
    let root = try YAMLMap.parse(
      "tracing: {enabled: true, endpoint: \"http://[::1]:4318\", sample_ratio: 0.25, max_queued_spans: 100, max_export_batch: 50}"
    )
    let t = try TracingSettings(yaml: try root.map("tracing"))
    #expect(t.enabled && t.endpoint == "http://[::1]:4318" && t.sampleRatio == 0.25 && t.maxQueuedSpans == 100)
    for good in ["http://127.0.0.1:4317", "http://localhost:4317", "http://127.8.9.10:1"] {
      let m = try YAMLMap.parse("tracing: {endpoint: \"\(good)\"}")
      #expect(try TracingSettings(yaml: try m.map("tracing")).endpoint == good)
    }
    let bad = [
      "https://127.0.0.1:4317", "http://10.0.0.1:4317", "http://collector:4317", "http://127.0.0.1",
      "http://127.0.0.1:4317/v1", "http://127.0.0.1.evil.example:4317", "http://[::2]:4317", "http://127.0.0.1:0",
    ]
    for endpoint in bad {
      let m = try YAMLMap.parse("tracing: {endpoint: \"\(endpoint)\"}")
      #expect(throws: YAMLError.self, "\(endpoint)") { try TracingSettings(yaml: try m.map("tracing")) }
    }
    for (text, key) in [
      ("tracing: {enabled: yes please}", "tracing.enabled"), ("tracing: {sample_ratio: 2}", "tracing.sample_ratio"),
      ("tracing: {exporter: zipkin}", "tracing.exporter"),
      ("tracing: {max_queued_spans: 10, max_export_batch: 11}", "tracing.max_export_batch"),
    ] {
      let m = try YAMLMap.parse(text)
      do {
        _ = try TracingSettings(yaml: try m.map("tracing"))
        Issue.record("\(text) was accepted")
      } catch {
        #expect(error.path == key, "\(text): \(error)")
      }
    }
  }

  // MARK: helpers

  struct Run {
    /// Kept alive for the run: its directory (configuration, models, the receiver's files) goes with it.
    var pki: TestPKI
    var server: LoggedProcess
    var receiver: LoggedProcess
    var out: String
    var raw: String
    var token: String
    var principal: String
    var certificateBase64Prefix: String
    var tensor: Data

    func stop() {
      server.kill()
      receiver.kill()
    }
  }

  /// A receiver, a server with `tracing: {<tracing>, endpoint: <the receiver>, ...}` serving a signed digits model, and
  /// the grpcio calls of traced_call.py, which must all answer as expected.
  static func serveAndCall(tracing: String) async throws -> Run {
    #expect(FileManager.default.isExecutableFile(atPath: InteropTests.python), "run `make venv` first")
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    try await ModelFaultTests.digitsBundle(pki.path("models"), version: 1, factory)
    _ = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    let out = pki.path("spans.jsonl")
    let raw = pki.path("requests.bin")
    let receiver = try LoggedProcess(
      InteropTests.python, ["\(repositoryRoot)/Tests/Interop/otlp_receiver.py", "--out", out, "--raw", raw])
    guard try await receiver.waitFor("otlp receiver listening port"),
      let line = receiver.log.split(separator: "\n").first(where: { $0.contains("otlp receiver listening port") }),
      let port = Int(line.split(separator: " ").last ?? "")
    else {
      receiver.kill()
      throw TracingTestError("the OTLP receiver did not start: \(receiver.log)")
    }
    let config = try ProcessTests().config(
      pki,
      extra: """
        models:
          directories: [models]
          state_file: state.json
          unpack_directory: unpack
          integrity_check_seconds: 0
          trust:
            - models: digits
              public_keys: [publisher.pub.pem]
        audit: {directory: audit, key: audit.key, durability: sync, origin: palisade.test/audit}
        tracing: {\(tracing), endpoint: "http://127.0.0.1:\(port)", service_name: palisade-test, export_interval_ms: 100}
        """)
    _ = try pki.write("policy.yaml", ModelFaultTests.policy)
    _ = try pki.write("audit.key", try AuditSigningKey.generate(name: "palisade.test/audit").privateKeyPEM, mode: 0o600)
    let server = try LoggedProcess.serve(config: config)
    let serverPort = try await server.port()
    guard serverPort != 0, try await server.waitFor("model loaded") else {
      server.kill()
      receiver.kill()
      throw TracingTestError("the server did not start: \(server.log)")
    }
    let principal = "spiffe://palisade.test/sa/traced"
    let client = try pki.client("traced", sans: [TestPKI.spiffe(principal)])
    let token = try pki.token(for: client.issued)
    // 64 FP32 features in [0, 1) that spell a recognisable byte pattern.
    var tensor = Data()
    for i in 0..<64 {
      withUnsafeBytes(of: (Float(i) * 0.0151 + 0.00017).bitPattern.littleEndian) { tensor.append(contentsOf: $0) }
    }
    let certificate = try String(contentsOfFile: client.cert, encoding: .utf8)
      .split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
    let calls = try await ProcessTests.run(
      InteropTests.python,
      [
        "\(repositoryRoot)/Tests/Interop/traced_call.py", "--port", "\(serverPort)", "--cert", client.cert, "--key",
        client.key, "--ca", pki.path("ca-bundle.pem"), "--token", token, "--model", "digits", "--input", "input",
        "--shape", "1,64", "--input-hex", tensor.map { String(format: "%02x", $0) }.joined(),
        "--traceparent-ok", "00-\(okTrace)-\(okParent)-01", "--traceparent-missing",
        "00-\(missingTrace)-\(okParent)-01",
        "--traceparent-stream", "00-\(streamTrace)-\(streamParent)-01",
      ],
      timeout: .seconds(60))
    #expect(
      calls.status == 0 && calls.stdout.contains("traced calls OK"), "\(calls.stdout)\(calls.stderr)\n\(server.log)")
    return Run(
      pki: pki, server: server, receiver: receiver, out: out, raw: raw, token: token, principal: principal,
      certificateBase64Prefix: String(certificate.dropFirst(40).prefix(40)), tensor: tensor)
  }

  static func spans(_ path: String) throws -> [Span] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
    return try text.split(separator: "\n").map { try JSONDecoder().decode(Span.self, from: Data($0.utf8)) }
  }
}

struct TracingTestError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}
