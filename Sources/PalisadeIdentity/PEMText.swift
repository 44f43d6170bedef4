public import Crypto
import SwiftASN1

/// PEM as real tools write it.
///
/// Two habits of GnuTLS `certtool` that other parsers accept and swift-crypto does not:
/// - a description of the key before the block. RFC 7468 §2 lets text stand outside the encapsulation boundaries,
///   and parsers are to ignore it; swift-crypto's `pemRepresentation` initialisers want the block alone.
/// - an EC private scalar with a leading zero octet (49 octets for P-384 where RFC 5915 says 48). OpenSSL and
///   BoringSSL read such keys; swift-crypto refuses them.
public enum PEMText {
  /// The one PEM block in `text`, in canonical form, with any text around it dropped. Text that does not hold
  /// exactly one well-formed block comes back unchanged, so the caller's own parser reports what is wrong.
  public static func soleBlock(_ text: String) -> String {
    guard let document = try? PEMDocument(pemString: text) else { return text }
    return document.pemString
  }

  /// An ECDSA private key on a NIST curve.
  public enum ECPrivateKey: Sendable {
    case p256(P256.Signing.PrivateKey)
    case p384(P384.Signing.PrivateKey)
    case p521(P521.Signing.PrivateKey)
  }

  /// Why an EC private key was refused.
  public struct KeyError: Error, CustomStringConvertible, Sendable {
    public let description: String
  }

  /// Reads a PEM EC private key, SEC1 (`EC PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY` with `id-ecPublicKey`), text
  /// around the block ignored. Returns nil when the text holds no such key (another key type, or not one block),
  /// so the caller can try its other formats; throws when it is an EC key that is malformed or inconsistent (the
  /// public key it carries must be the one its private scalar yields).
  public static func ecPrivateKey(_ text: String) throws(KeyError) -> ECPrivateKey? {
    guard let document = try? PEMDocument(pemString: text) else { return nil }
    let sec1: ArraySlice<UInt8>
    var curveFromWrapper: ASN1ObjectIdentifier?
    switch document.discriminator {
    case "EC PRIVATE KEY":
      sec1 = document.derBytes[...]
    case "PRIVATE KEY":
      guard let (curve, inner) = try pkcs8EC(document.derBytes) else { return nil }
      sec1 = inner
      curveFromWrapper = curve
    default:
      return nil
    }
    let key = try parseSEC1(sec1)
    guard let curve = key.curve ?? curveFromWrapper, curveFromWrapper == nil || curveFromWrapper == curve else {
      throw KeyError(description: "EC private key: the curve is missing or named twice differently")
    }
    return try build(curve: curve, scalar: key.scalar, publicKey: key.publicKey)
  }

  // RFC 5480 and SEC 2 object identifiers.
  static let idECPublicKey: ASN1ObjectIdentifier = [1, 2, 840, 10045, 2, 1]
  static let secp256r1: ASN1ObjectIdentifier = [1, 2, 840, 10045, 3, 1, 7]
  static let secp384r1: ASN1ObjectIdentifier = [1, 3, 132, 0, 34]
  static let secp521r1: ASN1ObjectIdentifier = [1, 3, 132, 0, 35]

  /// PKCS#8 `PrivateKeyInfo`: the curve and the inner SEC1 bytes, or nil when the algorithm is not EC.
  static func pkcs8EC(_ der: [UInt8]) throws(KeyError) -> (ASN1ObjectIdentifier, ArraySlice<UInt8>)? {
    do {
      return try DER.sequence(try DER.parse(der), identifier: .sequence) { nodes in
        _ = try Int(derEncoded: &nodes)
        let algorithm = try DER.sequence(of: ASN1Any.self, identifier: .sequence, nodes: &nodes)
        guard algorithm.count == 2, let oid = try? ASN1ObjectIdentifier(asn1Any: algorithm[0]), oid == idECPublicKey,
          let curve = try? ASN1ObjectIdentifier(asn1Any: algorithm[1])
        else {
          while nodes.next() != nil {}
          return nil
        }
        let inner = try ASN1OctetString(derEncoded: &nodes)
        while nodes.next() != nil {}  // attributes, v2 public key: the inner SEC1 carries what we check
        return (curve, inner.bytes)
      }
    } catch {
      throw KeyError(description: "PKCS#8 private key: malformed DER")
    }
  }

  /// RFC 5915 `ECPrivateKey`: version 1, the private octets, optional curve and public key.
  static func parseSEC1(_ der: ArraySlice<UInt8>) throws(KeyError) -> (
    scalar: ArraySlice<UInt8>, curve: ASN1ObjectIdentifier?, publicKey: ArraySlice<UInt8>?
  ) {
    do {
      return try DER.sequence(try DER.parse(der), identifier: .sequence) { nodes in
        guard try Int(derEncoded: &nodes) == 1 else { throw KeyError(description: "EC private key: version is not 1") }
        let scalar = try ASN1OctetString(derEncoded: &nodes).bytes
        let curve = try DER.optionalExplicitlyTagged(&nodes, tagNumber: 0, tagClass: .contextSpecific) {
          try ASN1ObjectIdentifier(derEncoded: $0)
        }
        let publicKey = try DER.optionalExplicitlyTagged(&nodes, tagNumber: 1, tagClass: .contextSpecific) {
          try ASN1BitString(derEncoded: $0)
        }
        return (scalar, curve, publicKey?.bytes)
      }
    } catch let error as KeyError {
      throw error
    } catch {
      throw KeyError(description: "EC private key: malformed DER")
    }
  }

  static func build(curve: ASN1ObjectIdentifier, scalar: ArraySlice<UInt8>, publicKey: ArraySlice<UInt8>?)
    throws(KeyError) -> ECPrivateKey
  {
    let size: Int
    switch curve {
    case secp256r1: size = 32
    case secp384r1: size = 48
    case secp521r1: size = 66
    default: throw KeyError(description: "EC private key: curve \(curve) is not P-256, P-384 or P-521")
    }
    // Leading zero octets carry no value (certtool writes one); anything longer than the curve is malformed.
    let significant = scalar.drop(while: { $0 == 0 })
    guard significant.count <= size, !significant.isEmpty else {
      throw KeyError(description: "EC private key: the private scalar does not fit the curve")
    }
    let raw = [UInt8](repeating: 0, count: size - significant.count) + significant
    let key: ECPrivateKey
    let derived: (uncompressed: [UInt8], compressed: [UInt8])
    do {
      switch size {
      case 32:
        let k = try P256.Signing.PrivateKey(rawRepresentation: raw)
        key = .p256(k)
        derived = (Array(k.publicKey.x963Representation), Array(k.publicKey.compressedRepresentation))
      case 48:
        let k = try P384.Signing.PrivateKey(rawRepresentation: raw)
        key = .p384(k)
        derived = (Array(k.publicKey.x963Representation), Array(k.publicKey.compressedRepresentation))
      default:
        let k = try P521.Signing.PrivateKey(rawRepresentation: raw)
        key = .p521(k)
        derived = (Array(k.publicKey.x963Representation), Array(k.publicKey.compressedRepresentation))
      }
    } catch {
      throw KeyError(description: "EC private key: the private scalar is not valid for the curve")
    }
    if let publicKey, !publicKey.elementsEqual(derived.uncompressed), !publicKey.elementsEqual(derived.compressed) {
      throw KeyError(description: "EC private key: the public key it carries does not match its private scalar")
    }
    return key
  }
}
