import Foundation
import Testing

@testable import PalisadeBundle

@Suite("Edge cases")
struct EdgeCaseTests {
  @Test("file names are compared by their exact bytes (NFC vs NFD)")
  func unicodeNames() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let nfc = "caf\u{E9}.txt"
    let nfd = "cafe\u{301}.txt"
    try temp.write("bundle/" + nfc, "x")
    let key = TestKey()
    let signed = try await BundleSigner.sign(directory: dir, key: key.signing)
    #expect(signed.files.contains(nfc))
    let trust = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [.publicKey(key.publicKey)])])
    _ = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    try FileManager.default.moveItem(atPath: temp.sub("bundle/" + nfc), toPath: temp.sub("bundle/" + nfd))
    await expectRefused("file is not in the signed set") {
      _ = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    }
  }

  @Test("duplicate keys in model.sig are refused")
  func duplicateKeys() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let key = TestKey()
    try await BundleSigner.sign(directory: dir, key: key.signing)
    let sig = String(decoding: try temp.read("bundle/model.sig"), as: UTF8.self)
    try temp.write(
      "bundle/model.sig", sig.replacingOccurrences(of: "{\"mediaType\":", with: "{\"mediaType\":\"x\",\"mediaType\":"))
    let trust = TrustPolicy(rules: [.init(modelPattern: "**", signers: [.publicKey(key.publicKey)])])
    await expectRefused("duplicate member 'mediaType'", kind: .malformedSignature) {
      _ = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    }
  }

  @Test("the bundle root may not be a symlink")
  func rootSymlink() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let key = TestKey()
    try await BundleSigner.sign(directory: dir, key: key.signing)
    try FileManager.default.createSymbolicLink(atPath: temp.sub("link"), withDestinationPath: dir)
    let trust = TrustPolicy(rules: [.init(modelPattern: "**", signers: [.publicKey(key.publicKey)])])
    await expectRefused("not a directory") {
      _ = try await BundleVerifier.verify(directory: temp.sub("link"), trust: trust, modelName: "digits")
    }
  }

  @Test("an empty trust policy refuses everything")
  func emptyPolicy() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    try await BundleSigner.sign(directory: dir, key: TestKey().signing)
    await expectRefused("no trust rule for model 'digits'") {
      _ = try await BundleVerifier.verify(directory: dir, trust: TrustPolicy(rules: []), modelName: "digits")
    }
  }

  @Test("unverified summary for inspect")
  func inspect() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let key = TestKey()
    let signed = try await BundleSigner.sign(directory: dir, key: key.signing)
    let summary = try BundleInspector.unverifiedSignatureSummary(directory: dir)
    #expect(summary.method == .publicKey)
    #expect(summary.keyHint == key.publicKey.omsHint)
    #expect(summary.resources.map(\.name) == signed.files)
    #expect(summary.rootDigest == signed.rootDigest)
  }

  @Test("roots from PEM must be self-signed CAs")
  func rootsPEM() throws {
    let ca = try TestCA()
    let identity = try SignerIdentityRequirement(subjectCommonName: "*")
    _ = try TrustedSigner.certificate(rootsPEM: try pem(ca.root), identity: identity)
    #expect(throws: BundleError.self) {
      _ = try TrustedSigner.certificate(rootsPEM: try pem(ca.intermediate), identity: identity)
    }
    #expect(throws: BundleError.self) { _ = try TrustedSigner.certificate(rootsPEM: "junk", identity: identity) }
  }
}
