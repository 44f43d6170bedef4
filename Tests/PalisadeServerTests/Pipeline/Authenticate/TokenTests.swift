import Crypto
import Foundation
import GRPCCore
import PalisadeIdentity
import PalisadeProto
import PalisadeTestSupport
import Testing

/// Every way a bearer token can be wrong, over real mTLS: each is UNAUTHENTICATED with the same generic message.
@Suite struct TokenTests {
  static func b64(_ object: [String: Any]) throws -> String {
    Base64URL.encode(Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])))
  }

  /// Claims for `client`, valid now, before any tampering.
  static func claims(_ pki: TestPKI, _ client: TestPKI.Issued, now: Date = Date()) throws -> [String: Any] {
    TokenMinter.claims(
      issuer: TestPKI.issuerName, subject: "spiffe://palisade.test/sa/tok", audience: TestPKI.audience, ttl: 300,
      certificateThumbprint: try PeerIdentity(certificate: client.certificate).thumbprint, now: now)
  }

  static func sign(_ pki: TestPKI, _ claims: [String: Any], header: [String: Any] = [:]) throws -> String {
    try TokenMinter.mint(claims: claims, key: .es256(pki.issuerKey), kid: "test-1", header: header)
  }

  @Test func everyBadTokenIsRefused() async throws {
    let server = try await TestServer.start()
    let pki = server.pki
    let me = try pki.client("tok", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/tok")])
    let other = try pki.client("other", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/other")])
    let now = Date()
    func with(_ change: (inout [String: Any]) -> Void) throws -> String {
      var c = try Self.claims(pki, me.issued)
      change(&c)
      return try Self.sign(pki, c)
    }
    let good = try with { _ in }
    let parts = good.split(separator: ".").map(String.init)
    let publicKeyBytes = Array(pki.issuerKey.publicKey.derRepresentation)
    let hsInput = Array("\(try Self.b64(["alg": "HS256", "typ": "JWT", "kid": "test-1"])).\(parts[1])".utf8)
    let hsSignature = HMAC<SHA256>.authenticationCode(for: hsInput, using: SymmetricKey(data: publicKeyBytes))
    let otherKey = P256.Signing.PrivateKey()
    var flipped = Array(Base64URL.decode(parts[2]) ?? [])
    flipped[5] ^= 0x01

    let cases: [(String, String?)] = [
      ("missing header", nil),
      ("not bearer", "Basic \(good)"),
      ("malformed", "Bearer abc.def"),
      ("bad base64", "Bearer \(parts[0]).!!!.\(parts[2])"),
      ("alg none", "Bearer \(try Self.b64(["alg": "none", "typ": "JWT", "kid": "test-1"])).\(parts[1])."),
      (
        "HS256 with the public key",
        "Bearer \(String(decoding: hsInput, as: UTF8.self)).\(Base64URL.encode(Array(hsSignature)))"
      ),
      (
        "unknown kid",
        "Bearer \(try TokenMinter.mint(claims: try Self.claims(pki, me.issued), key: .es256(pki.issuerKey), kid: "nope"))"
      ),
      (
        "wrong signature",
        "Bearer \(try TokenMinter.mint(claims: try Self.claims(pki, me.issued), key: .es256(otherKey), kid: "test-1"))"
      ),
      ("flipped signature bit", "Bearer \(parts[0]).\(parts[1]).\(Base64URL.encode(flipped))"),
      (
        "expired",
        "Bearer \(try with { $0.merge(["iat": Int(now.timeIntervalSince1970) - 600, "exp": Int(now.timeIntervalSince1970) - 120]) { $1 } })"
      ),
      ("nbf in the future", "Bearer \(try with { $0["nbf"] = Int(now.timeIntervalSince1970) + 600 })"),
      (
        "iat in the future",
        "Bearer \(try with { $0.merge(["iat": Int(now.timeIntervalSince1970) + 600, "exp": Int(now.timeIntervalSince1970) + 800]) { $1 } })"
      ),
      ("lifetime over the maximum", "Bearer \(try with { $0["exp"] = Int(now.timeIntervalSince1970) + 3600 })"),
      ("wrong aud", "Bearer \(try with { $0["aud"] = "someone-else" })"),
      ("wrong iss", "Bearer \(try with { $0["iss"] = "https://evil.example" })"),
      ("missing cnf", "Bearer \(try with { $0["cnf"] = nil })"),
      ("cnf for another certificate", "Bearer \(try pki.token(for: other.issued))"),
      ("wrong typ", "Bearer \(try Self.sign(pki, try Self.claims(pki, me.issued), header: ["typ": "secevent+jwt"]))"),
      ("no typ", "Bearer \(try Self.sign(pki, try Self.claims(pki, me.issued), header: ["typ": NSNull()]))"),
      ("missing exp", "Bearer \(try with { $0["exp"] = nil })"),
      ("oversized", "Bearer \(try with { $0["pad"] = String(repeating: "x", count: 10_000) })"),
      (
        "jku pointing elsewhere",
        "Bearer \(try TokenMinter.mint(claims: try Self.claims(pki, me.issued), key: .es256(otherKey), kid: "evil", header: ["jku": "https://evil.example/jwks"]))"
      ),
    ]
    for (name, header) in cases {
      let error = await rpcError {
        _ = try await withClient(server, cert: me.cert, key: me.key) { client in
          try await client.modelMetadata(
            .with { $0.name = "simple" }, metadata: header.map { ["authorization": "\($0)"] } ?? [:])
        }
      }
      #expect(error?.code == .unauthenticated, "\(name): \(String(describing: error))")
      #expect(error?.message == "missing or invalid credentials", "\(name)")
      if let header { #expect(error?.message.contains(header.suffix(20)) == false) }
    }
    // The good token works, and ServerLive needs none.
    let ok = try await withClient(server, cert: me.cert, key: me.key, token: good) {
      try await $0.modelMetadata(.with { $0.name = "simple" })
    }
    #expect(ok.name == "simple")
    let live = try await withClient(server, cert: me.cert, key: me.key) { try await $0.serverLive(.init()) }
    #expect(live.live)
    let metrics = try await adminGet(server, "/metrics").1
    for reason in [
      "missing", "algorithm", "kid", "signature", "expired", "lifetime", "audience", "issuer", "binding_mismatch",
      "binding_missing", "type", "oversized",
    ] {
      #expect(metrics.contains("reason=\"\(reason)\""), "\(reason)")
    }
    try await server.stop()
  }

  @Test func cachedTokenStillChecksTheBinding() async throws {
    // A token replayed from another client fails even after it was verified (and cached) for its owner.
    let server = try await TestServer.start()
    let owner = try goodClient(server, "owner")
    let thief = try goodClient(server, "thief")
    _ = try await withClient(server, owner) { try await $0.serverMetadata(.init()) }
    let error = await rpcError {
      _ = try await withClient(server, cert: thief.cert, key: thief.key, token: owner.token) {
        try await $0.serverMetadata(.init())
      }
    }
    #expect(error?.code == .unauthenticated)
    try await server.stop()
  }

  @Test func pyJWTTokensAndSPIRESVIDsVerify() async throws {
    // A JWT-SVID issuer (no cnf; sub must equal the certificate's SPIFFE ID) beside the OAuth one.
    let pki = try TestPKI()
    let spireKey = P256.Signing.PrivateKey()
    let jwks = String(
      decoding: try JSONSerialization.data(withJSONObject: [
        "keys": [TokenSigningKey.es256(spireKey).jwk(kid: "spire-1")]
      ]),
      as: UTF8.self)
    let spireJWKS = try pki.write("spire-jwks.json", jwks)
    let server = try await TestServer.start(pki: pki) {
      $0.auth.issuers.append(
        .init(issuer: "spiffe://palisade.test", kind: .spiffe, jwks: spireJWKS, trustDomain: "palisade.test"))
    }
    let me = try pki.client("svid", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/svid")])
    let now = Int(Date().timeIntervalSince1970)
    func svid(sub: String) throws -> String {
      try TokenMinter.mint(
        claims: ["sub": sub, "aud": [TestPKI.audience], "iat": now, "exp": now + 300], key: .es256(spireKey),
        kid: "spire-1")
    }
    let ok = try await withClient(
      server, cert: me.cert, key: me.key, token: try svid(sub: "spiffe://palisade.test/sa/svid")
    ) {
      try await $0.serverMetadata(.init())
    }
    #expect(ok.name == "palisade")
    let wrongSub = await rpcError {
      _ = try await withClient(
        server, cert: me.cert, key: me.key, token: try svid(sub: "spiffe://palisade.test/sa/other")
      ) {
        try await $0.serverMetadata(.init())
      }
    }
    #expect(wrongSub?.code == .unauthenticated)

    // PyJWT mints the OAuth-style token.
    let identity = try PeerIdentity(certificate: me.issued.certificate)
    let script = """
      import sys, jwt, time
      key = open(sys.argv[1]).read()
      now = int(time.time())
      print(jwt.encode({"iss": sys.argv[2], "sub": "svc-py", "aud": sys.argv[3], "iat": now, "exp": now + 300,
                        "cnf": {"x5t#S256": sys.argv[4]}}, key, algorithm="ES256", headers={"kid": "test-1"}))
      """
    let keyPath = try pki.write("issuer.key", pki.issuerKey.pemRepresentation, mode: 0o600)
    let minted = try await ProcessTests.run(
      InteropTests.python, ["-c", script, keyPath, TestPKI.issuerName, TestPKI.audience, identity.thumbprintBase64URL])
    #expect(minted.status == 0, "\(minted.stderr)")
    let token = minted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    let viaPy = try await withClient(server, cert: me.cert, key: me.key, token: token) {
      try await $0.serverMetadata(.init())
    }
    #expect(viaPy.name == "palisade")
    try await server.stop()
  }
}
