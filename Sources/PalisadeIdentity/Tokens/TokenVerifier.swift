import Crypto
public import Foundation
import Synchronization

/// Checks `authorization: Bearer` JWTs: signature from a configured JWKS chosen by `kid`, algorithm allowlist,
/// `typ`, issuer, audience, time claims with bounded leeway, a maximum lifetime, and RFC 8705 certificate binding.
///
/// Keys are never fetched from anything a token names (`jku`, `x5u`, `jwk` and `x5c` are ignored). Verified
/// tokens are cached by their SHA-256 until they expire, so the steady-state cost is a hash and a lookup; the
/// binding to the caller's certificate is checked on every call, cached or not.
public final class TokenVerifier: Sendable {
  /// How tokens from one issuer are trusted.
  public struct Issuer: Sendable {
    public enum Kind: String, Sendable {
      /// An OAuth-style issuer: `sub` is any principal name; binding via `cnf.x5t#S256`.
      case oauth
      /// A SPIFFE JWT-SVID issuer: `sub` must equal the client certificate's SPIFFE ID.
      case spiffe
    }
    /// The `iss` value. For SPIFFE issuers tokens may omit `iss`; then `trustDomain` selects the issuer.
    public var issuer: String
    public var kind: Kind
    public var keys: JWKS
    /// For SPIFFE issuers: the trust domain whose JWT-SVIDs this issuer signs.
    public var trustDomain: String?
    /// Whether `cnf.x5t#S256` must match the client certificate (RFC 8705).
    public var requireCertificateBinding: Bool

    public init(issuer: String, kind: Kind, keys: JWKS, trustDomain: String? = nil, requireCertificateBinding: Bool) {
      self.issuer = issuer
      self.kind = kind
      self.keys = keys
      self.trustDomain = trustDomain
      self.requireCertificateBinding = requireCertificateBinding
    }
  }

  public struct Settings: Sendable {
    public var audience: String
    public var algorithms: Set<String>
    public var types: Set<String>
    public var leewaySeconds: Int
    public var maxLifetimeSeconds: Int
    public var maxTokenBytes: Int
    public var cacheEntries: Int

    public init(
      audience: String, algorithms: Set<String> = ["ES256", "ES384", "EdDSA"], types: Set<String> = ["JWT", "at+jwt"],
      leewaySeconds: Int = 30, maxLifetimeSeconds: Int = 900, maxTokenBytes: Int = 8192, cacheEntries: Int = 10_000
    ) {
      self.audience = audience
      self.algorithms = algorithms
      self.types = types
      self.leewaySeconds = leewaySeconds
      self.maxLifetimeSeconds = maxLifetimeSeconds
      self.maxTokenBytes = maxTokenBytes
      self.cacheEntries = cacheEntries
    }

    /// Algorithms Palisade never accepts, whatever the configuration says.
    public static let forbiddenAlgorithms: Set<String> = ["none", "HS256", "HS384", "HS512"]
    /// Algorithms Palisade can verify.
    public static let supportedAlgorithms: Set<String> = ["ES256", "ES384", "EdDSA"]
  }

  /// A token that passed every check.
  public struct Verified: Sendable {
    public let subject: String
    public let issuer: String
    public let scopes: [String]
    public let tokenID: String?
    public let expiresAt: Date
    let binding: [UInt8]?
    let spiffeSubject: Bool
    /// The key that verified the signature, so that a long-lived stream can ask whether it is still trusted.
    let keyID: String
    let keyMaterial: [UInt8]
    /// The issuer set it was verified against (see ``TokenVerifier/revalidate(_:now:)``).
    let generation: UInt64
  }

  private struct State: Sendable {
    var issuers: [Issuer]
    var cache: [SHA256Digest: Verified] = [:]
    /// Bumped by every ``replaceIssuers(_:)``: while it is unchanged, every key that verified a token is still there.
    var generation: UInt64 = 0
  }

  public let settings: Settings
  private let state: Mutex<State>

  public init(settings: Settings, issuers: [Issuer]) {
    self.settings = settings
    self.state = Mutex(State(issuers: issuers))
  }

  /// Swaps the issuers (a JWKS rotation); cached verifications are dropped so retired keys stop working at once.
  public func replaceIssuers(_ issuers: [Issuer]) {
    state.withLock {
      $0.issuers = issuers
      $0.cache.removeAll()
      $0.generation &+= 1
    }
  }

  /// Verifies the `authorization` header value for a caller with `identity`.
  public func verify(authorization: String?, identity: PeerIdentity, now: Date = Date()) throws(TokenError) -> Verified
  {
    guard let header = authorization else { throw .missing }
    guard header.utf8.count <= settings.maxTokenBytes + 7 else { throw .oversized }
    guard header.hasPrefix("Bearer ") else { throw .malformed("not a Bearer credential") }
    let token = header.dropFirst("Bearer ".count)
    let digest = SHA256.hash(data: Array(token.utf8))
    if let cached = state.withLock({ s in s.cache[digest].flatMap { $0.generation == s.generation ? $0 : nil } }) {
      try checkLive(cached, now: now)
      try checkBinding(cached, identity: identity)
      return cached
    }
    let verified = try verifyUncached(token, identity: identity, now: now)
    remember(verified, digest: digest, now: now)
    return verified
  }

