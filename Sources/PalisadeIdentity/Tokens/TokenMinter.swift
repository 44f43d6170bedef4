public import Crypto
public import Foundation

/// A private key that signs tokens: for the dev/test issuer (`palisade token mint`) and tests. Production tokens
/// come from the organisation's issuer or SPIRE; Palisade only verifies them.
public enum TokenSigningKey: Sendable {
  case es256(P256.Signing.PrivateKey)
  case es384(P384.Signing.PrivateKey)
  case edDSA(Curve25519.Signing.PrivateKey)

  public var algorithm: String {
    switch self {
    case .es256: "ES256"
    case .es384: "ES384"
    case .edDSA: "EdDSA"
    }
  }

  /// Reads a PEM private key (PKCS#8 or SEC1 for EC, PKCS#8 for Ed25519); text around the block is ignored.
  public init(pem text: String) throws {
    switch try PEMText.ecPrivateKey(text) {
    case .p256(let k):
      self = .es256(k)
      return
    case .p384(let k):
      self = .es384(k)
      return
    case .p521: throw JWKS.LoadError(description: "P-521 keys cannot sign tokens (ES512 is not on the allowlist)")
    case nil: break
    }
    let pem = PEMText.soleBlock(text)
    if let k = try? Curve25519.Signing.PrivateKey(pemRepresentation: pem) {
      self = .edDSA(k)
      return
    }
    throw JWKS.LoadError(description: "not a PEM P-256, P-384 or Ed25519 private key")
  }

  func sign(_ message: [UInt8]) throws -> [UInt8] {
    switch self {
    case .es256(let k): Array(try k.signature(for: message).rawRepresentation)
    case .es384(let k): Array(try k.signature(for: message).rawRepresentation)
    case .edDSA(let k): Array(try k.signature(for: message))
    }
  }

  /// The public half as one JWK (RFC 7517) with `kid`.
  public func jwk(kid: String) -> [String: String] {
    switch self {
    case .es256(let k):
      let raw = Array(k.publicKey.rawRepresentation)
      return [
        "kty": "EC", "crv": "P-256", "x": Base64URL.encode(raw[0..<32]), "y": Base64URL.encode(raw[32...]),
        "kid": kid, "alg": "ES256", "use": "sig",
      ]
    case .es384(let k):
      let raw = Array(k.publicKey.rawRepresentation)
      return [
        "kty": "EC", "crv": "P-384", "x": Base64URL.encode(raw[0..<48]), "y": Base64URL.encode(raw[48...]),
        "kid": kid, "alg": "ES384", "use": "sig",
      ]
    case .edDSA(let k):
      return [
        "kty": "OKP", "crv": "Ed25519", "x": Base64URL.encode(Array(k.publicKey.rawRepresentation)), "kid": kid,
        "alg": "EdDSA", "use": "sig",
      ]
    }
  }
}

/// Mints compact JWS tokens (RFC 7515/7519).
public enum TokenMinter {
  /// Signs `claims` with `key` under `kid`. `header` entries override the defaults (`alg`, `typ`, `kid`).
  public static func mint(claims: [String: Any], key: TokenSigningKey, kid: String, header: [String: Any] = [:]) throws
    -> String
  {
    var h: [String: Any] = ["alg": key.algorithm, "typ": "JWT", "kid": kid]
    h.merge(header) { $1 }
    let headerPart = Base64URL.encode(Array(try JSONSerialization.data(withJSONObject: h, options: [.sortedKeys])))
    let payloadPart = Base64URL.encode(
      Array(try JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys])))
    let input = Array("\(headerPart).\(payloadPart)".utf8)
    return "\(headerPart).\(payloadPart).\(Base64URL.encode(try key.sign(input)))"
  }

  /// The usual claims: `iss`, `sub`, `aud`, `iat`, `exp = iat + ttl`, `jti`, optional `scope` and `cnf.x5t#S256`.
  public static func claims(
    issuer: String?, subject: String, audience: String, ttl: TimeInterval, scopes: [String] = [],
    certificateThumbprint: [UInt8]? = nil, now: Date = Date()
  ) -> [String: Any] {
    var c: [String: Any] = [
      "sub": subject, "aud": audience, "iat": Int(now.timeIntervalSince1970),
      "exp": Int(now.timeIntervalSince1970 + ttl), "jti": UUID().uuidString,
    ]
    if let issuer { c["iss"] = issuer }
    if !scopes.isEmpty { c["scope"] = scopes.joined(separator: " ") }
    if let certificateThumbprint { c["cnf"] = ["x5t#S256": Base64URL.encode(certificateThumbprint)] }
    return c
  }
}
