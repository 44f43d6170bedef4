import Foundation
import Testing
import X509

@testable import PalisadeBundle

/// Interop with the reference `model_signing` CLI (PyPI `model-signing` 1.1.1 + `pyopenssl`), both directions.
///
/// The Python comes from `PALISADE_OMS_PYTHON`, else `<repo root>/.venv/bin/python`. A missing interpreter or package
/// fails these tests (they are the proof that our signatures are the standard format, so they must not silently skip).
@Suite("Interop with model_signing", .serialized)
struct InteropTests {
  static var python: String {
    if let env = ProcessInfo.processInfo.environment["PALISADE_OMS_PYTHON"], !env.isEmpty { return env }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent()
    return root.appendingPathComponent(".venv/bin/python").path
  }

  /// Runs `python -m model_signing ARGS`; returns (exit status, combined output).
  static func modelSigning(_ args: [String]) throws -> (Int32, String) {
    try runPython(["-m", "model_signing"] + args)
  }

  /// Runs `python -c SCRIPT ARGS` (the model_signing Python API, for what its CLI cannot do).
  static func pythonAPI(_ script: String, _ args: [String]) throws -> (Int32, String) {
    try runPython(["-c", script] + args)
  }

  static func runPython(_ args: [String]) throws -> (Int32, String) {
    let python = Self.python
    guard FileManager.default.isExecutableFile(atPath: python) else {
      Issue.record(
        "no Python at \(python): create it with `python3 -m venv .venv && .venv/bin/pip install model-signing pyopenssl` or set PALISADE_OMS_PYTHON"
      )
      return (-1, "")
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
  }

  static func expectSuccess(_ args: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
    let (status, output) = try modelSigning(args)
    #expect(
      status == 0, "model_signing \(args.prefix(2).joined(separator: " ")) failed: \(output)",
      sourceLocation: sourceLocation)
  }

  @Test("model_signing sign key → our verifier accepts; a tampered copy is refused")
  func referenceKeySigned() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let key = TestKey(.p384)
    let keyPath = try temp.write("key.pem", key.privatePEM)
    try Self.expectSuccess(["sign", "key", dir, "--private_key", keyPath, "--signature", temp.sub("bundle/model.sig")])
    let trust = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [try .publicKey(pem: key.publicPEM)])])
    let verified = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    #expect(verified.files.count == 5)
    _ = try verified.manifest()
    try temp.write("bundle/empty.dat", "now not empty")
    await expectRefused("empty.dat: digest mismatch") {
      _ = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    }
  }

  @Test("model_signing sign certificate → our verifier accepts")
  func referenceCertificateSigned() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let ca = try TestCA()
    let key = TestKey(.p256)
    let leaf = try ca.leaf(key: key)
    let keyPath = try temp.write("leaf.key", key.privatePEM)
    let leafPath = try temp.write("leaf.pem", try pem(leaf))
    let chainPath = try temp.write("int.pem", try pem(ca.intermediate))
    try Self.expectSuccess([
      "sign", "certificate", dir, "--private_key", keyPath, "--signing_certificate", leafPath, "--certificate_chain",
      chainPath,
      "--signature", temp.sub("bundle/model.sig"),
    ])
    let identity = try SignerIdentityRequirement(
      subjectCommonName: "publisher", san: .uri("spiffe://example.org/publisher"))
    let trust = TrustPolicy(rules: [
      .init(modelPattern: "**", signers: [.certificate(roots: [ca.root], identity: identity)])
    ])
    let verified = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    #expect(verified.signer.method == .certificate)
  }

  @Test("our key signature → model_signing verify key succeeds (and fails after tampering)")
  func oursVerifiedByReferenceKey() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let key = TestKey(.p521)
    try await BundleSigner.sign(directory: dir, key: key.signing)
    let pubPath = try temp.write("pub.pem", key.publicPEM)
    try Self.expectSuccess(["verify", "key", dir, "--signature", temp.sub("bundle/model.sig"), "--public_key", pubPath])
    try temp.write("bundle/sub.json", "tampered")
    let (status, _) = try Self.modelSigning([
      "verify", "key", dir, "--signature", temp.sub("bundle/model.sig"), "--public_key", pubPath,
    ])
    #expect(status != 0)
  }

  @Test("our certificate signature → model_signing verify certificate succeeds")
  func oursVerifiedByReferenceCertificate() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let ca = try TestCA()
    let key = TestKey(.p384)
    let leaf = try ca.leaf(key: key)
    try await BundleSigner.sign(directory: dir, key: key.signing, certificateChain: [leaf, ca.intermediate])
    let rootPath = try temp.write("root.pem", try pem(ca.root))
    try Self.expectSuccess([
      "verify", "certificate", dir, "--signature", temp.sub("bundle/model.sig"), "--certificate_chain", rootPath,
    ])
  }

  /// The `shards` serialization is part of the format but refused by decision (docs/security.md, "Bundles"): a
  /// shard list has no resource for an empty file, so adding or removing one goes unseen, and the reference CLI
  /// cannot verify such signatures either. The refusal must name the method.
  @Test("a model_signing `shards` signature is refused by name")
  func shardsRefused() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let key = TestKey(.p256)
    let keyPath = try temp.write("key.pem", key.privatePEM)
    let script = """
      import sys
      from model_signing import hashing, signing
      cfg = signing.Config().use_elliptic_key_signer(private_key=sys.argv[1])
      cfg.set_hashing_config(hashing.Config().use_shard_serialization(shard_size=4096))
      cfg.sign(sys.argv[2], sys.argv[3])
      """
    let (status, output) = try Self.pythonAPI(script, [keyPath, dir, temp.sub("bundle/model.sig")])
    #expect(status == 0, "model_signing shard signing failed: \(output)")
    let statement = try String(contentsOfFile: temp.sub("bundle/model.sig"), encoding: .utf8)
    #expect(statement.contains("payload"))
    let trust = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [try .publicKey(pem: key.publicPEM)])])
    await expectRefused("serialization method 'shards' is not supported") {
      _ = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    }
  }
}