  /// Caches a verification, unless the issuers were replaced while it ran: it was made with keys that may be
  /// retired now, and a cached copy would keep the token working until it expires.
  func remember(_ verified: Verified, digest: SHA256Digest, now: Date) {
    state.withLock { s in
      guard verified.generation == s.generation else { return }
      if s.cache.count >= settings.cacheEntries {
        s.cache = s.cache.filter { $0.value.expiresAt > now }
        if s.cache.count >= settings.cacheEntries { s.cache.removeAll() }
      }
      s.cache[digest] = verified
    }
  }

  /// Re-checks a token that was verified earlier, for calls that outlive a moment (streams): it must not have
  /// expired (beyond the leeway), and the key that signed it must still be in its issuer's JWKS (a rotation that
  /// retires the key ends the stream as it would refuse a new call).
  public func revalidate(_ token: Verified, now: Date = Date()) throws(TokenError) {
    try checkLive(token, now: now)
    let (generation, issuers) = state.withLock { ($0.generation, $0.issuers) }
    // Unchanged issuers: the key is still trusted, no need to compare it (getting a key's bytes costs EC math).
    if generation == token.generation { return }
    let trusted = issuers.contains { issuer in
      issuer.issuer == token.issuer && issuer.keys.keys[token.keyID].map { $0.material == token.keyMaterial } == true
    }
    guard trusted else { throw .keyRetired }
  }

  private func checkLive(_ token: Verified, now: Date) throws(TokenError) {
    if now.timeIntervalSince(token.expiresAt) > Double(settings.leewaySeconds) { throw .expired }
  }

  private func checkBinding(_ token: Verified, identity: PeerIdentity) throws(TokenError) {
    if let binding = token.binding, !constantTimeEqual(binding, identity.thumbprint) { throw .bindingMismatch }
    if token.spiffeSubject, !constantTimeEqual(Array(token.subject.utf8), Array(identity.spiffeID.description.utf8)) {
      throw .subjectMismatch
    }
  }

  private func verifyUncached(_ token: Substring, identity: PeerIdentity, now: Date) throws(TokenError) -> Verified {
    let parts = token.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 3 else { throw .malformed("not three dot-separated parts") }
    guard let headerBytes = Base64URL.decode(parts[0]), let payloadBytes = Base64URL.decode(parts[1]),
      let signature = Base64URL.decode(parts[2])
    else { throw .malformed("bad base64url") }
    guard let header = try? JSONSerialization.jsonObject(with: Data(headerBytes)) as? [String: Any],
      let claims = try? JSONSerialization.jsonObject(with: Data(payloadBytes)) as? [String: Any]
    else { throw .malformed("header or payload is not a JSON object") }

    guard let alg = header["alg"] as? String else { throw .malformed("no alg") }
    guard !Settings.forbiddenAlgorithms.contains(alg), settings.algorithms.contains(alg) else {
      throw .algorithmNotAllowed(alg)
    }
    guard let typ = header["typ"] as? String, settings.types.contains(typ) else {
      throw .wrongType(header["typ"] as? String)
    }
    if header["crit"] != nil { throw .malformed("unsupported critical header") }
    guard let kid = header["kid"] as? String else { throw .malformed("no kid") }

    let (issuers, generation) = state.withLock { ($0.issuers, $0.generation) }
    let iss = claims["iss"] as? String
    let sub = claims["sub"] as? String
    let issuer: Issuer?
    if let iss {
      issuer = issuers.first { $0.issuer == iss }
    } else if let sub, let id = try? SPIFFEID(parsing: sub) {
      issuer = issuers.first { $0.kind == .spiffe && $0.trustDomain == id.trustDomain }
    } else {
      issuer = nil
    }
    guard let issuer else { throw .unknownIssuer(iss) }
    guard let key = issuer.keys.keys[kid] else { throw .unknownKey(kid) }
    guard key.algorithm == alg else { throw .algorithmNotAllowed(alg) }
    let signingInput = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
    guard key.isValid(signature: signature, message: signingInput) else { throw .badSignature }

    // Claims, only now that they are authentic.
    let audiences: [String] =
      if let a = claims["aud"] as? String { [a] } else { (claims["aud"] as? [Any])?.compactMap { $0 as? String } ?? [] }
    guard audiences.contains(settings.audience) else { throw .wrongAudience }
    // Time claims are range-checked before any arithmetic: a signed `exp: 1e300` must be a refusal, not a trap.
    guard let exp = try Self.numericDate(claims["exp"], name: "exp") else { throw .malformed("no exp") }
    guard let iat = try Self.numericDate(claims["iat"], name: "iat") else { throw .malformed("no iat") }
    let nbf = try Self.numericDate(claims["nbf"], name: "nbf")
    let leeway = Double(settings.leewaySeconds)
    let t = now.timeIntervalSince1970
    if t > exp + leeway { throw .expired }
    if iat > t + leeway { throw .issuedInFuture }
    if let nbf, nbf > t + leeway { throw .notYetValid }
    if exp < iat { throw .malformed("exp before iat") }
    let lifetime = exp - iat
    if lifetime > Double(settings.maxLifetimeSeconds) { throw .lifetimeTooLong(Int(lifetime.rounded(.up))) }
    guard let sub, !sub.isEmpty else { throw .malformed("no sub") }

    var binding: [UInt8]?
    if let cnf = claims["cnf"] as? [String: Any], let x5t = cnf["x5t#S256"] as? String {
      guard let bytes = Base64URL.decode(x5t), bytes.count == 32 else { throw .malformed("bad cnf.x5t#S256") }
      binding = bytes
    } else if issuer.requireCertificateBinding {
      throw .bindingMissing
    }
    let scopes: [String] =
      if let s = claims["scope"] as? String { s.split(separator: " ").map(String.init) } else {
        (claims["scp"] as? [Any])?.compactMap { $0 as? String } ?? []
      }
    let verified = Verified(
      subject: sub, issuer: issuer.issuer, scopes: scopes, tokenID: claims["jti"] as? String,
      expiresAt: Date(timeIntervalSince1970: exp), binding: binding, spiffeSubject: issuer.kind == .spiffe,
      keyID: kid, keyMaterial: key.material, generation: generation)
    try checkBinding(verified, identity: identity)
    return verified
  }
}

