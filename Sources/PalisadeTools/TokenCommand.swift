import ArgumentParser
import Foundation
import PalisadeIdentity
import X509

/// `palisade token`: a development token issuer and a token decoder.
struct TokenCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "token",
    abstract: "Mint development tokens bound to a client certificate, or decode a token.",
    discussion: """
      Production tokens come from your issuer (or SPIRE); Palisade only verifies them. `mint` is for development
      and tests, with the dev issuer key that `make pki` writes to certs/out/issuer.key.
      """,
    subcommands: [Mint.self, Inspect.self, JWKSCommand.self]
  )

  /// The issuer key in the PEM file at `path` (the `--key` option of `mint` and `jwks`).
  static func signingKey(at path: String) throws -> TokenSigningKey {
    let pem: String
    do { pem = try String(contentsOfFile: path, encoding: .utf8) } catch {
      throw ValidationError("cannot read --key \(path)")
    }
    return try TokenSigningKey(pem: pem)
  }

  struct Mint: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print a signed JWT (ES256/ES384/EdDSA by key type) with iss, sub, aud, iat, exp, jti and scope.")
    @Option(help: "The issuer's private key (PEM: P-256, P-384 or Ed25519).")
    var key = "certs/out/issuer.key"
    @Option(help: "The key id the server's JWKS lists the key under.")
    var kid = "dev-1"
    @Option(help: "The iss claim.")
    var issuer = "https://issuer.palisade.dev"
    @Option(help: "The sub claim (default: the SPIFFE ID of --bind-cert).")
    var sub: String?
    @Option(help: "The aud claim: the server's configured audience.")
    var aud = "palisade"
    @Option(help: "A scope (repeatable).")
    var scope: [String] = []
    @Option(help: "Lifetime in seconds (servers refuse more than their max_lifetime_seconds, 900 by default).")
    var ttl = 300
    @Option(help: "Bind the token to this client certificate (PEM; cnf.x5t#S256 = SHA-256 of the leaf).")
    var bindCert: String?

    func run() throws {
      guard ttl > 0 else { throw ValidationError("--ttl must be positive") }
      do { try PEMFiles.checkPrivateKeyPermissions(at: key) } catch { throw ValidationError("\(error)") }
      let signing = try TokenCommand.signingKey(at: key)
      var thumbprint: [UInt8]?
      var subject = sub
      if let bindCert {
        guard let leaf = try PEMFiles.certificates(at: bindCert).first else {
          throw ValidationError("no certificate in \(bindCert)")
        }
        let identity: PeerIdentity
        do { identity = try PeerIdentity(certificate: leaf) } catch {
          throw ValidationError("\(bindCert): \(error)")
        }
        thumbprint = identity.thumbprint
        subject = subject ?? identity.spiffeID.description
      }
      guard let subject else { throw ValidationError("give --sub or --bind-cert") }
      let claims = TokenMinter.claims(
        issuer: issuer, subject: subject, audience: aud, ttl: TimeInterval(ttl), scopes: scope,
        certificateThumbprint: thumbprint)
      print(try TokenMinter.mint(claims: claims, key: signing, kid: kid))
    }
  }

  struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Decode a token's header and claims WITHOUT verifying it, and say when it expires.")
    @Argument(help: "The token, or - to read it from standard input.")
    var token: String

    func run() throws {
      var text = token == "-" ? String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self) : token
      text = text.trimmingCharacters(in: .whitespacesAndNewlines)
      if text.hasPrefix("Bearer ") { text.removeFirst(7) }
      let parts = text.split(separator: ".", omittingEmptySubsequences: false)
      guard parts.count == 3, let header = Base64URL.decode(parts[0]), let payload = Base64URL.decode(parts[1]),
        let h = try? JSONSerialization.jsonObject(with: Data(header)),
        let p = try? JSONSerialization.jsonObject(with: Data(payload))
      else { throw ValidationError("not a compact JWS token") }
      var out: [String: Any] = ["header": h, "claims": p, "verified": false]
      if let claims = p as? [String: Any], let exp = (claims["exp"] as? NSNumber)?.doubleValue {
        // Whatever the token says, never trap: a non-finite or huge exp is shown as it is.
        let remaining = (exp - Date().timeIntervalSince1970).rounded(.down)
        if let seconds = Int(exactly: remaining) {
          out["expires_in_seconds"] = seconds
        } else {
          out["exp_out_of_range"] = true
        }
      }
      print(
        String(
          decoding: try JSONSerialization.data(withJSONObject: out, options: [.prettyPrinted, .sortedKeys]),
          as: UTF8.self))
    }
  }

  struct JWKSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "jwks",
      abstract: "Print the JWKS (public key) for an issuer private key, for the server's auth.issuers.")
    @Option(help: "The issuer's private key (PEM).")
    var key = "certs/out/issuer.key"
    @Option(help: "The key id.")
    var kid = "dev-1"

    func run() throws {
      let jwk = try TokenCommand.signingKey(at: key).jwk(kid: kid)
      print(
        String(
          decoding: try JSONSerialization.data(withJSONObject: ["keys": [jwk]], options: [.sortedKeys]), as: UTF8.self))
    }
  }
}
