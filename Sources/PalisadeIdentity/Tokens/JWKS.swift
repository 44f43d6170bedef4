public import Crypto
public import Foundation

/// A public key from a JWKS file (RFC 7517), usable with exactly one JWS algorithm.
public enum TokenKey: Sendable {
  case es256(P256.Signing.PublicKey)
  case es384(P384.Signing.PublicKey)
  case edDSA(Curve25519.Signing.PublicKey)

  /// The JWS `alg` this key verifies.
  public var algorithm: String {
    switch self {
    case .es256: "ES256"
    case .es384: "ES384"
    case .edDSA: "EdDSA"
    }
  }

  /// The key's raw public bytes: two keys with equal `material` and `algorithm` verify the same signatures.
  var material: [UInt8] {
    switch self {
    case .es256(let key): Array(key.rawRepresentation)
    case .es384(let key): Array(key.rawRepresentation)
    case .edDSA(let key): Array(key.rawRepresentation)
    }
  }

  /// Whether `signature` over `message` is valid for this key.
  func isValid(signature: [UInt8], message: [UInt8]) -> Bool {
    switch self {
    case .es256(let key):
      guard let sig = try? P256.Signing.ECDSASignature(rawRepresentation: signature) else { return false }
      return key.isValidSignature(sig, for: message)
    case .es384(let key):
      guard let sig = try? P384.Signing.ECDSASignature(rawRepresentation: signature) else { return false }
      return key.isValidSignature(sig, for: message)
    case .edDSA(let key):
      return key.isValidSignature(signature, for: message)
    }
  }
}

/// A JWKS key set: `kid` → key. Keys of unsupported types are refused at load, not silently dropped, so that an
/// operator learns at once that a rotation did not do what they meant.
public struct JWKS: Sendable {
  public let keys: [String: TokenKey]

  public init(keys: [String: TokenKey]) { self.keys = keys }

  /// Why a JWKS file is unusable.
  public struct LoadError: Error, CustomStringConvertible, Sendable {
    public let description: String
  }

  /// Parses a JWKS document.
  public static func parse(_ data: Data) throws(LoadError) -> JWKS {
    guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
      let list = root["keys"] as? [[String: Any]]
    else { throw LoadError(description: "not a JWKS document (an object with a \"keys\" list)") }
    var keys: [String: TokenKey] = [:]
    for (i, jwk) in list.enumerated() {
      guard let kid = jwk["kid"] as? String, !kid.isEmpty else {
        throw LoadError(description: "keys[\(i)] has no \"kid\"")
      }
      guard keys[kid] == nil else { throw LoadError(description: "kid '\(kid)' appears twice") }
      if let use = jwk["use"] as? String, use != "sig" {
        throw LoadError(description: "kid '\(kid)': \"use\" is '\(use)', expected 'sig'")
      }
      guard jwk["d"] == nil else {
        throw LoadError(description: "kid '\(kid)' holds a private key; publish only public keys")
      }
      let key = try parseKey(jwk, kid: kid)
      if let alg = jwk["alg"] as? String, alg != key.algorithm {
        throw LoadError(description: "kid '\(kid)': \"alg\" \(alg) does not fit its key type (\(key.algorithm))")
      }
      keys[kid] = key
    }
    return JWKS(keys: keys)
  }

  private static func parseKey(_ jwk: [String: Any], kid: String) throws(LoadError) -> TokenKey {
    func coordinate(_ name: String) throws(LoadError) -> [UInt8] {
      guard let text = jwk[name] as? String, let bytes = Base64URL.decode(text) else {
        throw LoadError(description: "kid '\(kid)': \"\(name)\" is missing or not base64url")
      }
      return bytes
    }
    switch (jwk["kty"] as? String, jwk["crv"] as? String) {
    case ("EC", "P-256"):
      let x = try coordinate("x")
      let y = try coordinate("y")
      guard let key = try? P256.Signing.PublicKey(rawRepresentation: x + y) else {
        throw LoadError(description: "kid '\(kid)': not a valid P-256 point")
      }
      return .es256(key)
    case ("EC", "P-384"):
      let x = try coordinate("x")
      let y = try coordinate("y")
      guard let key = try? P384.Signing.PublicKey(rawRepresentation: x + y) else {
        throw LoadError(description: "kid '\(kid)': not a valid P-384 point")
      }
      return .es384(key)
    case ("OKP", "Ed25519"):
      guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: try coordinate("x")) else {
        throw LoadError(description: "kid '\(kid)': not a valid Ed25519 key")
      }
      return .edDSA(key)
    case (let kty, let crv):
      throw LoadError(
        description:
          "kid '\(kid)': unsupported key type \(kty ?? "none")/\(crv ?? "none") (EC P-256, EC P-384, OKP Ed25519)")
    }
  }
}

extension Base64URL {
  /// Decodes base64url with or without padding; `nil` on any other character.
  public static func decode(_ text: some StringProtocol) -> [UInt8]? {
    var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
    guard !s.contains("=") || s.hasSuffix("=") else { return nil }
    s = s.trimmingCharacters(in: CharacterSet(charactersIn: "="))
    while s.count % 4 != 0 { s += "=" }
    guard let data = Data(base64Encoded: s) else { return nil }
    return [UInt8](data)
  }
}
