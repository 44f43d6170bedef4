import Crypto
import Foundation
import PalisadeTestSupport
import SwiftASN1
import Testing
import X509

@testable import PalisadeIdentity

@Suite struct SPIFFEIDTests {
  @Test(arguments: [
    "spiffe://example.org", "spiffe://example.org/ns/prod/sa/caller", "spiffe://a-b_c.1/x.y-z_0",
  ])
  func validIDs(_ s: String) throws {
    #expect(try SPIFFEID(parsing: s).description == s)
  }

  @Test(arguments: [
    ("https://example.org/x", SPIFFEID.ParseError.notSPIFFEScheme),
    ("spiffe:///x", .emptyTrustDomain),
    ("spiffe://Example.org/x", .invalidTrustDomainCharacter),
    ("spiffe://example.org:443/x", .invalidTrustDomainCharacter),
    ("spiffe://user@example.org/x", .invalidTrustDomainCharacter),
    ("spiffe://example.org/a//b", .emptyPathSegment),
    ("spiffe://example.org/a/../b", .dotPathSegment),
    ("spiffe://example.org/a/", .trailingSlash),
    ("spiffe://example.org/a?b", .invalidPathCharacter),
    ("spiffe://example.org/a#b", .invalidPathCharacter),
    ("spiffe://example.org/%41", .invalidPathCharacter),
  ])
  func invalidIDs(_ s: String, _ expected: SPIFFEID.ParseError) {
    #expect(throws: expected) { try SPIFFEID(parsing: s) }
  }

  @Test func prefixMatchingIsBySegment() throws {
    let prefix = try SPIFFEID(parsing: "spiffe://td/ns/prod")
    #expect(try SPIFFEID(parsing: "spiffe://td/ns/prod/sa/x").isWithin(prefix))
    #expect(try SPIFFEID(parsing: "spiffe://td/ns/prod").isWithin(prefix))
    #expect(try !SPIFFEID(parsing: "spiffe://td/ns/production").isWithin(prefix))
    #expect(try !SPIFFEID(parsing: "spiffe://other/ns/prod/x").isWithin(prefix))
  }
}

@Suite struct PeerIdentityTests {
  let pki: TestPKI
  init() throws { pki = try TestPKI() }

  @Test func singleSPIFFESANYieldsIdentityAndThumbprint() throws {
    let leaf = try pki.issue(commonName: "a", sans: [TestPKI.spiffe("spiffe://td/sa/a"), .dnsName("a.example")])
    let identity = try PeerIdentity(certificate: leaf.certificate)
    #expect(identity.spiffeID.description == "spiffe://td/sa/a")
    var serializer = DER.Serializer()
    try serializer.serialize(leaf.certificate)
    #expect(identity.thumbprint == Array(SHA256.hash(data: serializer.serializedBytes)))
    #expect(identity.thumbprintBase64URL.count == 43)
  }

  @Test func noURISANIsRefused() throws {
    let leaf = try pki.issue(commonName: "a", sans: [.dnsName("a.example")])
    #expect(throws: PeerIdentity.Failure.noURISAN) { try PeerIdentity(certificate: leaf.certificate) }
    let bare = try pki.issue(commonName: "b", sans: [])
    #expect(throws: PeerIdentity.Failure.noURISAN) { try PeerIdentity(certificate: bare.certificate) }
  }

  @Test func twoURISANsAreRefused() throws {
    let leaf = try pki.issue(commonName: "a", sans: [TestPKI.spiffe("spiffe://td/a"), TestPKI.spiffe("spiffe://td/b")])
    #expect(throws: PeerIdentity.Failure.multipleURISANs(2)) { try PeerIdentity(certificate: leaf.certificate) }
  }

  @Test func nonSPIFFEURIIsRefused() throws {
    let leaf = try pki.issue(commonName: "a", sans: [.uniformResourceIdentifier("https://td/a")])
    #expect(throws: PeerIdentity.Failure.notSPIFFE(.notSPIFFEScheme)) {
      try PeerIdentity(certificate: leaf.certificate)
    }
  }

  @Test func base64URLMatchesRFC4648() {
    #expect(Base64URL.encode(Array("f".utf8)) == "Zg")
    #expect(Base64URL.encode(Array("fo".utf8)) == "Zm8")
    #expect(Base64URL.encode(Array("foo".utf8)) == "Zm9v")
    #expect(Base64URL.encode([0xfb, 0xff]) == "-_8")
  }
}

@Suite struct ClientCertificateVerifierTests {
  let pki: TestPKI
  let verifier: ClientCertificateVerifier
  init() throws {
    pki = try TestPKI()
    verifier = ClientCertificateVerifier(roots: [pki.root.certificate])
  }

