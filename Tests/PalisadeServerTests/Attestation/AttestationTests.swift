import Crypto
import Foundation
import GRPCCore
import PalisadeClient
import PalisadeIdentity
import PalisadeProto
import PalisadeServer
import PalisadeTestSupport
import Testing

/// `palisade.v1.Attestation` over real mTLS, appraised as `palisade attest` does: fresh evidence passes; a
/// replayed nonce, evidence from another server's TLS channel, tampered evidence, the wrong key and an unexpected
/// model version are each refused.
@Suite struct AttestationTests {
  struct Attested {
    let server: TestServer
    let publicKeyPEM: String
    /// SHA-256 of the SBOM file the server was configured with.
    let sbomSHA256: String
  }

  /// A server with an attestation key, serving the signed `simple` bundle v1.
  static func start() async throws -> Attested {
    let pki = try TestPKI()
    let key = P256.Signing.PrivateKey()
    let keyPath = try pki.write("attestation.key", key.pemRepresentation, mode: 0o600)
    let factory = TestBundleFactory()
    try await factory.make(root: pki.path("models"), version: 1)
    let publisher = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    let sbom = try pki.write(
      "sbom.cdx.json", #"{"bomFormat":"CycloneDX","specVersion":"1.5","version":1,"components":[]}"#)
    let server = try await TestServer.start(pki: pki, models: []) {
      $0.attestation.key = keyPath
      $0.attestation.sbom = sbom
      $0.models.directories = [pki.path("models")]
      $0.models.stateFile = pki.path("state.json")
      $0.models.trust = [.init(models: "simple", publicKeys: [publisher])]
    }
    for _ in 0..<200 where !server.runtime.repository.isReady(name: "simple", version: "1") {
      try await Task.sleep(for: .milliseconds(50))
    }
    return Attested(
      server: server, publicKeyPEM: key.publicKey.pemRepresentation, sbomSHA256: EvidenceBuilder.fileSHA256(sbom) ?? "?"
    )
  }

  func exchange(_ server: TestServer, nonce: [UInt8]) async throws -> AttestationExchange {
    let client = try goodClient(server)
    return try await attest(
      host: "127.0.0.1", port: server.port,
      tls: ClientTLSFiles(certificate: client.cert, privateKey: client.key, serverCA: server.pki.path("server-ca.pem")),
      token: client.token, nonce: nonce)
  }

  func nonce() -> [UInt8] { (0..<32).map { _ in UInt8.random(in: 0...255) } }

  @Test func freshEvidenceIsAppraisedAndEveryForgeryIsRefused() async throws {
    let a = try await Self.start()
    let n = nonce()
    let x = try await exchange(a.server, nonce: n)
    let appraiser = EvidenceAppraiser(publicKeyPEM: a.publicKeyPEM)
    var expect = EvidenceAppraiser.Expectations()
    expect.executableSHA256 = [EvidenceBuilder.fileSHA256("/proc/self/exe") ?? "?"]
    expect.sbomSHA256 = [a.sbomSHA256]
    expect.models = [.init(name: "simple", versions: ["1"], signer: "public key")]
    expect.onlyListedModels = true
    let good = try appraiser.appraise(
      x.evidence, nonce: n, tlsPublicKeySHA256: x.presentedPublicKeySHA256, expectations: expect)
    let claims = try #require(try JSONSerialization.jsonObject(with: Data(good.claimsJSON)) as? [String: Any])
    #expect(claims["eat_nonce"] as? String == Base64URL.encode(n))
    let measured = try #require(claims["palisade"] as? [String: Any])
    for key in [
      "executable_sha256", "sbom_sha256", "policy_sha256", "client_ca_bundle_sha256", "jwks_sha256", "trust_sha256",
      "tls_spki_sha256",
    ] {
      #expect(measured[key] != nil, "missing \(key)")
    }
    let model = try #require((claims["submods"] as? [String: Any])?["model:simple"] as? [String: Any])
    #expect((model["manifest_sha256"] as? String)?.count == 64)

    func refusal(
      _ evidence: String, nonce: [UInt8]? = n, tls: String? = x.presentedPublicKeySHA256,
      expect: EvidenceAppraiser.Expectations? = nil, key: String = a.publicKeyPEM
    ) -> String {
      do {
        _ = try EvidenceAppraiser(publicKeyPEM: key).appraise(
          evidence, nonce: nonce, tlsPublicKeySHA256: tls, expectations: expect)
        return "accepted"
      } catch { return error.description }
    }
    // A replayed answer: the evidence carries an earlier nonce.
    #expect(refusal(x.evidence, nonce: nonce()).contains("nonce does not match"))
    // Evidence relayed from another server (another TLS certificate) than the one this connection saw.
    let other = try await Self.start()
    let relayed = try await exchange(other.server, nonce: n)
    #expect(refusal(relayed.evidence, key: other.publicKeyPEM).contains("bound to another TLS certificate"))
    // Tampered claims, and the wrong key.
    var parts = x.evidence.split(separator: ".").map(String.init)
    var payload = try #require(Base64URL.decode(parts[1]))
    payload[payload.count / 2] ^= 0x01
    parts[1] = Base64URL.encode(payload)
    #expect(refusal(parts.joined(separator: ".")).contains("signature does not verify"))
    #expect(
      refusal(x.evidence, key: P256.Signing.PrivateKey().publicKey.pemRepresentation).contains(
        "signature does not verify"))
    // An unexpected model version, signer or executable.
    var newer = expect
    newer.models = [.init(name: "simple", versions: ["2"])]
    #expect(refusal(x.evidence, expect: newer).contains("runs version 1, expected one of 2"))
    var signer = expect
    signer.models = [.init(name: "simple", signer: "CN=release")]
    #expect(refusal(x.evidence, expect: signer).contains("is signed by"))
    var binary = expect
    binary.executableSHA256 = [String(repeating: "0", count: 64)]
    #expect(refusal(x.evidence, expect: binary).contains("executable digest"))
    var otherBuild = expect
    otherBuild.sbomSHA256 = [String(repeating: "1", count: 64)]
    #expect(refusal(x.evidence, expect: otherBuild).contains("SBOM digest \(a.sbomSHA256) is not an allowed value"))
    var missing = expect
    missing.models = [.init(name: "digits")]
    missing.onlyListedModels = true
    let both = refusal(x.evidence, expect: missing)
    #expect(both.contains("model digits is not loaded") && both.contains("unexpected model simple is loaded"))

    // Bad nonces are refused by the server.
    let short = await rpcError { _ = try await exchange(a.server, nonce: [1, 2, 3]) }
    #expect(short?.code == .invalidArgument && short?.message.contains("16 to 64 bytes") == true)
    try await a.server.stop()
    try await other.server.stop()
  }

