import Crypto
public import Foundation
import PalisadeIdentity
public import PalisadeYAML

/// Checks attestation evidence on the caller's side (`palisade attest request|verify`): the signature with the
/// server's attestation public key, the profile, the caller's nonce (no replay), freshness, the binding to the
/// TLS certificate the caller saw (no relay), and the caller's reference values.
public struct EvidenceAppraiser: Sendable {
  /// Reference values, from a YAML file (`--expect`). Every list is "one of these"; absent means "any".
  public struct Expectations: Sendable, Equatable {
    public struct Model: Sendable, Equatable {
      public var name: String
      public var versions: [String]?
      /// A substring the signer description must contain (e.g. the key fingerprint or a certificate SAN).
      public var signer: String?
      public var manifestSHA256: [String]?
      public init(name: String, versions: [String]? = nil, signer: String? = nil, manifestSHA256: [String]? = nil) {
        self.name = name
        self.versions = versions
        self.signer = signer
        self.manifestSHA256 = manifestSHA256
      }
    }
    public var executableSHA256: [String]?
    public var sbomSHA256: [String]?
    public var configSHA256: [String]?
    public var policySHA256: [String]?
    public var models: [Model] = []
    /// Refuse evidence listing models that are not in `models`.
    public var onlyListedModels = false
    /// Oldest acceptable evidence.
    public var maxAgeSeconds = 300

    public init() {}

