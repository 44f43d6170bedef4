import ArgumentParser
import Foundation
import GRPCCore
import PalisadeClient
import PalisadeIdentity
import PalisadeYAML

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
    _ evidence: String, key: String, nonce: [UInt8]?, tls: String?, expect: String?
  ) throws {
    let pem: String
    do { pem = try String(contentsOfFile: key, encoding: .utf8) } catch { throw fail("cannot read --key \(key)") }
    var expectations: EvidenceAppraiser.Expectations? = nil
    if let expect {
      do { expectations = try EvidenceAppraiser.Expectations.load(path: expect) } catch { throw fail("\(error)") }
    }
    do {
      let appraisal = try EvidenceAppraiser(publicKeyPEM: pem).appraise(
        evidence, nonce: nonce, tlsPublicKeySHA256: tls, expectations: expectations)
      print(String(decoding: appraisal.claimsJSON, as: UTF8.self))
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

    func run() async throws {
      var rng = SystemRandomNumberGenerator()
      let nonce = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
      let (host, port) = try connection.hostPort()
      let exchange: AttestationExchange
      do {
        exchange = try await attest(
          host: host, port: port,
          tls: ClientTLSFiles(certificate: connection.cert, privateKey: connection.key, serverCA: connection.ca),
          token: try connection.bearer(), nonce: nonce)
      } catch let error as RPCError {
        throw AttestCommand.fail("\(error.code): \(error.message)")
      }
      if let save { try Data(exchange.evidence.utf8).write(to: URL(fileURLWithPath: save)) }
      try AttestCommand.appraise(
        exchange.evidence, key: attestationKey, nonce: nonce, tls: exchange.presentedPublicKeySHA256, expect: expect)
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
      do { text = try String(contentsOfFile: evidence, encoding: .utf8) } catch { throw AttestCommand.fail("cannot read \(evidence)") }
      var nonceBytes: [UInt8]? = nil
      if let nonce {
        guard nonce.count % 2 == 0, let bytes = Optional(stride(from: 0, to: nonce.count, by: 2).compactMap({ i -> UInt8? in
          let start = nonce.index(nonce.startIndex, offsetBy: i)
          return UInt8(nonce[start..<nonce.index(start, offsetBy: 2)], radix: 16)
        })), bytes.count * 2 == nonce.count else { throw ValidationError("--nonce must be hex") }
        nonceBytes = bytes
      }
      try AttestCommand.appraise(
        text.trimmingCharacters(in: .whitespacesAndNewlines), key: attestationKey, nonce: nonceBytes, tls: tlsPublicKeySha256,
        expect: expect)
    }
  }
}