  func der(_ certs: Certificate...) throws -> [[UInt8]] {
    try certs.map { c in
      var s = DER.Serializer()
      try s.serialize(c)
      return s.serializedBytes
    }
  }

  func isTrusted(_ outcome: ClientCertificateVerifier.Outcome) -> Bool {
    if case .trusted = outcome { return true }
    return false
  }

  @Test func chainToTrustedRootIsAccepted() async throws {
    let leaf = try pki.issue(commonName: "a", sans: [TestPKI.spiffe("spiffe://td/a")])
    #expect(isTrusted(await verifier.verify(derChain: try der(leaf.certificate, pki.intermediate.certificate))))
  }

  @Test func missingIntermediateIsRefused() async throws {
    let leaf = try pki.issue(commonName: "a", sans: [TestPKI.spiffe("spiffe://td/a")])
    #expect(!isTrusted(await verifier.verify(derChain: try der(leaf.certificate))))
  }

  @Test func unrelatedCAIsRefused() async throws {
    let leaf = try pki.issue(commonName: "a", issuer: pki.rogueRoot, sans: [TestPKI.spiffe("spiffe://td/a")])
    #expect(!isTrusted(await verifier.verify(derChain: try der(leaf.certificate))))
  }

  @Test func expiredAndNotYetValidAreRefused() async throws {
    let expired = try pki.issue(
      commonName: "a", sans: [TestPKI.spiffe("spiffe://td/a")], notBefore: Date().addingTimeInterval(-7200),
      notAfter: Date().addingTimeInterval(-60))
    #expect(!isTrusted(await verifier.verify(derChain: try der(expired.certificate, pki.intermediate.certificate))))
    let future = try pki.issue(
      commonName: "a", sans: [TestPKI.spiffe("spiffe://td/a")], notBefore: Date().addingTimeInterval(3600),
      notAfter: Date().addingTimeInterval(7200))
    #expect(!isTrusted(await verifier.verify(derChain: try der(future.certificate, pki.intermediate.certificate))))
  }

  @Test func serverCertificateCannotActAsClient() async throws {
    let leaf = try pki.issue(commonName: "a", sans: [TestPKI.spiffe("spiffe://td/a")], usage: .serverAuth)
    #expect(!isTrusted(await verifier.verify(derChain: try der(leaf.certificate, pki.intermediate.certificate))))
    let noEKU = try pki.issue(commonName: "b", sans: [TestPKI.spiffe("spiffe://td/b")], usage: .none)
    #expect(!isTrusted(await verifier.verify(derChain: try der(noEKU.certificate, pki.intermediate.certificate))))
  }

  @Test func caCertificateCannotActAsClient() async throws {
    let leaf = try pki.issue(commonName: "a", sans: [TestPKI.spiffe("spiffe://td/a")], isCA: true)
    #expect(!isTrusted(await verifier.verify(derChain: try der(leaf.certificate, pki.intermediate.certificate))))
  }

  @Test func rootsRotateAtRuntime() async throws {
    let leaf = try pki.issue(commonName: "a", issuer: pki.rogueRoot, sans: [TestPKI.spiffe("spiffe://td/a")])
    #expect(!isTrusted(await verifier.verify(derChain: try der(leaf.certificate))))
    verifier.replaceRoots([pki.root.certificate, pki.rogueRoot.certificate])
    #expect(isTrusted(await verifier.verify(derChain: try der(leaf.certificate))))
  }

  @Test func groupReadableKeyFileIsRefused() throws {
    // Readable by others, or writable by the group: refused.
    for mode in [0o644, 0o660, 0o604] {
      let path = try pki.write("loose-\(mode).key", pki.root.keyPEM, mode: mode)
      #expect(throws: PEMFileError.self) { try PEMFiles.checkPrivateKeyPermissions(at: path) }
    }
    // Group-readable for a group that is not this process's own: refused.
    let foreign = try pki.write("foreign.key", pki.root.keyPEM, mode: 0o640)
    #expect(chown(foreign, geteuid(), getegid() &+ 4242) == 0 || geteuid() != 0)
    if geteuid() == 0 { #expect(throws: PEMFileError.self) { try PEMFiles.checkPrivateKeyPermissions(at: foreign) } }
    // Kubernetes' Secret mount for the pod's fsGroup (0440, our group): accepted, as is 0600.
    let secret = try pki.write("secret.key", pki.root.keyPEM, mode: 0o440)
    try PEMFiles.checkPrivateKeyPermissions(at: secret)
    let tight = try pki.write("tight.key", pki.root.keyPEM, mode: 0o600)
    try PEMFiles.checkPrivateKeyPermissions(at: tight)
  }
}
