import Crypto
import Foundation
import Testing

@testable import PalisadeIdentity

/// The verification cache and JWKS rotation: a token whose key was retired must stop working at once, even when
/// its verification was running while the keys were replaced.
@Suite struct TokenCacheTests {
  static let audience = "palisade"
  static let issuer = "https://issuer.test"

  static func issuers(_ key: P256.Signing.PrivateKey) throws -> [TokenVerifier.Issuer] {
    let jwks = try JWKS.parse(
      try JSONSerialization.data(withJSONObject: ["keys": [TokenSigningKey.es256(key).jwk(kid: "k")]]))
    return [TokenVerifier.Issuer(issuer: issuer, kind: .oauth, keys: jwks, requireCertificateBinding: true)]
  }

  @Test func aVerificationThatRacedARotationIsNotCached() throws {
    let old = P256.Signing.PrivateKey()
    let verifier = TokenVerifier(settings: .init(audience: Self.audience), issuers: try Self.issuers(old))
    let identity = PeerIdentity(
      spiffeID: try SPIFFEID(parsing: "spiffe://palisade.test/sa/a"), thumbprint: Array(repeating: 7, count: 32))
    let token = try TokenMinter.mint(
      claims: TokenMinter.claims(
        issuer: Self.issuer, subject: "a", audience: Self.audience, ttl: 300,
        certificateThumbprint: identity.thumbprint),
      key: .es256(old), kid: "k")
    let verified = try verifier.verify(authorization: "Bearer " + token, identity: identity)

    // The keys rotate; the verification made with the old ones lands in the cache only afterwards.
    verifier.replaceIssuers(try Self.issuers(P256.Signing.PrivateKey()))
    verifier.remember(verified, digest: SHA256.hash(data: Array(token.utf8)), now: Date())

    #expect(throws: TokenError.self, "the retired key's token is refused at once") {
      _ = try verifier.verify(authorization: "Bearer " + token, identity: identity)
    }
  }
}
