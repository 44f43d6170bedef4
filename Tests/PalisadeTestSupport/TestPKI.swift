import Crypto
import Foundation
import SwiftASN1
import X509
import PalisadeIdentity

/// A PKI made in-process for tests: a root and intermediate CA, server and client leaves with whatever SANs,
/// validity and usages a test needs, and an unrelated CA. Files are written with the modes the server demands.
public final class TestPKI: @unchecked Sendable {
  public struct Issued: Sendable {
    public let certificate: Certificate
    public let key: P256.Signing.PrivateKey
    /// PEM of the leaf followed by its issuing intermediate (if any).
    public let chainPEM: String
    public var keyPEM: String { key.pemRepresentation }
  }

  public static let audience = "palisade-test"
  public static let issuerName = "https://issuer.palisade.test"
  /// The test token issuer's signing key (kid `test-1`).
  public let issuerKey = P256.Signing.PrivateKey()
  public let directory: URL
  public let root: Issued
  public let intermediate: Issued
  public let rogueRoot: Issued

  public init() throws {
    directory = FileManager.default.temporaryDirectory.appendingPathComponent("palisade-pki-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    root = try Self.makeCA(name: "Test Root", issuer: nil)
    intermediate = try Self.makeCA(name: "Test Intermediate", issuer: root)
    rogueRoot = try Self.makeCA(name: "Rogue Root", issuer: nil)
    // The server's client-CA bundle, and (separately, so that tests can rotate one without the other) the CA
    // clients use to verify the server.
    try write("ca-bundle.pem", Self.pem(root.certificate))
    try write("server-ca.pem", Self.pem(root.certificate))
    let server = try issue(
      commonName: "localhost", issuer: intermediate,
      sans: [.dnsName("localhost"), .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1]))],
      usage: .serverAuth)
    try write("server.pem", server.chainPEM)
    try write("server.key", server.keyPEM, mode: 0o600)
  }

  public func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

  /// The JWKS publishing ``issuerKey`` under kid `test-1`.
  public func jwksJSON(kid: String = "test-1") throws -> String {
    let jwk = TokenSigningKey.es256(issuerKey).jwk(kid: kid)
    return String(decoding: try JSONSerialization.data(withJSONObject: ["keys": [jwk]]), as: UTF8.self)
  }

  /// A token for `client`, bound to its certificate, signed by ``issuerKey``.
  public func token(
    for client: Issued, subject: String? = nil, scopes: [String] = [], ttl: TimeInterval = 300,
    claims extra: [String: Any] = [:], header: [String: Any] = [:]
  ) throws -> String {
    let identity = try PeerIdentity(certificate: client.certificate)
    var claims = TokenMinter.claims(
      issuer: Self.issuerName, subject: subject ?? identity.spiffeID.description, audience: Self.audience, ttl: ttl,
      scopes: scopes, certificateThumbprint: identity.thumbprint)
    claims.merge(extra) { $1 }
    return try TokenMinter.mint(claims: claims, key: .es256(issuerKey), kid: "test-1", header: header)
  }

  /// Writes `contents` to a file in the PKI directory.
  @discardableResult
  public func write(_ name: String, _ contents: String, mode: Int = 0o644) throws -> String {
    let url = directory.appendingPathComponent(name)
    try Data(contents.utf8).write(to: url)
    try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: url.path)
    return url.path
  }

  public enum Usage { case clientAuth, serverAuth, none }

  /// Issues a leaf. Defaults: from the intermediate, valid from an hour ago for a day, clientAuth.
  public func issue(
    commonName: String, issuer: Issued? = nil, sans: [GeneralName], usage: Usage = .clientAuth,
    notBefore: Date = Date().addingTimeInterval(-3600), notAfter: Date = Date().addingTimeInterval(86_400),
    isCA: Bool = false
  ) throws -> Issued {
    let issuer = issuer ?? intermediate
    let key = P256.Signing.PrivateKey()
    let eku: ExtendedKeyUsage? =
      switch usage {
      case .clientAuth: try ExtendedKeyUsage([.clientAuth])
      case .serverAuth: try ExtendedKeyUsage([.serverAuth])
      case .none: nil
      }
    let certificate = try Certificate(
      version: .v3, serialNumber: Certificate.SerialNumber(),
      publicKey: Certificate.PublicKey(key.publicKey), notValidBefore: notBefore, notValidAfter: notAfter,
      issuer: issuer.certificate.subject, subject: try DistinguishedName { CommonName(commonName) },
      signatureAlgorithm: .ecdsaWithSHA256,
      extensions: try Certificate.Extensions {
        Critical(
          isCA ? BasicConstraints.isCertificateAuthority(maxPathLength: nil) : BasicConstraints.notCertificateAuthority)
        Critical(KeyUsage(digitalSignature: true))
        if !sans.isEmpty { SubjectAlternativeNames(sans) }
        if let eku { eku }
      },
      issuerPrivateKey: Certificate.PrivateKey(issuer.key))
    var chain = Self.pem(certificate)
    if issuer.certificate.issuer != issuer.certificate.subject { chain += Self.pem(issuer.certificate) }
    return Issued(certificate: certificate, key: key, chainPEM: chain)
  }

  /// Issues a client leaf and writes `<name>.pem` / `<name>.key`; returns their paths.
  public func client(
    _ name: String, sans: [GeneralName], issuer: Issued? = nil, usage: Usage = .clientAuth,
    notBefore: Date = Date().addingTimeInterval(-3600), notAfter: Date = Date().addingTimeInterval(86_400)
  ) throws -> (cert: String, key: String, issued: Issued) {
    let issued = try issue(
      commonName: name, issuer: issuer, sans: sans, usage: usage, notBefore: notBefore, notAfter: notAfter)
    let cert = try write("\(name).pem", issued.chainPEM)
    let key = try write("\(name).key", issued.keyPEM, mode: 0o600)
    return (cert, key, issued)
  }

  public static func makeCA(
    name: String, issuer: Issued?, keyUsage: KeyUsage = KeyUsage(keyCertSign: true, cRLSign: true)
  ) throws -> Issued {
    let key = P256.Signing.PrivateKey()
    let subject = try DistinguishedName { CommonName(name) }
    let certificate = try Certificate(
      version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: Certificate.PublicKey(key.publicKey),
      notValidBefore: Date().addingTimeInterval(-7200), notValidAfter: Date().addingTimeInterval(7 * 86_400),
      issuer: issuer?.certificate.subject ?? subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
      extensions: try Certificate.Extensions {
        Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
        Critical(keyUsage)
      },
      issuerPrivateKey: Certificate.PrivateKey(issuer?.key ?? key))
    return Issued(certificate: certificate, key: key, chainPEM: pem(certificate))
  }

  public static func pem(_ certificate: Certificate) -> String {
    ((try? certificate.serializeAsPEM().pemString) ?? "") + "\n"
  }

  public static func spiffe(_ id: String) -> GeneralName { .uniformResourceIdentifier(id) }

  deinit { try? FileManager.default.removeItem(at: directory) }
}
