import ArgumentParser
import Foundation
import GRPCCore
import PalisadeClient
import PalisadeIdentity
import PalisadeTPM
import PalisadeYAML
import X509

/// `palisade attest`: fetch and appraise a server's attestation evidence.
struct AttestCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "attest",
    abstract: "Check what a Palisade server runs before sending it data (remote attestation).",
    discussion: """
      `request` sends a fresh random nonce to palisade.v1.Attestation/Attest over mTLS and appraises the signed
      evidence: the signature (--attestation-key, the server's attestation public key), the nonce, the binding to the TLS
      certificate this connection saw, its age, and the reference values in --expect (YAML: executable_sha256,
      config_sha256, policy_sha256: lists of allowed digests; models: [{name, versions, signer, manifest_sha256}];
      only_listed_models; max_age_seconds). It prints the claims and exits 0, or prints every failed check and
      exits 1. `verify` appraises saved evidence offline.
      """,
    subcommands: [Request.self, Verify.self]
  )

  static func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("palisade attest: \(message)\n".utf8))
    return ExitCode(1)
  }

  static func appraise(
    _ evidence: String, key: String, nonce: [UInt8]?, tls: String?, expect: String?, print printClaims: Bool = true
  ) throws -> [UInt8] {
    let pem: String
    do { pem = try String(contentsOfFile: key, encoding: .utf8) } catch { throw fail("cannot read --key \(key)") }
    var expectations: EvidenceAppraiser.Expectations? = nil
    if let expect {
      do { expectations = try EvidenceAppraiser.Expectations.load(path: expect) } catch { throw fail("\(error)") }
    }
    do {
      let appraisal = try EvidenceAppraiser(publicKeyPEM: pem).appraise(
        evidence, nonce: nonce, tlsPublicKeySHA256: tls, expectations: expectations)
      if printClaims { print(String(decoding: appraisal.claimsJSON, as: UTF8.self)) }
      return appraisal.claimsJSON
    } catch {
      throw fail("evidence refused: \(error.description)")
    }
  }

  struct Request: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Fetch fresh evidence from a server and appraise it.")
    @OptionGroup var connection: CallCommand.Connection
    @Option(help: "The server's attestation public key (PEM).") var attestationKey: String
    @Option(help: "Reference values (YAML).") var expect: String?
    @Option(help: "Also write the raw evidence (JWT) to this file.") var save: String?
    @Option(
      help: """
        Require evidence rooted in a TPM: the TPM manufacturers' root (and issuing) certificates (PEM) the \
        endorsement key certificate must chain to. The TPM quote, event log and credential activation are then \
        appraised too (docs/attestation.md).
        """)
    var tpmRoots: String?

    func run() async throws {
      let (host, port) = try connection.hostPort()
      let tls = ClientTLSFiles(certificate: connection.cert, privateKey: connection.key, serverCA: connection.ca)
      let token = try connection.bearer()
      func call(_ challenge: TPMCredential.Challenge?) async throws -> (AttestationExchange, [UInt8]) {
        var rng = SystemRandomNumberGenerator()
        let nonce = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        do {
          return (
            try await attest(host: host, port: port, tls: tls, token: token, nonce: nonce, challenge: challenge), nonce
          )
        } catch let error as RPCError {
          throw AttestCommand.fail("\(error.code): \(error.message)")
        }
      }
      guard let tpmRoots else {
        let (exchange, nonce) = try await call(nil)
        if let save { try Data(exchange.evidence.utf8).write(to: URL(fileURLWithPath: save)) }
        _ = try AttestCommand.appraise(
          exchange.evidence, key: attestationKey, nonce: nonce, tls: exchange.presentedPublicKeySHA256, expect: expect)
        return
      }
      let manufacturers: [Certificate]
      do { manufacturers = try PEMFiles.certificates(at: tpmRoots) } catch {
        throw AttestCommand.fail("cannot read --tpm-roots \(tpmRoots)")
      }
      let appraiser = TPMEvidenceAppraiser(manufacturerCertificates: manufacturers)
      // Round 1: the TPM's keys. Round 2: a quote for a fresh nonce, with the credential sealed to the EK for the
      // AK's name, which only that TPM can release.
      let (first, _) = try await call(nil)
      guard let firstTPM = first.tpm else {
        throw AttestCommand.fail("evidence refused: the server sent no TPM evidence (software-signed only)")
      }
      let identity: TPMEvidenceAppraiser.Identity
      let sealed: TPMEvidenceAppraiser.Sealed
      do {
        identity = try await appraiser.identity(firstTPM)
        sealed = try appraiser.challenge(for: identity)
      } catch { throw AttestCommand.fail("evidence refused: \(error)") }
      let (exchange, nonce) = try await call(sealed.challenge)
      if let save { try Data(exchange.evidence.utf8).write(to: URL(fileURLWithPath: save)) }
      let claimsJSON = try AttestCommand.appraise(
        exchange.evidence, key: attestationKey, nonce: nonce, tls: exchange.presentedPublicKeySHA256, expect: expect,
        print: false)
      guard let tpm = exchange.tpm else {
        throw AttestCommand.fail("evidence refused: the server sent no TPM evidence")
      }
      guard tpm.akPublic == firstTPM.akPublic, tpm.ekPublic == firstTPM.ekPublic else {
        throw AttestCommand.fail("evidence refused: the TPM keys changed between the two rounds")
      }
      guard let claims = (try? JSONSerialization.jsonObject(with: Data(claimsJSON))) as? [String: Any] else {
        throw AttestCommand.fail("evidence refused: claims are not a JSON object")
      }
      do {
        try await appraiser.appraise(tpm, nonce: nonce, claims: claims, sealed: sealed)
      } catch { throw AttestCommand.fail("evidence refused: \(error)") }
      print(String(decoding: claimsJSON, as: UTF8.self))
    }
  }

  struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Appraise saved evidence (a JWT file) offline.")
    @Argument(help: "The evidence file.") var evidence: String
    @Option(help: "The server's attestation public key (PEM).") var attestationKey: String
    @Option(help: "The nonce the evidence must carry (hex).") var nonce: String?
    @Option(help: "SHA-256 (hex) of the TLS certificate public key the evidence must be bound to.")
    var tlsPublicKeySha256: String?
    @Option(help: "Reference values (YAML).") var expect: String?

    func run() throws {
      let text: String
      do { text = try String(contentsOfFile: evidence, encoding: .utf8) } catch {
        throw AttestCommand.fail("cannot read \(evidence)")
      }
      var nonceBytes: [UInt8]? = nil
      if let nonce {
        guard nonce.count % 2 == 0,
          let bytes = Optional(
            stride(from: 0, to: nonce.count, by: 2).compactMap({ i -> UInt8? in
              let start = nonce.index(nonce.startIndex, offsetBy: i)
              return UInt8(nonce[start..<nonce.index(start, offsetBy: 2)], radix: 16)
            })), bytes.count * 2 == nonce.count
        else { throw ValidationError("--nonce must be hex") }
        nonceBytes = bytes
      }
      _ = try AttestCommand.appraise(
        text.trimmingCharacters(in: .whitespacesAndNewlines), key: attestationKey, nonce: nonceBytes,
        tls: tlsPublicKeySha256,
        expect: expect)
    }
  }
}
