import Crypto
public import Foundation
public import PalisadeTPM
import SwiftASN1
public import X509

/// The TPM part of an Attest answer, as bytes (the fields of `palisade.v1.TPMEvidence`).
public struct TPMEvidenceBytes: Sendable, Equatable {
  public var quoteAttest: [UInt8]
  public var quoteSignature: [UInt8]
  public var akPublic: [UInt8]
  public var ekPublic: [UInt8]
  public var ekCertificate: [UInt8]
  public var eventLog: String
  public var pcr: Int
  public var pcrValues: [Int: [UInt8]]
  public var activatedCredential: [UInt8]
  public init(
    quoteAttest: [UInt8], quoteSignature: [UInt8], akPublic: [UInt8], ekPublic: [UInt8], ekCertificate: [UInt8],
    eventLog: String, pcr: Int, pcrValues: [Int: [UInt8]], activatedCredential: [UInt8]
  ) {
    self.quoteAttest = quoteAttest
    self.quoteSignature = quoteSignature
    self.akPublic = akPublic
    self.ekPublic = ekPublic
    self.ekCertificate = ekCertificate
    self.eventLog = eventLog
    self.pcr = pcr
    self.pcrValues = pcrValues
    self.activatedCredential = activatedCredential
  }
}

/// Appraises TPM evidence on the caller's side (docs/attestation.md, "Appraisal"):
///
/// 1. the endorsement key certificate chains to a manufacturer root the caller trusts, and certifies the EK public
///    key the server sent (a restricted decryption key that cannot leave its TPM);
/// 2. the attestation key is a restricted P-256 signing key that cannot leave its TPM, and lives in the same TPM as
///    that EK: the caller sealed a fresh secret to the EK for the AK's name (``challenge(for:)``), and only that
///    TPM could release it (`activated_credential`);
/// 3. the quote is a TPMS_ATTEST of a TPM (magic), signed by the AK, over the caller's nonce, selecting the
///    application PCR; its PCR digest is the digest of the reported PCR values;
/// 4. replaying the event log gives the application PCR's value, from zeros (the PCR was reset at start);
/// 5. the EAT claims (already verified by the caller) carry the quote's digest, and every digest they report is the
///    one the event log measured last, for every item, in both directions.
///
/// Why credential activation rather than an AK certificate: it needs no extra CA that the caller must trust and
/// that must itself check the TPM; the caller does the check itself, against the manufacturer root only, in one
/// extra round trip.
public struct TPMEvidenceAppraiser: Sendable {
  let roots: [Certificate]
  let intermediates: [Certificate]

  /// `manufacturerCertificates`: the TPM manufacturers' roots (self-signed) and any issuing CAs below them.
  public init(manufacturerCertificates: [Certificate]) {
    roots = manufacturerCertificates.filter { $0.subject == $0.issuer }
    intermediates = manufacturerCertificates.filter { $0.subject != $0.issuer }
  }

  public struct Refusal: Error, Sendable, CustomStringConvertible {
    public var reasons: [String]
    public var description: String { reasons.joined(separator: "; ") }
    init(_ reason: String) { reasons = [reason] }
    init(reasons: [String]) { self.reasons = reasons }
  }

  /// The keys of a TPM whose EK certificate chains to a trusted manufacturer root.
  public struct Identity: Sendable {
    public var ak: TPMECCPublic
    public var ek: TPMECCPublic
  }

