import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOSSL
import PalisadeIdentity
import PalisadeProto
public import PalisadeTPM
import Synchronization
import X509

/// What `Attest` returned, and the certificate public key the server presented on that same connection.
public struct AttestationExchange: Sendable {
  public var evidence: String
  public var keyID: String
  /// SHA-256 (hex) of the public key of the TLS certificate this connection verified.
  public var presentedPublicKeySHA256: String
  /// The TPM part, when the server has one (attestation.tpm).
  public var tpm: TPMEvidenceBytes? = nil
}

/// Calls `palisade.v1.Attestation/Attest` with `nonce` over mTLS. The server certificate is verified here
/// (RFC 5280 path to `tls.serverCA`, the host in its SANs) rather than by BoringSSL, so that the exchange also
/// reports which certificate this very connection presented: the caller checks the evidence is bound to it.
public func attest(
  host: String, port: Int, tls: ClientTLSFiles, token: String?, nonce: [UInt8],
  challenge: TPMCredential.Challenge? = nil
) async throws -> AttestationExchange {
  let roots = try PEMFiles.certificates(at: tls.serverCA)
  let verifier = ServerCertificateVerifier(roots: roots, host: host)
  let seen = PresentedKey()
  let response = try await withPalisadeConnection(
    host: host, port: port, tls: tls, token: token,
    configureTLS: {
      $0.customVerificationCallback = { certificates, promise in
        let der = certificates.compactMap { try? $0.toDERBytes() }
        let chain = ValidatedCertificateChain(certificates)
        Task { [seen] in
          switch await verifier.verify(derChain: der) {
          case .success(let leaf):
            seen.value.withLock { $0 = leaf.publicKeySHA256 }
            promise.succeed(.certificateVerified(VerificationMetadata(chain)))
          case .failure:
            promise.succeed(.failed)
          }
        }
      }
    }
  ) { client in
    try await Palisade_V1_Attestation.Client(wrapping: client).attest(
      .with {
        $0.nonce = Data(nonce)
        if let challenge {
          $0.credentialBlob = Data(challenge.credentialBlob)
          $0.encryptedSecret = Data(challenge.encryptedSecret)
        }
      })
  }
  guard let presented = seen.value.withLock({ $0 }) else {
    throw RPCError(code: .unavailable, message: "the server certificate was not verified on this connection")
  }
  var exchange = AttestationExchange(
    evidence: response.evidence, keyID: response.keyID, presentedPublicKeySHA256: presented)
  if response.hasTpm {
    let t = response.tpm
    var values: [Int: [UInt8]] = [:]
    for (index, value) in t.pcrValues { values[Int(index)] = Array(value) }
    exchange.tpm = TPMEvidenceBytes(
      quoteAttest: Array(t.quoteAttest), quoteSignature: Array(t.quoteSignature), akPublic: Array(t.akPublic),
      ekPublic: Array(t.ekPublic), ekCertificate: Array(t.ekCertificate), eventLog: t.eventLog, pcr: Int(t.pcr),
      pcrValues: values, activatedCredential: Array(t.activatedCredential))
  }
  return exchange
}

/// The public-key digest seen by the verification callback of one connection.
final class PresentedKey: Sendable {
  let value = Mutex<String?>(nil)
}
