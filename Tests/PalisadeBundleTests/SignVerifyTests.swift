import Crypto
import Foundation
import SwiftASN1
import Testing
import X509

import PalisadeIdentity

@testable import PalisadeBundle

@Suite("Sign and verify")
struct SignVerifyTests {
  // MARK: Round trips

  @Test("key method round trip", arguments: Curve.allCases)
  func keyRoundTrip(curve: Curve) async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let key = TestKey(curve)
    let signed = try await BundleSigner.sign(directory: dir, key: key.signing)
    #expect(signed.files == ["empty.dat", "manifest.json", "model.onnx", "sub/deeper/notes.md", "sub.json"])
    let trust = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [try .publicKey(pem: key.publicPEM)])])
    let verified = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    #expect(verified.files.map(\.name) == signed.files)
    #expect(verified.signer.method == .publicKey)
    #expect(verified.rootDigest == signed.rootDigest)
    let manifest = try verified.manifest()
    #expect(manifest.name == "digits")
    #expect(manifest.version == 3)
    #expect(manifest.inputs[0].datatype == .fp32)
    #expect(manifest.screeningPolicy?.action == .flag)
    #expect(try verified.readFile("model.onnx").count == 5000)
  }

  @Test("certificate method round trip", arguments: Curve.allCases)
  func certificateRoundTrip(curve: Curve) async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let ca = try TestCA()
    let key = TestKey(curve)
    let leaf = try ca.leaf(key: key)
    try await BundleSigner.sign(
      directory: dir, keyPEM: key.privatePEM, certificateChainPEM: try pem(leaf) + pem(ca.intermediate))
    let identity = try SignerIdentityRequirement(subjectCommonName: "publisher", san: .uri("spiffe://example.org/*"))
    let trust = TrustPolicy(rules: [
      .init(modelPattern: "dig*", signers: [.certificate(roots: [ca.root], identity: identity)])
    ])
    let verified = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    #expect(verified.signer.method == .certificate)
    #expect(verified.signer.description.contains("publisher"))
    _ = try verified.manifest()
  }

  @Test("signature file layout matches the reference format")
  func signatureLayout() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let key = TestKey()
    try await BundleSigner.sign(directory: dir, key: key.signing)
    let sig = try temp.read("bundle/model.sig")
    let text = String(decoding: sig, as: UTF8.self)
    #expect(
      text.hasPrefix(
        "{\"mediaType\":\"application/vnd.dev.sigstore.bundle.v0.3+json\",\"verificationMaterial\":{\"publicKey\":{\"hint\":\""
      ))
    #expect(!text.hasSuffix("\n"))
    let envelope = try OMS.parseEnvelope(sig)
    let payload = String(decoding: envelope.payload, as: UTF8.self)
    #expect(
      payload.hasPrefix(
        "{\n  \"_type\": \"https://in-toto.io/Statement/v1\",\n  \"subject\": [\n    {\n      \"name\": \"bundle\","))
    // The hint is sha256 of the canonical PEM, which is what OpenSSL writes (`sha256sum pub.pem`).
    #expect(key.publicKey.canonicalPEM == key.publicPEM + "\n" || key.publicKey.canonicalPEM == key.publicPEM)
    #expect(text.contains(key.publicKey.omsHint))
  }

  @Test("resources are sorted component-wise")
  func sortOrder() {
    let names = [
      "tokenizer.txt", "sub.json", "sub/weights.bin", "sub/deeper/notes.md", "model.onnx", "empty.dat", "config.json",
    ]
    let sorted = names.compactMap(RelativePath.parseSigned).sorted(by: RelativePath.omsOrder).map(\.name)
    #expect(
      sorted == [
        "config.json", "empty.dat", "model.onnx", "sub/deeper/notes.md", "sub/weights.bin", "sub.json", "tokenizer.txt",
      ])
  }

  @Test("the reference document's example root digest and PAE")
  func referenceVectors() {
    let digests = [
      "8fa0bf8d7636b4470d2f3bf19ac91aa987b0e6a8a19a46d6237f42482d41012f",
      "880553fca8fcea94e325ee2cfb48e5a985cc797f39a14cc6d3cedecfeb2ae4d2",
      "b2825323361c78eeb7d2213e8c282239a3765a170c9140f19ca3b1c2673764a5",
    ].compactMap(Hex.decodeLowercase)
    #expect(Hex.encode(OMS.rootDigest(digests)) == "05a05d5ea1d7421a5337b63e468b3a9ace5a70ea51ab3e0bb0d25fe5f0767b86")
    #expect(Hex.encode(OMS.rootDigest([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    #expect(String(decoding: OMS.pae(Array("{}".utf8)), as: UTF8.self) == "DSSEv1 28 application/vnd.in-toto+json 2 {}")
  }

  @Test("JSON quoting follows Python's ensure_ascii")
  func quoting() {
    #expect(OMS.quote("a\"b\\c\n\u{01}é😀\u{7F}") == "\"a\\\"b\\\\c\\n\\u0001\\u00e9\\ud83d\\ude00\\u007f\"")
  }

  // MARK: Tamper matrix

  /// A signed bundle plus the policies to check it.
  struct Fixture {
    let temp: TempDir
    let dir: String
    let key: TestKey
    let trust: TrustPolicy

    init(manifest: String = manifestJSON()) async throws {
      temp = try TempDir()
      dir = try makeBundleDirectory(in: temp, manifest: manifest)
      key = TestKey()
      trust = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [.publicKey(key.publicKey)])])
      try await BundleSigner.sign(directory: dir, key: key.signing)
    }

    func path(_ relative: String) -> String { (dir as NSString).appendingPathComponent(relative) }

    func verify(_ trust: TrustPolicy? = nil, name: String? = "digits") async throws -> VerifiedBundle {
      try await BundleVerifier.verify(directory: dir, trust: trust ?? self.trust, modelName: name)
    }

    /// Rewrites model.sig through `edit` on its JSON text.
    func editSignature(_ edit: (String) -> String) throws {
      let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: path("model.sig"))), as: UTF8.self)
      try Data(edit(text).utf8).write(to: URL(fileURLWithPath: path("model.sig")))
    }
  }

  @Test("modified file") func modified() async throws {
    let f = try await Fixture()
    try Data("changed".utf8).write(to: URL(fileURLWithPath: f.path("sub.json")))
    await expectRefused("sub.json: digest mismatch", kind: .contentMismatch) { _ = try await f.verify() }
  }

  @Test("added file") func added() async throws {
    let f = try await Fixture()
    try Data("extra".utf8).write(to: URL(fileURLWithPath: f.path("sub/extra.bin")))
    await expectRefused("sub/extra.bin: file is not in the signed set", kind: .contentMismatch) {
      _ = try await f.verify()
    }
  }

  @Test("added empty file") func addedEmpty() async throws {
    let f = try await Fixture()
    try Data().write(to: URL(fileURLWithPath: f.path("new-empty")))
    await expectRefused("new-empty: file is not in the signed set") { _ = try await f.verify() }
  }

  @Test("added file under .git is ignored, a symlink there is not") func gitPaths() async throws {
    let f = try await Fixture()
    try FileManager.default.createDirectory(atPath: f.path(".git"), withIntermediateDirectories: true)
    try Data("x".utf8).write(to: URL(fileURLWithPath: f.path(".git/config")))
    _ = try await f.verify()
    try FileManager.default.createSymbolicLink(atPath: f.path(".git/link"), withDestinationPath: "/etc/passwd")
    await expectRefused(".git/link: symbolic links are not allowed") { _ = try await f.verify() }
  }

  @Test("removed file") func removed() async throws {
    let f = try await Fixture()
    try FileManager.default.removeItem(atPath: f.path("empty.dat"))
    await expectRefused("empty.dat: signed file is missing") { _ = try await f.verify() }
  }

  @Test("renamed file") func renamed() async throws {
    let f = try await Fixture()
    try FileManager.default.moveItem(atPath: f.path("sub.json"), toPath: f.path("sub2.json"))
    await expectRefused("sub2.json: file is not in the signed set") { _ = try await f.verify() }
  }

  @Test("moved file") func moved() async throws {
    let f = try await Fixture()
    try FileManager.default.moveItem(atPath: f.path("sub/deeper/notes.md"), toPath: f.path("sub/notes.md"))
    await expectRefused("sub/notes.md: file is not in the signed set") { _ = try await f.verify() }
  }

  @Test("symlink") func symlink() async throws {
    let f = try await Fixture()
    try FileManager.default.removeItem(atPath: f.path("sub.json"))
    try FileManager.default.createSymbolicLink(atPath: f.path("sub.json"), withDestinationPath: "model.onnx")
    await expectRefused("sub.json: symbolic links are not allowed") { _ = try await f.verify() }
  }

  @Test("FIFO") func fifo() async throws {
    let f = try await Fixture()
    #expect(mkfifo(f.path("pipe"), 0o600) == 0)
    await expectRefused("pipe: special files") { _ = try await f.verify() }
  }

  @Test("flipped signature bit") func flippedSignature() async throws {
    let f = try await Fixture()
    let envelope = try OMS.parseEnvelope(try f.temp.read("bundle/model.sig"))
    var sig = envelope.signature
    sig[sig.count - 3] ^= 0x01
    try f.editSignature { text in
      text.replacingOccurrences(
        of: Data(envelope.signature).base64EncodedString(), with: Data(sig).base64EncodedString())
    }
    await expectRefused("signature does not verify", kind: .untrustedSignature) { _ = try await f.verify() }
  }

  @Test("tampered payload") func tamperedPayload() async throws {
    let f = try await Fixture()
    let envelope = try OMS.parseEnvelope(try f.temp.read("bundle/model.sig"))
    let payload = String(decoding: envelope.payload, as: UTF8.self).replacingOccurrences(
      of: "\"model.onnx\"", with: "\"model.onnz\"")
    try f.editSignature { text in
      text.replacingOccurrences(
        of: Data(envelope.payload).base64EncodedString(), with: Data(payload.utf8).base64EncodedString())
    }
    await expectRefused("signature does not verify") { _ = try await f.verify() }
  }

  @Test("wrong key") func wrongKey() async throws {
    let f = try await Fixture()
    let other = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [.publicKey(TestKey().publicKey)])])
    await expectRefused("key hint does not match any trusted public key", kind: .untrustedSignature) {
      _ = try await f.verify(other)
    }
    // Without a hint, the signature itself fails.
    try f.editSignature { $0.replacingOccurrences(of: f.key.publicKey.omsHint, with: "") }
    await expectRefused("signature does not verify with the trusted public key") { _ = try await f.verify(other) }
    _ = try await f.verify()  // an empty hint is accepted with the right key (older bundles)
  }

  @Test("forged key hint") func forgedHint() async throws {
    let f = try await Fixture()
    try f.editSignature {
      $0.replacingOccurrences(of: f.key.publicKey.omsHint, with: String(repeating: "ab", count: 32))
    }
    await expectRefused("key hint does not match") { _ = try await f.verify() }
  }

  @Test("signer not allowed for this model name") func signerNotAllowed() async throws {
    let f = try await Fixture()
    let trust = TrustPolicy(rules: [
      .init(modelPattern: "team-a/*", signers: [.publicKey(f.key.publicKey)]),
      .init(modelPattern: "digits", signers: [.publicKey(TestKey().publicKey)]),
    ])
    await expectRefused("signer not allowed for model 'digits'") { _ = try await f.verify(trust) }
    await expectRefused("no trust rule for model 'other'") { _ = try await f.verify(name: "other") }
    // Verified without a name: the manifest's name decides afterwards.
    let verified = try await f.verify(trust, name: nil)
    await expectRefused("signer not allowed for model 'digits'") { _ = try verified.manifest() }
    // Requested name and manifest name must agree.
    let wide = TrustPolicy(rules: [.init(modelPattern: "**", signers: [.publicKey(f.key.publicKey)])])
    let asOther = try await f.verify(wide, name: "team-a/x")
    await expectRefused("name 'digits' is not the requested model 'team-a/x'") { _ = try asOther.manifest() }
  }

  @Test("expired bundle") func expiredBundle() async throws {
    let f = try await Fixture(manifest: manifestJSON(expires: "2020-01-01T00:00:00Z"))
    let verified = try await f.verify()
    await expectRefused("expired", kind: .expired) { _ = try verified.manifest() }
  }

  @Test("manifest with an unknown field") func unknownManifestField() async throws {
    let f = try await Fixture(manifest: manifestJSON(extra: ",\n  \"debug\": true"))
    let verified = try await f.verify()
    await expectRefused("unknown field 'debug'", kind: .invalidManifest) { _ = try verified.manifest() }
    let g = try await Fixture(
      manifest: manifestJSON().replacingOccurrences(of: "\"top_k\": 2", with: "\"top_k\": 2, \"topk\": 1"))
    let v2 = try await g.verify()
    await expectRefused("unknown field 'output_policy.topk'") { _ = try v2.manifest() }
  }

  @Test("manifest naming a model file that is not signed") func modelFileMissing() async throws {
    let f = try await Fixture(manifest: manifestJSON(modelFile: "other.onnx"))
    let verified = try await f.verify()
    await expectRefused("model_file 'other.onnx' is not among the signed files") { _ = try verified.manifest() }
  }

  @Test("file replaced after verification is not read") func toctou() async throws {
    let f = try await Fixture()
    let verified = try await f.verify()
    try Data("swapped".utf8).write(to: URL(fileURLWithPath: f.path("model.onnx")))
    await expectRefused("model.onnx: changed on disk after verification") { _ = try verified.readFile("model.onnx") }
  }

  /// Re-signs a hand-made payload with the fixture key (the signer is trusted; the payload's choices are not).
  func resign(_ f: Fixture, ignorePaths: [String], extraResource: Bool = false) throws {
    let files = try FileTree.regularFiles(root: f.dir, excluding: [["model.sig"]]).sorted(by: RelativePath.omsOrder)
    var resources: [OMS.Resource] = []
    for file in files {
      let bytes = try f.temp.read("bundle/\(file.name)")
      resources.append(OMS.Resource(path: file, digest: Array(SHA256.hash(data: bytes))))
    }
    if extraResource { resources = [] }
    let payload = OMS.statementJSON(subjectName: "bundle", resources: resources, ignorePaths: ignorePaths)
    let sig = try f.key.signing.signDER(OMS.pae(payload))
    let file = OMS.signatureFileJSON(
      material: OMS.publicKeyMaterial(hint: f.key.publicKey.omsHint), payload: payload, signature: sig)
    try Data(file).write(to: URL(fileURLWithPath: f.path("model.sig")))
  }

  @Test("signer-chosen ignore_paths of '.'") func ignoreDot() async throws {
    let f = try await Fixture()
    try resign(f, ignorePaths: ["."], extraResource: true)
    await expectRefused("signer-chosen ignore path '.' is not allowed", kind: .unsupportedPayload) {
      _ = try await f.verify()
    }
    try resign(f, ignorePaths: ["model.onnx"])
    await expectRefused("ignore path 'model.onnx' is not allowed") { _ = try await f.verify() }
    try resign(f, ignorePaths: [".git"])
    _ = try await f.verify()
  }

  @Test("unknown field in model.sig") func unknownSignatureField() async throws {
    let f = try await Fixture()
    try f.editSignature { $0.replacingOccurrences(of: "\"tlogEntries\":[]", with: "\"tlogEntries\":[],\"extra\":1") }
    await expectRefused("unknown field 'verificationMaterial.extra'", kind: .malformedSignature) {
      _ = try await f.verify()
    }
  }

  @Test("missing model.sig") func missingSignature() async throws {
    let f = try await Fixture()
    try FileManager.default.removeItem(atPath: f.path("model.sig"))
    await expectRefused("model.sig: missing", kind: .malformedSignature) { _ = try await f.verify() }
  }

  // MARK: Certificates

  struct CertFixture {
    let temp: TempDir
    let dir: String
    let ca: TestCA
    let key: TestKey
    let identity: SignerIdentityRequirement

    init(leaf makeLeaf: (TestCA, TestKey) throws -> Certificate, chain: ((TestCA, Certificate) -> [Certificate])? = nil)
      async throws
    {
      temp = try TempDir()
      dir = try makeBundleDirectory(in: temp)
      ca = try TestCA()
      key = TestKey()
      let leaf = try makeLeaf(ca, key)
      identity = try SignerIdentityRequirement(subjectCommonName: "publisher")
      try await BundleSigner.sign(
        directory: dir, key: key.signing, certificateChain: chain?(ca, leaf) ?? [leaf, ca.intermediate])
    }

    func verify(roots: [Certificate]? = nil, identity: SignerIdentityRequirement? = nil, now: Date = Date())
      async throws
    {
      let trust = TrustPolicy(rules: [
        .init(
          modelPattern: "digits",
          signers: [.certificate(roots: roots ?? [ca.root], identity: identity ?? self.identity)])
      ])
      _ = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits", now: now)
    }
  }

  @Test("untrusted root") func untrustedRoot() async throws {
    let f = try await CertFixture { ca, key in try ca.leaf(key: key) }
    let other = try TestCA(name: "Other")
    await expectRefused("certificate chain does not lead to a trusted root", kind: .untrustedSignature) {
      try await f.verify(roots: [other.root])
    }
    try await f.verify()
  }

  @Test("only the intermediate trusted") func onlyIntermediate() async throws {
    let f = try await CertFixture { ca, key in try ca.leaf(key: key) }
    await expectRefused("partial chains are not accepted") { try await f.verify(roots: [f.ca.intermediate]) }
  }

  @Test("wrong key usage (no codeSigning EKU)") func wrongUsage() async throws {
    let f = try await CertFixture { ca, key in try ca.leaf(key: key, usage: .serverAuthOnly) }
    await expectRefused("lacks the codeSigning extended key usage") { try await f.verify() }
  }

  @Test("expired leaf") func expiredLeaf() async throws {
    let f = try await CertFixture { ca, key in
      try ca.leaf(key: key, notBefore: Date().addingTimeInterval(-7200), notAfter: Date().addingTimeInterval(-3600))
    }
    await expectRefused("certificate chain rejected") { try await f.verify() }
    // Valid at a time inside its validity window: proves the failure is about time.
    try await f.verify(now: Date().addingTimeInterval(-5400))
  }

  @Test("leaf identity must match") func identity() async throws {
    let f = try await CertFixture { ca, key in try ca.leaf(key: key) }
    await expectRefused("leaf subject CN 'publisher' does not match 'release-*'") {
      try await f.verify(identity: try SignerIdentityRequirement(subjectCommonName: "release-*"))
    }
    await expectRefused("no URI SAN of the leaf certificate matches") {
      try await f.verify(identity: try SignerIdentityRequirement(san: .uri("spiffe://other.org/*")))
    }
    try await f.verify(identity: try SignerIdentityRequirement(san: .uri("spiffe://example.org/publisher")))
    #expect(throws: BundleError.self) { _ = try SignerIdentityRequirement() }
  }

  @Test("certificate signature over a swapped leaf fails") func swappedLeaf() async throws {
    // Material is not signed: replacing the leaf with another valid one must still fail the signature.
    let f = try await CertFixture { ca, key in try ca.leaf(key: key) }
    let otherKey = TestKey()
    let otherLeaf = try f.ca.leaf(key: otherKey)
    let sig = String(decoding: try f.temp.read("bundle/model.sig"), as: UTF8.self)
    let envelope = try OMS.parseEnvelope(Array(sig.utf8))
    guard case .certificates(let chain) = envelope.material else {
      Issue.record("expected a certificate chain")
      return
    }
    func b64(_ c: Certificate) throws -> String {
      var s = DER.Serializer()
      try s.serialize(c)
      return Data(s.serializedBytes).base64EncodedString()
    }
    let swapped = sig.replacingOccurrences(of: try b64(chain[0]), with: try b64(otherLeaf))
    try Data(swapped.utf8).write(to: URL(fileURLWithPath: f.temp.sub("bundle/model.sig")))
    await expectRefused("signature does not verify with the leaf certificate's key") { try await f.verify() }
  }

  // MARK: Rollback

  @Test("rollback protection and atomic state file") func rollback() throws {
    let temp = try TempDir()
    let state = temp.sub("accepted.json")
    let versions = try AcceptedVersions(path: state)
    try versions.checkAndRecord(name: "digits", version: 5)
    try versions.checkAndRecord(name: "digits", version: 5)
    #expect(throws: BundleError(.rollback, "version 3 of 'digits' is older than the accepted 5")) {
      try versions.checkAndRecord(name: "digits", version: 3)
    }
    try versions.checkAndRecord(name: "other", version: 1)
    // Reloaded from disk.
    let reloaded = try AcceptedVersions(path: state)
    #expect(reloaded.acceptedVersion(of: "digits") == 5)
    #expect(throws: BundleError.self) { try reloaded.check(name: "digits", version: 4) }
    try reloaded.checkAndRecord(name: "digits", version: 6)
    #expect(try AcceptedVersions(path: state).acceptedVersion(of: "digits") == 6)
    // No temp files left behind.
    #expect(try FileManager.default.contentsOfDirectory(atPath: temp.path) == ["accepted.json"])
    // A corrupt state file is an error, not a reset.
    try Data("{\"digits\": \"x\"}".utf8).write(to: URL(fileURLWithPath: state))
    #expect(throws: BundleError.self) { _ = try AcceptedVersions(path: state) }
  }

  @Test("older version bundle refused end to end") func olderBundle() async throws {
    let temp = try TempDir()
    let versions = try AcceptedVersions(path: temp.sub("state.json"))
    try versions.checkAndRecord(name: "digits", version: 5)
    let f = try await Fixture(manifest: manifestJSON(version: 3))
    let manifest = try await f.verify().manifest()
    await expectRefused("version 3 of 'digits' is older than the accepted 5", kind: .rollback) {
      try versions.checkAndRecord(name: manifest.name, version: manifest.version)
    }
  }

  // MARK: Policy details

  @Test("glob patterns") func globs() {
    #expect(Glob.matches(pattern: "team-a/*", "team-a/x", separator: "/"))
    #expect(!Glob.matches(pattern: "team-a/*", "team-a/x/y", separator: "/"))
    #expect(Glob.matches(pattern: "team-a/**", "team-a/x/y", separator: "/"))
    #expect(Glob.matches(pattern: "digits", "digits", separator: "/"))
    #expect(!Glob.matches(pattern: "digits", "digits2", separator: "/"))
    #expect(Glob.matches(pattern: "*.example.com", "a.example.com", separator: "."))
    #expect(!Glob.matches(pattern: "*.example.com", "a.b.example.com", separator: "."))
    #expect(Glob.matches(pattern: "d?gits", "digits", separator: "/"))
  }

  @Test("strict JSON reader") func strictJSON() {
    #expect(throws: JSONParseError.self) { _ = try StrictJSONParser.parse(Array("{\"a\":1,\"a\":2}".utf8)) }
    #expect(throws: JSONParseError.self) { _ = try StrictJSONParser.parse(Array("{\"a\":1} x".utf8)) }
    #expect(throws: JSONParseError.self) { _ = try StrictJSONParser.parse(Array("\"\\ud800\"".utf8)) }
    #expect(throws: JSONParseError.self) {
      _ = try StrictJSONParser.parse(Array(String(repeating: "[", count: 100).utf8))
    }
    #expect((try? StrictJSONParser.parse(Array("{\"a\":[1.5e3,true,null,\"\\u00e9\"]}".utf8))) != nil)
  }

  @Test("manifest validation names the field") func manifestValidation() throws {
    func refuse(_ json: String, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
      do {
        _ = try BundleManifest.decode(Array(json.utf8))
        Issue.record("accepted", sourceLocation: sourceLocation)
      } catch {
        #expect(error.reason.contains(fragment), "reason was: \(error.reason)", sourceLocation: sourceLocation)
      }
    }
    refuse(manifestJSON(version: 0), "field 'version'")
    refuse(
      manifestJSON().replacingOccurrences(of: "\"FP32\", \"shape\": [-1, 4]", with: "\"FLOAT\", \"shape\": [-1, 4]"),
      "inputs[0].datatype")
    refuse(
      manifestJSON().replacingOccurrences(of: "\"shape\": [-1, 4]", with: "\"shape\": [-1, 5]"),
      "inputs[0].feature_range")
    refuse(manifestJSON(expires: "tomorrow"), "field 'expires'")
    refuse(
      manifestJSON().replacingOccurrences(of: "\"palisade.bundle/v1\"", with: "\"palisade.bundle/v2\""),
      "unsupported schema")
    refuse(
      manifestJSON().replacingOccurrences(of: "\"action\": \"flag\"", with: "\"action\": \"drop\""),
      "screening_policy.action")
    let ok = try BundleManifest.decode(
      Array(manifestJSON().replacingOccurrences(of: "\"max_batch\": 8,", with: "").utf8))
    #expect(ok.maxBatch == nil)
    refuse(manifestJSON().replacingOccurrences(of: "\"name\": \"digits\",", with: ""), "missing field 'name'")
    refuse(
      manifestJSON().replacingOccurrences(of: "\"version\": 3", with: "\"version\": 3, \"version\": 4"),
      "duplicate member")
    // Round trip through the encoder.
    let manifest = try BundleManifest.decode(Array(manifestJSON().utf8))
    #expect(try BundleManifest.decode(try manifest.encodedJSON()) == manifest)
  }
}
