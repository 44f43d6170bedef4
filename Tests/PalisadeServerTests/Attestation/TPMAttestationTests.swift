import Crypto
import Foundation
import GRPCCore
import PalisadeClient
import PalisadeIdentity
import PalisadeServer
import PalisadeTPM
import PalisadeTestSupport
import Testing
import X509

/// Attestation rooted in a TPM (attestation.tpm) against real software TPMs (swtpm) manufactured with EK
/// certificates: the whole two-round flow of `palisade attest request --tpm-roots` passes, and a replayed quote, a
/// wrong nonce, a tampered event log, a quote from another TPM, a model swapped after the quote and an EK from an
/// untrusted root are each refused.
@Suite(.serialized) struct TPMAttestationTests {
  struct Attested {
    let server: TestServer
    let swtpm: SoftwareTPM
    let publicKeyPEM: String
    func stop() async throws {
      try await server.stop()
      swtpm.stop()
    }
  }

  /// A server with an attestation key and a TPM, serving the signed `simple` bundle v1.
  static func start(tpm: Bool = true) async throws -> Attested {
    let swtpm = try SoftwareTPM.start()
    let pki = try TestPKI()
    let key = P256.Signing.PrivateKey()
    let keyPath = try pki.write("attestation.key", key.pemRepresentation, mode: 0o600)
    let factory = TestBundleFactory()
    try await factory.make(root: pki.path("models"), version: 1)
    let publisher = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    let server = try await TestServer.start(pki: pki, models: []) {
      $0.attestation.key = keyPath
      $0.sourceDigest = String(repeating: "c", count: 64)  // as if read from a file: the config is measured too
      if tpm {
        var t = TPMAttestationConfig()
        t.tcti = swtpm.tcti
        $0.attestation.tpm = t
      }
      $0.models.directories = [pki.path("models")]
      $0.models.stateFile = pki.path("state.json")
      $0.models.trust = [.init(models: "simple", publicKeys: [publisher])]
    }
    for _ in 0..<200 where !server.runtime.repository.isReady(name: "simple", version: "1") {
      try await Task.sleep(for: .milliseconds(50))
    }
    return Attested(server: server, swtpm: swtpm, publicKeyPEM: key.publicKey.pemRepresentation)
  }

  static func nonce() -> [UInt8] { (0..<32).map { _ in UInt8.random(in: 0...255) } }

  static func exchange(_ server: TestServer, nonce: [UInt8], challenge: TPMCredential.Challenge? = nil) async throws
    -> AttestationExchange
  {
    let client = try goodClient(server)
    return try await attest(
      host: "127.0.0.1", port: server.port,
      tls: ClientTLSFiles(certificate: client.cert, privateKey: client.key, serverCA: server.pki.path("server-ca.pem")),
      token: client.token, nonce: nonce, challenge: challenge)
  }

  static func claims(_ a: Attested, _ x: AttestationExchange, nonce: [UInt8]) throws -> [String: Any] {
    let appraisal = try EvidenceAppraiser(publicKeyPEM: a.publicKeyPEM).appraise(
      x.evidence, nonce: nonce, tlsPublicKeySHA256: x.presentedPublicKeySHA256, expectations: nil)
    return try #require(try JSONSerialization.jsonObject(with: Data(appraisal.claimsJSON)) as? [String: Any])
  }

  static func manufacturer(_ swtpm: SoftwareTPM) throws -> [Certificate] {
    try PEMFiles.certificates(at: swtpm.manufacturerRoot) + PEMFiles.certificates(at: swtpm.issuingCA)
  }

  static func refusal(_ body: () async throws -> Void) async -> String {
    do {
      try await body()
      return "accepted"
    } catch { return "\(error)" }
  }

