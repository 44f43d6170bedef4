import Crypto
import SwiftASN1
public import X509

/// Who is calling: the SPIFFE ID of the verified client certificate and that certificate's SHA-256 thumbprint.
///
/// Built once per TLS connection and handed to every stage of every call on it. The thumbprint is what
/// RFC 8705 token binding (`cnf.x5t#S256`) compares against.
public struct PeerIdentity: Sendable, Hashable, CustomStringConvertible {
  /// The caller's SPIFFE ID, from the certificate's single URI SAN.
  public let spiffeID: SPIFFEID
  /// SHA-256 of the client certificate's DER encoding (32 bytes).
  public let thumbprint: [UInt8]

  public init(spiffeID: SPIFFEID, thumbprint: [UInt8]) {
    self.spiffeID = spiffeID
    self.thumbprint = thumbprint
  }

  /// The thumbprint as lowercase hex.
  public var thumbprintHex: String { thumbprint.map { String(format2: $0) }.joined() }

  /// The thumbprint in base64url without padding, the form of `cnf.x5t#S256`.
  public var thumbprintBase64URL: String { Base64URL.encode(thumbprint) }

  public var description: String { spiffeID.description }

  /// Why a verified certificate does not yield an identity.
  public enum Failure: Error, Equatable, Sendable, CustomStringConvertible {
    case noClientCertificate
    case noURISAN
    case multipleURISANs(Int)
    case notSPIFFE(SPIFFEID.ParseError)
    case malformedExtensions

    public var description: String {
      switch self {
      case .noClientCertificate: "no client certificate"
      case .noURISAN: "client certificate has no URI SAN"
      case .multipleURISANs(let n): "client certificate has \(n) URI SANs, exactly one is allowed"
      case .notSPIFFE(let why): "client certificate URI SAN is not a valid SPIFFE ID (\(why))"
      case .malformedExtensions: "client certificate extensions could not be parsed"
      }
    }
  }

  /// The identity of `certificate`: exactly one URI SAN, which must be a valid SPIFFE ID.
  public init(certificate: Certificate) throws(Failure) {
    let names: SubjectAlternativeNames?
    do { names = try certificate.extensions.subjectAlternativeNames } catch { throw .malformedExtensions }
    var uris: [String] = []
    for name in names ?? SubjectAlternativeNames() {
      if case .uniformResourceIdentifier(let uri) = name { uris.append(uri) }
    }
    guard !uris.isEmpty else { throw .noURISAN }
    guard uris.count == 1 else { throw .multipleURISANs(uris.count) }
    let id: SPIFFEID
    do { id = try SPIFFEID(parsing: uris[0]) } catch { throw .notSPIFFE(error) }
    var serializer = DER.Serializer()
    do { try serializer.serialize(certificate) } catch { throw .malformedExtensions }
    self.init(spiffeID: id, thumbprint: Array(SHA256.hash(data: serializer.serializedBytes)))
  }
}

extension String {
  fileprivate init(format2 byte: UInt8) {
    let digits: [Character] = Array("0123456789abcdef")
    self = String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
  }
}

/// Base64url without padding (RFC 4648 §5), as JOSE uses it.
public enum Base64URL {
  private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

  /// Encodes `bytes`.
  public static func encode(_ bytes: some Collection<UInt8>) -> String {
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count * 4 + 2) / 3)
    var iterator = bytes.makeIterator()
    while let b0 = iterator.next() {
      let b1 = iterator.next()
      let b2 = iterator.next()
      out.append(alphabet[Int(b0 >> 2)])
      out.append(alphabet[Int((b0 & 0x3) << 4 | (b1 ?? 0) >> 4)])
      if let b1 { out.append(alphabet[Int((b1 & 0xF) << 2 | (b2 ?? 0) >> 6)]) }
      if let b2 { out.append(alphabet[Int(b2 & 0x3F)]) }
    }
    return String(decoding: out, as: UTF8.self)
  }
}
