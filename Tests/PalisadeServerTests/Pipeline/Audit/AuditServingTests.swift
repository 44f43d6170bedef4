import Crypto
import Foundation
import GRPCCore
import PalisadeAudit
import PalisadeCore
import PalisadeProto
@testable import PalisadeServer
import PalisadeSupport
import PalisadeTestSupport
import Testing

/// Stage 10 over real mTLS: every decision (allowed, denied by policy, unauthenticated, model loads) becomes a
/// record with digests and no data; the log verifies with `palisade audit verify`; attestation evidence carries the
/// latest checkpoint.
@Suite struct AuditServingTests {
  static let policy = """
    version: 1
    rules:
      - name: no-infer-for-denied
        effect: deny
        principals: [{spiffe: "spiffe://palisade.test/sa/denied"}]
        rpcs: [ModelInfer]
      - name: callers
        principals: [{spiffe_prefix: "spiffe://palisade.test"}]
        rpcs: ["*"]
    """

  @Test func everyDecisionIsRecordedAndTheLogVerifies() async throws {
    let pki = try TestPKI()
    let key = try AuditSigningKey.generate(name: "palisade.test/audit")
    let keyPath = try pki.write("audit.key", key.privateKeyPEM, mode: 0o600)
    let pubPath = try pki.write("audit.pub.pem", key.verifyingKey.publicKeyPEM)
    let dir = pki.path("audit")
    let server = try await TestServer.start(pki: pki, models: [AddSubModel()], policy: Self.policy) {
      var audit = ServerConfig.Audit(directory: dir, key: keyPath)
      audit.checkpointEveryRecords = 3
      audit.origin = "palisade.test/audit"
      $0.audit = audit
    }
    let caller = try goodClient(server, "caller")
    let response = try await withClient(server, caller) { c in
      _ = try await c.serverMetadata(.init())
      return try await c.modelInfer(simpleRequest(raw: true))
    }
    #expect(response.outputs.count == 2)
    let denied = try goodClient(server, "denied")
    let refusal = await rpcError {
      _ = try await withClient(server, denied) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    #expect(refusal?.code == .permissionDenied)
    let badToken = await rpcError {
      _ = try await withClient(server, cert: caller.cert, key: caller.key, token: "not-a-token") {
        try await $0.modelInfer(simpleRequest(raw: true))
      }
    }
    #expect(badToken?.code == .unauthenticated)
    try await server.stop()

    // The whole log verifies, with an independent run of the CLI.
    let verify = try await ProcessTests.run(
      ProcessTests.binary, ["audit", "verify", dir, "--key", pubPath, "--origin", "palisade.test/audit"])
    #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    let log = try AuditVerifier.verify(
      directory: dir, key: try AuditVerifyingKey.load(path: pubPath, name: "palisade.test/audit"))
    #expect(!log.checkpoints.isEmpty)
    let records = try log.records.map { try JSONDecoder().decode(AuditRecord.self, from: Data($0)) }
    let calls = records.filter { $0.kind == .call }
    let ok = try #require(calls.first { $0.rpc == "ModelInfer" && $0.status == "OK" })
    #expect(ok.principal == "spiffe://palisade.test/sa/caller" && ok.model == "simple" && ok.version == "1")
    #expect(ok.tokenID != nil && ok.certificateThumbprint?.count == 64 && ok.latencyMicros != nil)
    let inputs = [
      try Tensor(name: "INPUT0", shape: [1, 16], values: Array(Int32(0)..<16)),
      try Tensor(name: "INPUT1", shape: [1, 16], values: Array(repeating: Int32(1), count: 16)),
    ]
    #expect(ok.inputSHA256 == Auditor.digest(inputs), "the input digest is recomputable from the request")
    #expect(ok.outputSHA256?.count == 64)
    #expect(calls.contains { $0.rpc == "ServerMetadata" && $0.status == "OK" })
    let deniedRecord = try #require(calls.first { $0.principal == "spiffe://palisade.test/sa/denied" })
    #expect(deniedRecord.status == "PERMISSION_DENIED" && deniedRecord.reason?.contains("does not allow") == true)
    #expect(calls.contains { $0.status == "UNAUTHENTICATED" && $0.reason?.contains("token refused") == true })
    // Digests only: no record carries tensor data.
    for raw in log.records {
      let text = String(decoding: raw, as: UTF8.self)
      #expect(!text.contains("contents") && !text.contains("not-a-token"))
    }
  }