  @Test func theWholeFlowPassesAndEveryForgeryIsRefused() async throws {
    let a = try await Self.start()
    let appraiser = TPMEvidenceAppraiser(manufacturerCertificates: try Self.manufacturer(a.swtpm))

    // Round 1: the TPM's keys, checked against the manufacturer. Round 2: a quote with the sealed credential.
    let first = try await Self.exchange(a.server, nonce: Self.nonce())
    let firstTPM = try #require(first.tpm)
    let identity = try await appraiser.identity(firstTPM)
    let sealed = try appraiser.challenge(for: identity)
    let n = Self.nonce()
    let x = try await Self.exchange(a.server, nonce: n, challenge: sealed.challenge)
    let tpm = try #require(x.tpm)
    let claims = try Self.claims(a, x, nonce: n)
    try await appraiser.appraise(tpm, nonce: n, claims: claims, sealed: sealed)
    let palisade = try #require(claims["palisade"] as? [String: Any])
    #expect(palisade["evidence_root"] as? String == "tpm")
    // The log measured the start digests and the model.
    let log = try TPMEventLog.parse(tpm.eventLog)
    let names = Set(log.events.map(\.name))
    for name in ["executable", "config", "policy", "client_ca_bundle", "model:simple/1"] {
      #expect(names.contains(name), "\(name) not measured: \(names.sorted())")
    }

    // A replayed quote: round 1's TPM evidence (another nonce) with round 2's claims and nonce.
    var replayed = firstTPM
    replayed.activatedCredential = tpm.activatedCredential
    let replay = await Self.refusal { try await appraiser.appraise(replayed, nonce: n, claims: claims, sealed: sealed) }
    #expect(replay.contains("not over this request's nonce") && replay.contains("not bound to this quote"), "\(replay)")
    // A wrong nonce.
    let wrong = await Self.refusal {
      try await appraiser.appraise(tpm, nonce: Self.nonce(), claims: claims, sealed: sealed)
    }
    #expect(wrong.contains("not over this request's nonce"), "\(wrong)")
    // A tampered event log: one digest changed (and its extend recomputed, so the log is self-consistent).
    var parsed = try TPMEventLog.parse(tpm.eventLog)
    let i = try #require(parsed.events.firstIndex { $0.name == "policy" })
    parsed.events[i] = TPMEventLog.Event(kind: "measure", name: "policy", digest: String(repeating: "0", count: 64))
    var tampered = tpm
    tampered.eventLog = parsed.json()
    let tamper = await Self.refusal { try await appraiser.appraise(tampered, nonce: n, claims: claims, sealed: sealed) }
    #expect(tamper.contains("does not replay to the quoted PCR value"), "\(tamper)")
    // An event whose extend does not match its content.
    parsed = try TPMEventLog.parse(tpm.eventLog)
    parsed.events[i].digest = String(repeating: "1", count: 64)
    tampered.eventLog = parsed.json()
    let inconsistent = await Self.refusal {
      try await appraiser.appraise(tampered, nonce: n, claims: claims, sealed: sealed)
    }
    #expect(inconsistent.contains("extend does not match its content"), "\(inconsistent)")
    // An EK certificate from an untrusted root (here: the TLS CA, not a TPM manufacturer).
    let untrusted = TPMEvidenceAppraiser(
      manufacturerCertificates: try PEMFiles.certificates(at: a.server.pki.path("server-ca.pem")))
    let root = await Self.refusal { try await untrusted.appraise(tpm, nonce: n, claims: claims, sealed: sealed) }
    #expect(root.contains("does not chain to a trusted TPM manufacturer root"), "\(root)")

    // A quote from another TPM (same manufacturer): the challenge for this TPM's AK, sent to the other server,
    // cannot be activated there; and that TPM's evidence does not have the AK the credential was sealed for.
    let b = try await Self.start()
    let relayed = await rpcError {
      _ = try await Self.exchange(b.server, nonce: Self.nonce(), challenge: sealed.challenge)
    }
    #expect(relayed?.code == .invalidArgument && relayed?.message.contains("credential activation failed") == true)
    let nb = Self.nonce()
    let other = try await Self.exchange(b.server, nonce: nb)
    let otherTPM = try #require(other.tpm)
    let otherClaims = try Self.claims(b, other, nonce: nb)
    let foreign = await Self.refusal {
      try await appraiser.appraise(otherTPM, nonce: nb, claims: otherClaims, sealed: sealed)
    }
    #expect(foreign.contains("not the one the credential was sealed for"), "\(foreign)")
    try await b.stop()

    // A model swapped after the quote: the old claims do not match the new quote and log, and fresh evidence
    // shows the model gone.
    #expect(a.server.runtime.repository.remove(name: "simple"))
    let n3 = Self.nonce()
    let sealed3 = try appraiser.challenge(for: identity)
    let after = try await Self.exchange(a.server, nonce: n3, challenge: sealed3.challenge)
    let afterTPM = try #require(after.tpm)
    let swapped = await Self.refusal {
      try await appraiser.appraise(afterTPM, nonce: n3, claims: claims, sealed: sealed3)
    }
    #expect(swapped.contains("not bound to this quote") && swapped.contains("model:simple/1"), "\(swapped)")
    let afterClaims = try Self.claims(a, after, nonce: n3)
    try await appraiser.appraise(afterTPM, nonce: n3, claims: afterClaims, sealed: sealed3)
    let afterLog = try TPMEventLog.parse(afterTPM.eventLog)
    #expect(afterLog.events.last?.kind == "remove" && afterLog.events.last?.name == "model:simple/1")
    try await a.stop()
  }

  @Test func withoutATPMEvidenceSaysItIsSoftwareSigned() async throws {
    let a = try await Self.start(tpm: false)
    let n = Self.nonce()
    let x = try await Self.exchange(a.server, nonce: n)
    #expect(x.tpm == nil)
    let palisade = try #require(try Self.claims(a, x, nonce: n)["palisade"] as? [String: Any])
    #expect(palisade["evidence_root"] as? String == "software-key")
    try await a.stop()
  }

  @Test func theCLIAppraisesTheTPMAndRefusesAnUntrustedManufacturer() async throws {
    let a = try await Self.start()
    let client = try goodClient(a.server)
    let pub = try a.server.pki.write("attestation.pub.pem", a.publicKeyPEM)
    let token = try a.server.pki.write("token", client.token ?? "")
    let roots = try a.server.pki.write(
      "tpm-roots.pem",
      try String(contentsOfFile: a.swtpm.manufacturerRoot, encoding: .utf8)
        + String(contentsOfFile: a.swtpm.issuingCA, encoding: .utf8))
    let common = [
      "attest", "request", "--target", "127.0.0.1:\(a.server.port)", "--cert", client.cert, "--key", client.key, "--ca",
      a.server.pki.path("server-ca.pem"), "--token-file", token, "--attestation-key", pub,
    ]
    let ok = try await ProcessTests.run(ProcessTests.binary, common + ["--tpm-roots", roots])
    #expect(ok.status == 0, "\(ok.stderr)")
    #expect(ok.stdout.contains("\"tpm_quote_sha256\""))
    let refused = try await ProcessTests.run(
      ProcessTests.binary, common + ["--tpm-roots", a.server.pki.path("server-ca.pem")])
    #expect(refused.status == 1 && refused.stderr.contains("manufacturer root"), "\(refused.stderr)")
    try await a.stop()
  }

  @Test func aTPMThatCannotBeReachedStopsTheServerFromStarting() async throws {
    let pki = try TestPKI()
    await #expect(throws: (any Error).self) {
      _ = try await TestServer.start(pki: pki, models: []) {
        var t = TPMAttestationConfig()
        t.tcti = "swtpm:host=127.0.0.1,port=1"
        $0.attestation.tpm = t
      }
    }
  }
}
