import Crypto
public import X509
import SwiftASN1

/// The client side of a TLS handshake with a Palisade server, done by hand so that the caller also learns which
/// certificate the server presented (attestation binds its evidence to that certificate's public key).
///
/// RFC 5280 path validation to the given roots at the current time, and the server's name or IP in the leaf's
/// SANs (RFC 6125), as BoringSSL's default verification does.
public struct ServerCertificateVerifier: Sendable {
  let roots: [Certificate]
  let hostname: String?
  let ip: String?

  public init(roots: [Certificate], host: String) {
    self.roots = roots
    let isIP =
      host.contains(":") || (host.split(separator: ".").count == 4 && host.allSatisfy { $0.isNumber || $0 == "." })
    self.hostname = isIP ? nil : host
    self.ip = isIP ? host : nil
  }

  /// Verifies a presented chain (leaf first, DER); returns the leaf, or the reason it is refused.
  public func verify(derChain chain: [[UInt8]]) async -> Result<Certificate, CertificateRefusal> {
    guard let leafDER = chain.first else { return .failure(.init("no server certificate")) }
    let leaf: Certificate
    var intermediates: [Certificate] = []
    do {
      leaf = try Certificate(derEncoded: leafDER)
      for der in chain.dropFirst() { intermediates.append(try Certificate(derEncoded: der)) }
    } catch {
      return .failure(.init("server certificate could not be parsed"))
    }
    var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
      RFC5280Policy()
      ServerIdentityPolicy(serverHostname: hostname, serverIP: ip)
    }
    switch await verifier.validate(leaf: leaf, intermediates: CertificateStore(intermediates)) {
    case .validCertificate: return .success(leaf)
    case .couldNotValidate(let failures):
      return .failure(
        .init(
          "server certificate refused: \(failures.map { $0.policyFailureReason.description }.joined(separator: "; "))"))
    }
  }
}

/// Why a certificate was refused.
public struct CertificateRefusal: Error, Sendable, CustomStringConvertible {
  public var description: String
  public init(_ description: String) { self.description = description }
}

extension Certificate {
  /// SHA-256 of the certificate's public key (the subjectPublicKey bits of its SubjectPublicKeyInfo), lower-case hex.
  /// Attestation evidence carries this for the server's TLS certificate.
  public var publicKeySHA256: String {
    SHA256.hash(data: Array(publicKey.subjectPublicKeyInfoBytes)).map { byte in
      let hex = String(byte, radix: 16)
      return byte < 16 ? "0" + hex : hex
    }.joined()
  }
}
