import Crypto
public import Foundation
public import PalisadeCore
public import PalisadeIdentity
import PalisadeSupport

/// Builds and signs attestation evidence: a JWT (typ `eat+jwt`) whose claims follow the Entity Attestation Token
/// (RFC 9711) where it has names (`eat_nonce`, `eat_profile`, `iat`, `swname`, `swversion`, `submods`), with
/// Palisade's measurements under `palisade`:
///
/// - `executable_sha256`: this process's executable (`/proc/self/exe`), hashed once;
/// - `sbom_sha256`: the CycloneDX SBOM shipped with the build (docs/release.md), when there is one;
/// - `config_sha256`, `policy_sha256`, `client_ca_bundle_sha256`, `jwks_sha256` (per issuer), `trust_sha256`
///   (the bundle trust keys and roots): what the server decides with, as loaded now;
/// - `tls_spki_sha256`: SHA-256 of the SubjectPublicKeyInfo of the certificate this server presents, so that a
///   caller can check the evidence came over its own TLS channel and was not relayed from another server;
/// - `audit_checkpoint`: the latest signed audit checkpoint, when the audit log is on.
///
/// Each loaded model is a submodule `model:<name>` with its version, bundle and manifest digests and signer.
public struct EvidenceBuilder: Sendable {
  /// The profile this evidence follows (RFC 9711 `eat_profile`).
  public static let profile = EvidenceProfile.v1

  /// What the builder measures, gathered by the caller at request time.
  public struct Measurements: Sendable {
    public var executableSHA256: String
    public var sbomSHA256: String?
    public var configSHA256: String?
    public var policySHA256: String
    public var clientCABundleSHA256: String?
    public var jwksSHA256: [String: String]
    public var trustSHA256: [String]
    public var tlsSPKISHA256: String
    public var auditCheckpoint: String?
    public var models: [ModelDescriptor]
    /// SHA-256 (hex) of the TPM quote (TPMS_ATTEST) sent with this evidence; nil: no TPM, software-signed only.
    public var tpmQuoteSHA256: String?
    public init(
      executableSHA256: String, configSHA256: String?, policySHA256: String, clientCABundleSHA256: String?,
      jwksSHA256: [String: String], trustSHA256: [String], tlsSPKISHA256: String, auditCheckpoint: String?,
      models: [ModelDescriptor], sbomSHA256: String? = nil
    ) {
      self.executableSHA256 = executableSHA256
      self.sbomSHA256 = sbomSHA256
      self.configSHA256 = configSHA256
      self.policySHA256 = policySHA256
      self.clientCABundleSHA256 = clientCABundleSHA256
      self.jwksSHA256 = jwksSHA256
      self.trustSHA256 = trustSHA256
      self.tlsSPKISHA256 = tlsSPKISHA256
      self.auditCheckpoint = auditCheckpoint
      self.models = models
    }
  }

  let key: TokenSigningKey
  /// RFC 7638 JWK thumbprint of the public key.
  public let keyID: String

  public init(key: TokenSigningKey) {
    self.key = key
    self.keyID = Self.thumbprint(key.jwk(kid: ""))
  }

  /// The signed evidence for `nonce` (16–64 bytes, checked by the service).
  public func evidence(nonce: [UInt8], measurements m: Measurements, now: Date = Date()) throws -> String {
    var palisade: [String: Any] = [
      "executable_sha256": m.executableSHA256, "policy_sha256": m.policySHA256, "jwks_sha256": m.jwksSHA256,
      "trust_sha256": m.trustSHA256, "tls_spki_sha256": m.tlsSPKISHA256,
    ]
    if let c = m.configSHA256 { palisade["config_sha256"] = c }
    if let s = m.sbomSHA256 { palisade["sbom_sha256"] = s }
    if let c = m.clientCABundleSHA256 { palisade["client_ca_bundle_sha256"] = c }
    if let a = m.auditCheckpoint { palisade["audit_checkpoint"] = a }
    // What roots this evidence: the key file alone, or a TPM quote the claims are bound to.
    palisade["evidence_root"] = m.tpmQuoteSHA256 == nil ? "software-key" : "tpm"
    if let q = m.tpmQuoteSHA256 { palisade["tpm_quote_sha256"] = q }
    var submods: [String: Any] = [:]
    for d in m.models {
      submods["model:\(d.name)"] = [
        "swname": d.name, "swversion": [d.version], "bundle_sha256": d.properties["bundle_digest"] ?? "",
        "manifest_sha256": d.properties["manifest_digest"] ?? "", "signer": d.properties["signer"] ?? "",
      ]
    }
    let claims: [String: Any] = [
      "eat_profile": Self.profile, "eat_nonce": Base64URL.encode(nonce), "iat": Int(now.timeIntervalSince1970),
      "swname": "palisade", "swversion": [PalisadeVersion.current], "palisade": palisade, "submods": submods,
    ]
    return try TokenMinter.mint(claims: claims, key: key, kid: keyID, header: ["typ": "eat+jwt"])
  }

  /// RFC 7638: SHA-256 over the required members in lexicographic order, base64url.
  static func thumbprint(_ jwk: [String: String]) -> String {
    let members: [String] = jwk["kty"] == "OKP" ? ["crv", "kty", "x"] : ["crv", "kty", "x", "y"]
    let json = "{" + members.map { "\"\($0)\":\"\(jwk[$0] ?? "")\"" }.joined(separator: ",") + "}"
    return Base64URL.encode(Array(SHA256.hash(data: Array(json.utf8))))
  }

  /// Lower-case hex SHA-256 of a file's bytes; nil when it cannot be read.
  public static func fileSHA256(_ path: String) -> String? {
    guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
    defer { try? handle.close() }
    var hasher = SHA256()
    while let chunk = try? handle.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
    return hexString(hasher.finalize())
  }
}