extension TokenVerifier {
  /// The latest NumericDate accepted (9999-12-31T23:59:59Z); anything later is a malformed token.
  static let maxNumericDate = 253_402_300_799.0

  /// A JWT NumericDate claim (RFC 7519 §2): a finite JSON number of seconds in [0, 9999-12-31]. Absent: nil.
  /// Strings, non-finite and out-of-range values are malformed, so no later arithmetic can overflow.
  static func numericDate(_ value: Any?, name: String) throws(TokenError) -> Double? {
    guard let value else { return nil }
    guard let number = value as? NSNumber else { throw .malformed("\(name) is not a number") }
    let seconds = number.doubleValue
    guard seconds.isFinite, seconds >= 0, seconds <= maxNumericDate else {
      throw .malformed("\(name) is out of range")
    }
    return seconds
  }
}

/// Why a token was refused. Logged and audited; the caller only ever sees a generic UNAUTHENTICATED.
public enum TokenError: Error, Equatable, Sendable, CustomStringConvertible {
  case missing, oversized
  case malformed(String)
  case algorithmNotAllowed(String)
  case wrongType(String?)
  case unknownIssuer(String?)
  case unknownKey(String)
  case badSignature, wrongAudience, expired, notYetValid, issuedInFuture
  case lifetimeTooLong(Int)
  case bindingMissing, bindingMismatch, subjectMismatch, keyRetired

  public var description: String {
    switch self {
    case .missing: "no authorization header"
    case .oversized: "token too large"
    case .malformed(let why): "malformed token: \(why)"
    case .algorithmNotAllowed(let alg): "algorithm \(alg.prefix(16)) not allowed"
    case .wrongType(let typ): "typ \(typ.map { String($0.prefix(32)) } ?? "missing") not allowed"
    case .unknownIssuer(let iss): "issuer \(iss.map { String($0.prefix(64)) } ?? "missing") not configured"
    case .unknownKey(let kid): "kid \(kid.prefix(64)) not in the issuer's JWKS"
    case .badSignature: "signature invalid"
    case .wrongAudience: "audience does not include this server"
    case .expired: "token expired"
    case .notYetValid: "token not yet valid (nbf)"
    case .issuedInFuture: "token issued in the future (iat)"
    case .lifetimeTooLong(let s): "token lifetime \(s)s exceeds the maximum"
    case .bindingMissing: "token is not bound to a certificate (no cnf.x5t#S256)"
    case .bindingMismatch: "token is bound to another certificate"
    case .subjectMismatch: "JWT-SVID subject differs from the certificate's SPIFFE ID"
    case .keyRetired: "the key that signed the token is no longer trusted"
    }
  }

  /// A short label for metrics.
  public var label: String {
    switch self {
    case .missing: "missing"
    case .oversized: "oversized"
    case .malformed: "malformed"
    case .algorithmNotAllowed: "algorithm"
    case .wrongType: "type"
    case .unknownIssuer: "issuer"
    case .unknownKey: "kid"
    case .badSignature: "signature"
    case .wrongAudience: "audience"
    case .expired: "expired"
    case .notYetValid: "nbf"
    case .issuedInFuture: "iat"
    case .lifetimeTooLong: "lifetime"
    case .bindingMissing: "binding_missing"
    case .bindingMismatch: "binding_mismatch"
    case .subjectMismatch: "subject_mismatch"
    case .keyRetired: "key_retired"
    }
  }
}

/// Compares secrets without an early exit, so timing reveals nothing about where they differ.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
  guard a.count == b.count else { return false }
  var difference: UInt8 = 0
  for i in a.indices { difference |= a[i] ^ b[i] }
  return difference == 0
}