  @Test func withoutAKeyAttestIsAFailedPrecondition() async throws {
    let server = try await TestServer.start()
    let refused = await rpcError { _ = try await exchange(server, nonce: nonce()) }
    #expect(refused?.code == .failedPrecondition && refused?.message.contains("attestation.key") == true)
    try await server.stop()
  }

  @Test func theCLIRequestsAndAppraisesAndRefusesUnexpectedVersions() async throws {
    let a = try await Self.start()
    let client = try goodClient(a.server)
    let pub = try a.server.pki.write("attestation.pub.pem", a.publicKeyPEM)
    let good = try a.server.pki.write(
      "expect.yaml",
      "models: [{name: simple, versions: ['1']}]\nonly_listed_models: true\nsbom_sha256: ['\(a.sbomSHA256)']\n")
    let otherSBOM = try a.server.pki.write(
      "expect-sbom.yaml", "sbom_sha256: ['\(String(repeating: "2", count: 64))']\n")
    let bad = try a.server.pki.write("expect-v2.yaml", "models: [{name: simple, versions: ['2']}]\n")
    let token = try a.server.pki.write("token", client.token ?? "")
    let common = [
      "--target", "127.0.0.1:\(a.server.port)", "--cert", client.cert, "--key", client.key, "--ca",
      a.server.pki.path("server-ca.pem"), "--token-file", token, "--attestation-key", pub,
    ]
    let saved = a.server.pki.path("evidence.jwt")
    let ok = try await ProcessTests.run(
      ProcessTests.binary, ["attest", "request"] + common + ["--expect", good, "--save", saved])
    #expect(ok.status == 0, "\(ok.stderr)")
    #expect(ok.stdout.contains("\"eat_profile\""))
    let refused = try await ProcessTests.run(ProcessTests.binary, ["attest", "request"] + common + ["--expect", bad])
    #expect(refused.status == 1 && refused.stderr.contains("runs version 1, expected one of 2"), "\(refused.stderr)")
    let wrongBuild = try await ProcessTests.run(
      ProcessTests.binary, ["attest", "request"] + common + ["--expect", otherSBOM])
    #expect(wrongBuild.status == 1 && wrongBuild.stderr.contains("SBOM digest"), "\(wrongBuild.stderr)")
    // Saved evidence checked offline against a nonce it was not issued for: a replay.
    let replay = try await ProcessTests.run(
      ProcessTests.binary,
      ["attest", "verify", saved, "--attestation-key", pub, "--nonce", String(repeating: "ab", count: 32)])
    #expect(replay.status == 1 && replay.stderr.contains("nonce does not match"), "\(replay.stderr)")
    let malformed = try a.server.pki.write("expect-bad.yaml", "models: [{versions: ['1']}]\n")
    let badFile = try await ProcessTests.run(
      ProcessTests.binary, ["attest", "request"] + common + ["--expect", malformed])
    #expect(badFile.status == 1 && badFile.stderr.contains("name"), "\(badFile.stderr)")
    try await a.server.stop()
  }
}