  @Test func modelLoadsAndRefusalsAreRecorded() async throws {
    let pki = try TestPKI()
    let key = try AuditSigningKey.generate(name: "palisade.dev/audit")
    let keyPath = try pki.write("audit.key", key.privateKeyPEM, mode: 0o600)
    let factory = TestBundleFactory()
    try await factory.make(root: pki.path("models"), version: 2)
    try await factory.make(
      root: pki.path("models"), name: "expired", version: 1, expires: Date().addingTimeInterval(-10))
    let publisher = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    let server = try await TestServer.start(pki: pki, models: []) {
      $0.audit = ServerConfig.Audit(directory: pki.path("audit"), key: keyPath)
      $0.models.directories = [pki.path("models")]
      $0.models.stateFile = pki.path("state.json")
      $0.models.trust = [.init(models: "**", publicKeys: [publisher])]
    }
    for _ in 0..<200 where !server.runtime.repository.isReady(name: "simple", version: "2") {
      try await Task.sleep(for: .milliseconds(50))
    }
    try await Task.sleep(for: .milliseconds(200))
    try await server.stop()
    let log = try AuditVerifier.verify(directory: pki.path("audit"), key: key.verifyingKey)
    let records = try log.records.map { try JSONDecoder().decode(AuditRecord.self, from: Data($0)) }
    let load = try #require(records.first { $0.kind == .modelLoad })
    #expect(load.model == "simple" && load.version == "2" && load.manifestDigest?.count == 64)
    #expect(load.details["signer"]?.contains("public key") == true)
    let refused = try #require(records.first { $0.kind == .modelRefused })
    #expect(refused.model == "expired" && refused.reason?.contains("expired") == true, "\(refused)")
  }
}

/// Runtime integrity: a byte of a loaded model flipped in memory is caught, the model goes unavailable, and the
/// failure is audited.
@Suite struct AuditorDigestTests {
  /// The audit record's digests are spelled like every other digest (`hexString`), by the faster writer.
  @Test func digestsAndThumbprintsAreLowerCaseHexAsEverywhere() throws {
    var rng = SystemRandomNumberGenerator()
    for count in [0, 1, 16, 32, 33] {
      let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
      #expect(Auditor.hex(bytes) == hexString(bytes))
    }
    let tensors = [try Tensor(name: "input", shape: [2, 3], values: [Float](repeating: 1.5, count: 6))]
    var hasher = SHA256()
    hasher.update(data: Array("input\u{0}FP32\u{0}[2, 3]\u{0}".utf8))
    if case .fixed(let raw) = tensors[0].storage { hasher.update(data: raw) }
    #expect(Auditor.digest(tensors) == hexString(hasher.finalize()), "the digest's bytes are as before")
  }
}

@Suite struct IntegrityTests {
  @Test func aFlippedWeightByteIsCaughtAndTheModelIsTakenOut() async throws {
    let pki = try TestPKI()
    let key = try AuditSigningKey.generate(name: "palisade.dev/audit")
    let keyPath = try pki.write("audit.key", key.privateKeyPEM, mode: 0o600)
    let factory = TestBundleFactory()
    try await factory.make(root: pki.path("models"), version: 1)
    let publisher = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    let server = try await TestServer.start(pki: pki, models: []) {
      $0.audit = ServerConfig.Audit(directory: pki.path("audit"), key: keyPath)
      $0.models.directories = [pki.path("models")]
      $0.models.stateFile = pki.path("state.json")
      $0.models.trust = [.init(models: "simple", publicKeys: [publisher])]
      $0.models.integrityCheckSeconds = 3600  // the test triggers checks itself
    }
    for _ in 0..<200 where !server.runtime.repository.isReady(name: "simple", version: "1") {
      try await Task.sleep(for: .milliseconds(50))
    }
    let integrity = try #require(server.runtime.bundles?.integrity)
    #expect(await integrity.checkNow().isEmpty, "intact weights pass")
    let caller = try goodClient(server)
    _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }

    integrity.corruptForTesting(model: "simple", offset: 3)
    #expect(await integrity.checkNow() == ["simple"])
    let refused = await rpcError {
      _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    #expect(refused?.code == .unavailable, "\(String(describing: refused))")
    let index = server.runtime.repository.index()
    #expect(index.first { $0.name == "simple" }?.reason.contains("integrity check failed") == true, "\(index)")
    let (_, metrics) = try await adminGet(server, "/metrics")
    #expect(metrics.contains(#"palisade_integrity_failures_total{model="simple"} 1"#))
    try await server.stop()
    let log = try AuditVerifier.verify(directory: pki.path("audit"), key: key.verifyingKey)
    let records = try log.records.map { try JSONDecoder().decode(AuditRecord.self, from: Data($0)) }
    #expect(records.contains { $0.kind == .integrityFailure && $0.model == "simple" && $0.status == "UNAVAILABLE" })
  }
}
