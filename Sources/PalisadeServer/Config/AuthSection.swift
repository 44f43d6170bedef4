import PalisadePolicy
public import PalisadeYAML

extension ServerConfig {
  /// `auth:`. Every call except the exempt RPCs must carry `authorization: Bearer <JWT>`; see ``TokenVerifier``.
  public struct Auth: ConfigSection {
    /// One entry of `auth.issuers`.
    public struct Issuer: ConfigSection {
      public enum Kind: String, Sendable { case oauth, spiffe }
      /// The token's `iss`.
      public var issuer: String
      public var kind: Kind
      /// JWKS file with this issuer's public keys.
      public var jwks: String
      /// SPIFFE issuers: the trust domain of the JWT-SVIDs (tokens without `iss` are matched by it).
      public var trustDomain: String?
      /// RFC 8705 binding required (default: yes for oauth, no for spiffe, whose `sub` must equal the
      /// certificate's SPIFFE ID instead).
      public var requireCertificateBinding: Bool

      public init(
        issuer: String, kind: Kind, jwks: String, trustDomain: String? = nil, requireCertificateBinding: Bool? = nil
      ) {
        self.issuer = issuer
        self.kind = kind
        self.jwks = jwks
        self.trustDomain = trustDomain
        self.requireCertificateBinding = requireCertificateBinding ?? (kind == .oauth)
      }

      public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
        let issuer = try map.requiredString("issuer")
        let kind = Kind(rawValue: try map.choice("kind", ["oauth", "spiffe"]) ?? "oauth") ?? .oauth
        let jwks = try map.requiredString("jwks")
        let trustDomain = try map.string("trust_domain")
        if kind == .spiffe && trustDomain == nil { throw map.error("trust_domain", "is required for spiffe issuers") }
        self.init(
          issuer: issuer, kind: kind, jwks: context.resolve(jwks), trustDomain: trustDomain,
          requireCertificateBinding: try map.bool("require_certificate_binding"))
      }
    }
    /// This server's audience: tokens must name it in `aud`.
    public var audience: String
    public var issuers: [Issuer]
    /// RPCs that need no token (still mTLS): by default liveness and health.
    public var exemptRPCs: [String]
    public var algorithms: [String]
    public var types: [String]
    public var leewaySeconds: Int
    public var maxLifetimeSeconds: Int

    /// `exempt_rpcs` when the file says nothing: liveness and health.
    public static let defaultExemptRPCs = ["ServerLive", "Check", "Watch"]

    /// The only signature algorithms a token may use.
    static let allowedAlgorithms = ["ES256", "ES384", "EdDSA"]

    public init(
      audience: String, issuers: [Issuer], exemptRPCs: [String] = Auth.defaultExemptRPCs,
      algorithms: [String] = ["ES256", "ES384", "EdDSA"], types: [String] = ["JWT", "at+jwt"], leewaySeconds: Int = 30,
      maxLifetimeSeconds: Int = 900
    ) {
      self.audience = audience
      self.issuers = issuers
      self.exemptRPCs = exemptRPCs
      self.algorithms = algorithms
      self.types = types
      self.leewaySeconds = leewaySeconds
      self.maxLifetimeSeconds = maxLifetimeSeconds
    }

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      let audience = try map.requiredString("audience")
      let issuers: [Issuer] = try map.sections("issuers", in: context) ?? []
      guard !issuers.isEmpty else { throw map.error("issuers", "is required: at least one token issuer") }
      self.init(audience: audience, issuers: issuers)
      if let exempt = try map.strings("exempt_rpcs") {
        for rpc in exempt where !Policy.knownRPCs.contains(rpc) {
          throw map.error(
            "exempt_rpcs", "unknown RPC '\(rpc)' (known: \(Policy.knownRPCs.sorted().joined(separator: ", ")))")
        }
        exemptRPCs = exempt
      }
      if let algs = try map.strings("algorithms") {
        for alg in algs where !Self.allowedAlgorithms.contains(alg) {
          throw map.error("algorithms", "'\(alg)' is not allowed (ES256, ES384, EdDSA; none and HS* never)")
        }
        algorithms = algs
      }
      try map.strings("types", into: &types)
      try map.int("leeway_seconds", in: 0...60, into: &leewaySeconds)
      try map.int("max_lifetime_seconds", in: 60...86_400, into: &maxLifetimeSeconds)
    }
  }
}
