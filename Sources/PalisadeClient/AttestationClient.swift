import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOSSL
import PalisadeIdentity
import PalisadeProto
import Synchronization
import X509

/// What `Attest` returned, and the certificate public key the server presented on that same connection.
public struct AttestationExchange: Sendable {
  public var evidence: String
  public var keyID: String
  /// SHA-256 (hex) of the public key of the TLS certificate this connection verified.
  public var presentedPublicKeySHA256: String
}

/// Calls `palisade.v1.Attestation/Attest` with `nonce` over mTLS. The server certificate is verified here
/// (RFC 5280 path to `tls.serverCA`, the host in its SANs) rather than by BoringSSL, so that the exchange also
/// reports which certificate this very connection presented: the caller checks the evidence is bound to it.
public func attest(host: String, port: Int, tls: ClientTLSFiles, token: String?, nonce: [UInt8]) async throws
  -> AttestationExchange
{
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
    try await Palisade_V1_Attestation.Client(wrapping: client).attest(.with { $0.nonce = Data(nonce) })
  }
  guard let presented = seen.value.withLock({ $0 }) else {
    throw RPCError(code: .unavailable, message: "the server certificate was not verified on this connection")
  }
  return AttestationExchange(evidence: response.evidence, keyID: response.keyID, presentedPublicKeySHA256: presented)
}

/// The public-key digest seen by the verification callback of one connection.
final class PresentedKey: Sendable {
  let value = Mutex<String?>(nil)
}