    /// Reads an expectations file; errors name the key and line.
    public static func load(path: String) throws(YAMLError) -> Expectations {
      let text: String
      do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        throw YAMLError(file: path, path: "", line: nil, message: "cannot be read")
      }
      let root = try YAMLMap.parse(text, file: path)
      var e = Expectations()
      e.executableSHA256 = try root.strings("executable_sha256")
      e.sbomSHA256 = try root.strings("sbom_sha256")
      e.configSHA256 = try root.strings("config_sha256")
      e.policySHA256 = try root.strings("policy_sha256")
      e.onlyListedModels = try root.bool("only_listed_models") ?? false
      e.maxAgeSeconds = try root.int("max_age_seconds", in: 1...86_400) ?? 300
      for m in try root.maps("models") ?? [] {
        guard let name = try m.string("name"), !name.isEmpty else { throw m.error("name", "is required") }
        e.models.append(
          Model(
            name: name, versions: try m.strings("versions"), signer: try m.string("signer"),
            manifestSHA256: try m.strings("manifest_sha256")))
        try m.finish()
      }
      try root.finish()
      return e
    }
  }

  /// Evidence that passed, as the decoded claims (JSON).
  public struct Appraisal: Sendable {
    public var claimsJSON: [UInt8]
  }

  /// Why evidence was refused: every failed check, in words.
  public struct Refusal: Error, Sendable, CustomStringConvertible {
    public var reasons: [String]
    public var description: String { reasons.joined(separator: "; ") }
  }

  let publicKeyPEM: String

  /// `publicKeyPEM` may carry text around the block (RFC 7468 §2), as `certtool` writes it.
  public init(publicKeyPEM: String) { self.publicKeyPEM = PEMText.soleBlock(publicKeyPEM) }

  /// Appraises `evidence`. `nonce` and `tlsPublicKeySHA256` are checked when given (`attest request` always gives
  /// both).
  public func appraise(
    _ evidence: String, nonce: [UInt8]?, tlsPublicKeySHA256: String?, expectations: Expectations?, now: Date = Date()
  ) throws(Refusal) -> Appraisal {
    let parts = evidence.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 3, let headerBytes = Base64URL.decode(String(parts[0])),
      let payload = Base64URL.decode(String(parts[1])),
      let signature = Base64URL.decode(String(parts[2])),
      let header = (try? JSONSerialization.jsonObject(with: Data(headerBytes))) as? [String: Any]
    else { throw Refusal(reasons: ["evidence is not a compact JWS"]) }
    guard header["typ"] as? String == "eat+jwt" else { throw Refusal(reasons: ["evidence type is not eat+jwt"]) }
    let signed = Array("\(parts[0]).\(parts[1])".utf8)
    guard verify(signed, signature: signature, alg: header["alg"] as? String) else {
      throw Refusal(reasons: ["signature does not verify with the attestation key"])
    }
    guard let claims = (try? JSONSerialization.jsonObject(with: Data(payload))) as? [String: Any] else {
      throw Refusal(reasons: ["claims are not a JSON object"])
    }
    var failures: [String] = []
    if claims["eat_profile"] as? String != EvidenceProfile.v1 { failures.append("unknown eat_profile") }
    if let nonce, claims["eat_nonce"] as? String != Base64URL.encode(nonce) {
      failures.append("nonce does not match this request (replayed or substituted evidence)")
    }
    let measured = claims["palisade"] as? [String: Any] ?? [:]
    if let tls = tlsPublicKeySHA256, measured["tls_spki_sha256"] as? String != tls {
      failures.append("evidence is bound to another TLS certificate than the one this connection presented (relayed)")
    }
    let iat = (claims["iat"] as? NSNumber)?.doubleValue ?? 0
    let maxAge = Double(expectations?.maxAgeSeconds ?? 300)
    if iat > now.timeIntervalSince1970 + 60 || iat < now.timeIntervalSince1970 - maxAge {
      failures.append("evidence time is outside the accepted window (\(Int(maxAge)) s)")
    }
    if let e = expectations {
      func check(_ key: String, _ allowed: [String]?, _ what: String) {
        guard let allowed else { return }
        let value = measured[key] as? String ?? ""
        if !allowed.contains(value) {
          failures.append("\(what) \(value.isEmpty ? "(missing)" : value) is not an allowed value")
        }
      }
      check("executable_sha256", e.executableSHA256, "executable digest")
      check("sbom_sha256", e.sbomSHA256, "SBOM digest")
      check("config_sha256", e.configSHA256, "config digest")
      check("policy_sha256", e.policySHA256, "policy digest")
      let submods = claims["submods"] as? [String: Any] ?? [:]
      for m in e.models {
        guard let sub = submods["model:\(m.name)"] as? [String: Any] else {
          failures.append("model \(m.name) is not loaded")
          continue
        }
        let version = (sub["swversion"] as? [String])?.first ?? ""
        if let versions = m.versions, !versions.contains(version) {
          failures.append(
            "model \(m.name) runs version \(version), expected one of \(versions.joined(separator: ", "))")
        }
        if let signer = m.signer, !((sub["signer"] as? String) ?? "").contains(signer) {
          failures.append("model \(m.name) is signed by \(sub["signer"] as? String ?? "(unknown)"), expected \(signer)")
        }
        if let digests = m.manifestSHA256, !digests.contains(sub["manifest_sha256"] as? String ?? "") {
          failures.append("model \(m.name) manifest digest is not an allowed value")
        }
      }
      if e.onlyListedModels {
        let listed = Set(e.models.map { "model:\($0.name)" })
        for key in submods.keys.sorted() where !listed.contains(key) {
          failures.append("unexpected \(key.replacingOccurrences(of: "model:", with: "model ")) is loaded")
        }
      }
    }
    guard failures.isEmpty else { throw Refusal(reasons: failures) }
    let pretty =
      (try? JSONSerialization.data(withJSONObject: claims, options: [.prettyPrinted, .sortedKeys])) ?? Data(payload)
    return Appraisal(claimsJSON: Array(pretty))
  }

  private func verify(_ message: [UInt8], signature: [UInt8], alg: String?) -> Bool {
    switch alg {
    case "ES256":
      guard let key = try? P256.Signing.PublicKey(pemRepresentation: publicKeyPEM),
        let sig = try? P256.Signing.ECDSASignature(rawRepresentation: signature)
      else { return false }
      return key.isValidSignature(sig, for: message)
    case "ES384":
      guard let key = try? P384.Signing.PublicKey(pemRepresentation: publicKeyPEM),
        let sig = try? P384.Signing.ECDSASignature(rawRepresentation: signature)
      else { return false }
      return key.isValidSignature(sig, for: message)
    case "EdDSA":
      guard let key = try? Curve25519.Signing.PublicKey(pemRepresentation: publicKeyPEM) else { return false }
      return key.isValidSignature(signature, for: message)
    default:
      return false
    }
  }
}
