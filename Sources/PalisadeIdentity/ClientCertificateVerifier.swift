import Foundation
#if canImport(Glibc)
  import Glibc
#endif
import Synchronization
public import SwiftASN1
public import X509

/// Verifies client certificate chains against a trust bundle that can be replaced at runtime.
///
/// Used from the TLS handshake: BoringSSL's own verification is turned off and this type decides, so that the
/// client-CA bundle can rotate without restarting the listener. The policy is RFC 5280 path validation at the
/// current time plus ``ClientLeafPolicy``.
public final class ClientCertificateVerifier: Sendable {
  /// The outcome of one verification.
  public enum Outcome: Sendable {
    /// A chain from the leaf to a trusted root; `chain[0]` is the leaf.
    case trusted([Certificate])
    /// Refused; the reason is for the log.
    case refused(String)
  }

  private let roots: Mutex<CertificateStore>

  /// Creates a verifier trusting `roots`; certificates are checked against the current time.
  public init(roots: [Certificate]) {
    self.roots = Mutex(CertificateStore(roots))
  }

  /// Replaces the trusted roots; new handshakes use them at once.
  public func replaceRoots(_ newRoots: [Certificate]) {
    roots.withLock { $0 = CertificateStore(newRoots) }
  }

  /// Verifies `chain` as presented by the peer (leaf first, DER).
  public func verify(derChain chain: [[UInt8]]) async -> Outcome {
    guard let leafDER = chain.first else { return .refused("no client certificate") }
    let leaf: Certificate
    var intermediates: [Certificate] = []
    do {
      leaf = try Certificate(derEncoded: leafDER)
      for der in chain.dropFirst() { intermediates.append(try Certificate(derEncoded: der)) }
    } catch {
      return .refused("client certificate could not be parsed")
    }
    let store = roots.withLock { $0 }
    var verifier = Verifier(rootCertificates: store) {
      RFC5280Policy()
      ClientLeafPolicy()
    }
    switch await verifier.validate(leaf: leaf, intermediates: CertificateStore(intermediates)) {
    case .validCertificate(let validated):
      return .trusted(Array(validated))
    case .couldNotValidate(let failures):
      let reasons = failures.map { $0.policyFailureReason.description }
      return .refused(
        reasons.isEmpty
          ? "no chain to a trusted client CA (subject \(leaf.subject))"
          : "certificate chain refused: \(reasons.joined(separator: "; "))")
    }
  }
}

/// A client leaf must be an end-entity certificate meant for TLS client authentication, issued by certificates
/// allowed to issue.
///
/// The SPIFFE X.509-SVID specification requires `CA:FALSE` on leaves; we additionally require the
/// `clientAuth` extended key usage, so that a server certificate from the same CA cannot act as a caller, and
/// `digitalSignature` when the leaf carries KeyUsage (TLS 1.3 client authentication is a signature). Every issuer
/// that carries KeyUsage must allow `keyCertSign` (RFC 5280 §4.2.1.3): a CA that marked an intermediate as not
/// for issuing certificates must not see it issue callers. A malformed extension anywhere is a refusal.
public struct ClientLeafPolicy: VerifierPolicy {
  public let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [.X509ExtensionID.extendedKeyUsage]

  public init() {}

  public mutating func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async
    -> PolicyEvaluationResult
  {
    let leaf = chain.leaf
    do {
      if let constraints = try leaf.extensions.basicConstraints, case .isCertificateAuthority = constraints {
        return .failsToMeetPolicy(reason: "client certificate is a CA certificate")
      }
      guard let eku = try leaf.extensions.extendedKeyUsage else {
        return .failsToMeetPolicy(reason: "client certificate has no extended key usage (clientAuth required)")
      }
      guard eku.contains(.clientAuth) else {
        return .failsToMeetPolicy(reason: "client certificate lacks the clientAuth extended key usage")
      }
      if let usage = try leaf.extensions.keyUsage, !usage.digitalSignature {
        return .failsToMeetPolicy(reason: "client certificate KeyUsage does not allow digitalSignature")
      }
    } catch {
      return .failsToMeetPolicy(reason: "client certificate extensions are malformed")
    }
    for issuer in chain.dropFirst() {
      do {
        if let usage = try issuer.extensions.keyUsage, !usage.keyCertSign {
          return .failsToMeetPolicy(reason: "issuer \(issuer.subject) KeyUsage does not allow keyCertSign")
        }
      } catch {
        return .failsToMeetPolicy(reason: "issuer \(issuer.subject) has a malformed KeyUsage extension")
      }
    }
    return .meetsPolicy
  }
}

/// Reading PEM certificate bundles and keys from files, with errors that name the file.
public enum PEMFiles {
  /// Every certificate in the PEM file at `path`; throws when the file is missing, unreadable, or has none.
  public static func certificates(at path: String) throws -> [Certificate] {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
      throw PEMFileError(path: path, reason: "cannot be read (\(error.localizedDescription))")
    }
    let documents: [PEMDocument]
    do { documents = try PEMDocument.parseMultiple(pemString: text) } catch {
      throw PEMFileError(path: path, reason: "is not valid PEM")
    }
    let certificates = try documents.filter { $0.discriminator == "CERTIFICATE" }.map { doc in
      do { return try Certificate(derEncoded: doc.derBytes) } catch {
        throw PEMFileError(path: path, reason: "holds a certificate that cannot be parsed")
      }
    }
    guard !certificates.isEmpty else { throw PEMFileError(path: path, reason: "holds no certificate") }
    return certificates
  }

  /// Refuses a private key file that group or others may read, as ssh does; the message names the file and mode.
  ///
  /// One exception: group read (no write) when the file's group is this process's own group and its owner is root
  /// or this process's user, which is how Kubernetes mounts Secrets for a pod's `fsGroup` (0440, root:fsGroup).
  public static func checkPrivateKeyPermissions(at path: String) throws {
    // stat, not lstat: Kubernetes and spiffe-helper mount keys through symlinks, whose own mode is 0777.
    var info = stat()
    guard stat(path, &info) == 0 else { throw PEMFileError(path: path, reason: "cannot be read") }
    guard (info.st_mode & S_IFMT) == S_IFREG else { throw PEMFileError(path: path, reason: "is not a regular file") }
    let mode = Int(info.st_mode & 0o777)
    let ownGroupReadOnly =
      mode & 0o077 == 0o040 && info.st_gid == getegid() && (info.st_uid == 0 || info.st_uid == geteuid())
    if mode & 0o077 != 0 && !ownGroupReadOnly {
      throw PEMFileError(
        path: path,
        reason: "is accessible by group or others (mode \(String(mode, radix: 8))); run chmod 600 on it")
    }
  }
}

/// A certificate or key file that cannot be used.
public struct PEMFileError: Error, CustomStringConvertible, Sendable {
  public let path: String
  public let reason: String
  public init(path: String, reason: String) {
    self.path = path
    self.reason = reason
  }
  public var description: String { "\(path) \(reason)" }
}
