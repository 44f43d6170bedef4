public import Crypto
import Foundation
import PalisadeIdentity

/// An ECDSA private key on one of the curves OMS supports; each signs with its curve's hash
/// (P-256/SHA-256, P-384/SHA-384, P-521/SHA-512).
public enum BundleSigningKey: Sendable {
  case p256(P256.Signing.PrivateKey)
  case p384(P384.Signing.PrivateKey)
  case p521(P521.Signing.PrivateKey)

  /// Loads a PEM private key, PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`). Encrypted keys are not supported.
  /// Text around the block (as `certtool` writes it) is ignored.
  public init(pem text: String) throws(BundleError) {
    let key: PEMText.ECPrivateKey?
    do { key = try PEMText.ecPrivateKey(text) } catch {
      throw BundleError(.invalidInput, "private key: \(error.description)")
    }
    switch key {
    case .p256(let k): self = .p256(k)
    case .p384(let k): self = .p384(k)
    case .p521(let k): self = .p521(k)
    case nil:
      throw BundleError(
        .invalidInput, "private key: not an unencrypted PEM ECDSA P-256, P-384 or P-521 key (PKCS#8 or SEC1)")
    }
  }

  /// The matching public key.
  public var publicKey: BundlePublicKey {
    switch self {
    case .p256(let k): .p256(k.publicKey)
    case .p384(let k): .p384(k.publicKey)
    case .p521(let k): .p521(k.publicKey)
    }
  }

  /// DER `SEQUENCE { r, s }` ECDSA signature over `message` (hashed by the curve's hash).
  func signDER(_ message: [UInt8]) throws(BundleError) -> [UInt8] {
    do {
      switch self {
      case .p256(let k): return Array(try k.signature(for: message).derRepresentation)
      case .p384(let k): return Array(try k.signature(for: message).derRepresentation)
      case .p521(let k): return Array(try k.signature(for: message).derRepresentation)
      }
    } catch {
      throw BundleError(.invalidInput, "signing failed: \(error)")
    }
  }
}

/// An ECDSA public key on P-256, P-384 or P-521.
public enum BundlePublicKey: Sendable, Hashable {
  case p256(P256.Signing.PublicKey)
  case p384(P384.Signing.PublicKey)
  case p521(P521.Signing.PublicKey)

  /// Loads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo). Text around the block (as `certtool` writes it) is ignored.
  public init(pem text: String) throws(BundleError) {
    let pem = PEMText.soleBlock(text)
    if let key = try? P256.Signing.PublicKey(pemRepresentation: pem) {
      self = .p256(key)
    } else if let key = try? P384.Signing.PublicKey(pemRepresentation: pem) {
      self = .p384(key)
    } else if let key = try? P521.Signing.PublicKey(pemRepresentation: pem) {
      self = .p521(key)
    } else {
      throw BundleError(.invalidInput, "public key: not a PEM ECDSA P-256, P-384 or P-521 SubjectPublicKeyInfo")
    }
  }

  /// DER SubjectPublicKeyInfo with the uncompressed point, as OpenSSL writes it.
  public var spkiDER: [UInt8] {
    switch self {
    case .p256(let k): Array(k.derRepresentation)
    case .p384(let k): Array(k.derRepresentation)
    case .p521(let k): Array(k.derRepresentation)
    }
  }

  /// The canonical PEM: base64 folded at 64 characters, every line (the END line too) ending in `\n`.
  public var canonicalPEM: String {
    let b64 = Data(spkiDER).base64EncodedString()
    var out = "-----BEGIN PUBLIC KEY-----\n"
    var line = ""
    for ch in b64 {
      line.append(ch)
      if line.count == 64 {
        out += line + "\n"
        line = ""
      }
    }
    if !line.isEmpty { out += line + "\n" }
    out += "-----END PUBLIC KEY-----\n"
    return out
  }

  /// The OMS key hint: lowercase hex SHA-256 of `canonicalPEM`.
  public var omsHint: String { Hex.encode(SHA256.hash(data: Array(canonicalPEM.utf8))) }

  /// The curve's name, for messages.
  public var curveName: String {
    switch self {
    case .p256: "P-256"
    case .p384: "P-384"
    case .p521: "P-521"
    }
  }

  /// Verifies a DER ECDSA signature over `message` with the curve's hash. Malformed DER is simply invalid.
  func isValidDERSignature(_ der: [UInt8], for message: [UInt8]) -> Bool {
    switch self {
    case .p256(let k):
      guard let sig = try? P256.Signing.ECDSASignature(derRepresentation: der) else { return false }
      return k.isValidSignature(sig, for: message)
    case .p384(let k):
      guard let sig = try? P384.Signing.ECDSASignature(derRepresentation: der) else { return false }
      return k.isValidSignature(sig, for: message)
    case .p521(let k):
      guard let sig = try? P521.Signing.ECDSASignature(derRepresentation: der) else { return false }
      return k.isValidSignature(sig, for: message)
    }
  }

  public static func == (lhs: BundlePublicKey, rhs: BundlePublicKey) -> Bool { lhs.spkiDER == rhs.spkiDER }
  public func hash(into hasher: inout Hasher) { hasher.combine(spkiDER) }
}