  /// Checks the endorsement key and its certificate, and the attestation key's attributes (steps 1 and the first
  /// half of 2).
  public func identity(_ e: TPMEvidenceBytes, now: Date = Date()) async throws(Refusal) -> Identity {
    let ak: TPMECCPublic
    let ek: TPMECCPublic
    do {
      ak = try TPMECCPublic(marshalled: e.akPublic)
      ek = try TPMECCPublic(marshalled: e.ekPublic)
    } catch { throw Refusal("TPM key structures: \(error)") }
    guard ak.isRestrictedP256SigningKey else {
      throw Refusal("the attestation key is not a restricted P-256 signing key bound to its TPM")
    }
    guard ek.attributes.isSuperset(of: [.fixedTPM, .fixedParent, .sensitiveDataOrigin, .restricted, .decrypt]),
      !ek.attributes.contains(.sign)
    else { throw Refusal("the endorsement key is not a restricted decryption key bound to its TPM") }
    let certificate: Certificate
    do { certificate = try Certificate(derEncoded: e.ekCertificate) } catch {
      throw Refusal("the EK certificate does not parse")
    }
    var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
      RFC5280Policy()
      EKCertificatePolicy()
    }
    switch await verifier.validate(leaf: certificate, intermediates: CertificateStore(intermediates)) {
    case .validCertificate: break
    case .couldNotValidate(let failures):
      let reasons = failures.map { $0.policyFailureReason.description }
      throw Refusal(
        "the EK certificate does not chain to a trusted TPM manufacturer root"
          + (reasons.isEmpty ? "" : " (\(reasons.joined(separator: "; ")))"))
    }
    guard Self.certifies(certificate, ek) else {
      throw Refusal("the EK certificate is for another key than the endorsement key sent")
    }
    return Identity(ak: ak, ek: ek)
  }

  /// A credential sealed to an endorsement key for one attestation key's name.
  public struct Sealed: Sendable {
    /// What the next Attest request carries.
    public var challenge: TPMCredential.Challenge
    /// What its `activated_credential` must be.
    public var secret: [UInt8]
    /// The attestation key name it was sealed for: the answer's AK must have it.
    public var akName: [UInt8]
  }

  /// A fresh credential-activation challenge for `identity` (send it in the next Attest request).
  public func challenge(for identity: Identity) throws(Refusal) -> Sealed {
    var rng = SystemRandomNumberGenerator()
    let secret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
    do {
      let name = try identity.ak.name
      return Sealed(
        challenge: try TPMCredential.make(ek: identity.ek, objectName: name, secret: secret), secret: secret,
        akName: name)
    } catch { throw Refusal("cannot seal a credential to the endorsement key: \(error)") }
  }

  /// Steps 1–5. `claims` are the verified EAT claims of the same answer; `sealed` the challenge that request
  /// carried (nil skips step 2's activation check: only for re-appraising evidence whose AK was bound before).
  public func appraise(
    _ e: TPMEvidenceBytes, nonce: [UInt8], claims: [String: Any], sealed: Sealed?, now: Date = Date()
  ) async throws(Refusal) {
    let id = try await identity(e, now: now)
    var failures: [String] = []
    if let sealed {
      if (try? id.ak.name) != sealed.akName {
        failures.append("the attestation key is not the one the credential was sealed for (another TPM's key)")
      } else if e.activatedCredential != sealed.secret {
        failures.append("the attestation key is not in the TPM of the endorsement key (credential activation failed)")
      }
    }
    // 3. The quote.
    let info: TPMQuoteInfo
    let signature: TPMECDSASignature
    do {
      info = try TPMQuoteInfo(marshalled: e.quoteAttest)
      signature = try TPMECDSASignature(marshalled: e.quoteSignature)
    } catch { throw Refusal("quote: \(error)") }
    let akKey: P256.Signing.PublicKey
    do { akKey = try id.ak.p256SigningKey() } catch { throw Refusal("attestation key: \(error)") }
    if !signature.verifies(e.quoteAttest, key: akKey) {
      failures.append("the quote signature does not verify with the attestation key")
    }
    if info.extraData != nonce { failures.append("the quote is not over this request's nonce (replayed)") }
    let sha256 = info.selections.filter { $0.hash == TPMConst.algSHA256 }
    let selected = sha256.flatMap { $0.pcrs }.sorted()
    if info.selections.count != 1 || sha256.count != 1 || !selected.contains(e.pcr) {
      failures.append("the quote does not select the application PCR \(e.pcr) (SHA-256 bank)")
    }
    var concatenated: [UInt8] = []
    for p in selected {
      guard let v = e.pcrValues[p], v.count == 32 else {
        failures.append("no SHA-256 value reported for quoted PCR \(p)")
        continue
      }
      concatenated += v
    }
    if Array(SHA256.hash(data: concatenated)) != info.pcrDigest {
      failures.append("the reported PCR values are not the ones quoted")
    }
    // 4. The event log.
    var state: [String: String] = [:]
    do {
      let log = try TPMEventLog.parse(e.eventLog)
      let replay = try log.replay()
      state = replay.state
      if log.pcr != e.pcr { failures.append("the event log is for PCR \(log.pcr), not \(e.pcr)") }
      if log.initial != String(repeating: "0", count: 64) {
        failures.append("the application PCR was not reset before measuring")
      }
      if replay.pcr != e.pcrValues[e.pcr] {
        failures.append("the event log does not replay to the quoted PCR value (tampered or incomplete)")
      }
    } catch { failures.append("\(error)") }
    // 5. The claims and the quote, bound.
    let palisade = claims["palisade"] as? [String: Any] ?? [:]
    if palisade["evidence_root"] as? String != "tpm" {
      failures.append("the claims do not say they are rooted in a TPM")
    }
    let quoteDigest = Array(SHA256.hash(data: e.quoteAttest)).map { String(format: "%02x", $0) }.joined()
    if palisade["tpm_quote_sha256"] as? String != quoteDigest {
      failures.append("the claims are not bound to this quote")
    }
    let claimed = Self.claimedState(claims)
    for name in Set(claimed.keys).union(state.keys).sorted() where claimed[name] != state[name] {
      failures.append(
        "\(name): the claims say \(claimed[name] ?? "(absent)"), the TPM measured \(state[name] ?? "(absent)")")
    }
    guard failures.isEmpty else { throw Refusal(reasons: failures) }
  }

  /// The measured items as the EAT claims state them (the server's TPMMeasurements mapping).
  static func claimedState(_ claims: [String: Any]) -> [String: String] {
    let p = claims["palisade"] as? [String: Any] ?? [:]
    var state: [String: String] = [:]
    for (key, name) in [
      ("executable_sha256", "executable"), ("policy_sha256", "policy"), ("config_sha256", "config"),
      ("sbom_sha256", "sbom"),
      ("client_ca_bundle_sha256", "client_ca_bundle"),
    ] {
      if let v = p[key] as? String { state[name] = v }
    }
    for (issuer, digest) in p["jwks_sha256"] as? [String: String] ?? [:] { state["jwks:\(issuer)"] = digest }
    for (i, digest) in (p["trust_sha256"] as? [String] ?? []).enumerated() { state["trust:\(i)"] = digest }
    for (key, value) in claims["submods"] as? [String: Any] ?? [:] {
      guard key.hasPrefix("model:"), let sub = value as? [String: Any] else { continue }
      let version = (sub["swversion"] as? [String])?.first ?? ""
      state["\(key)/\(version)"] = sub["manifest_sha256"] as? String ?? ""
    }
    return state
  }

  /// Whether the certificate's public key is the EK's ECC point.
  static func certifies(_ certificate: Certificate, _ ek: TPMECCPublic) -> Bool {
    switch ek.curve {
    case TPMConst.curveP256:
      guard let k = P256.Signing.PublicKey(certificate.publicKey) else { return false }
      return Array(k.rawRepresentation) == TPMECCPublic.pad(ek.x, 32) + TPMECCPublic.pad(ek.y, 32)
    case TPMConst.curveP384:
      guard let k = P384.Signing.PublicKey(certificate.publicKey) else { return false }
      return Array(k.rawRepresentation) == TPMECCPublic.pad(ek.x, 48) + TPMECCPublic.pad(ek.y, 48)
    default:
      return false
    }
  }
}

/// An EK certificate (TCG EK Credential Profile): its subject alternative name (the TPM manufacturer, model and
/// version, a critical extension) is understood here, and it must say it is an EK certificate (extended key usage
/// tcg-kp-EKCertificate, 2.23.133.8.1) when it carries an extended key usage.
struct EKCertificatePolicy: VerifierPolicy {
  let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [.X509ExtensionID.subjectAlternativeName]
  static let ekCertificateUsage: ASN1ObjectIdentifier = [2, 23, 133, 8, 1]

  mutating func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult {
    let leaf = chain.leaf
    do {
      if let eku = try leaf.extensions.extendedKeyUsage,
        !eku.contains(ExtendedKeyUsage.Usage(oid: Self.ekCertificateUsage))
      {
        return .failsToMeetPolicy(reason: "the certificate is not an EK certificate (extended key usage)")
      }
    } catch {
      return .failsToMeetPolicy(reason: "the EK certificate's extensions are malformed")
    }
    return .meetsPolicy
  }
}
