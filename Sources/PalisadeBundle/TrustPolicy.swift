import PalisadeIdentity
public import X509
import SwiftASN1

/// Which signers may publish which models. The first rule whose `modelPattern` matches the model name decides; a name
/// no rule matches is refused ("no trust rule for model 'x'").
public struct TrustPolicy: Sendable {
  /// One rule: a model-name glob and the signers allowed for the names it matches.
  public struct Rule: Sendable {
    /// A glob over model names: `*` matches within one `/`-separated segment, `**` across segments, `?` one character.
    public let modelPattern: String
    public let signers: [TrustedSigner]

    public init(modelPattern: String, signers: [TrustedSigner]) {
      self.modelPattern = modelPattern
      self.signers = signers
    }
  }

  public let rules: [Rule]

  public init(rules: [Rule]) {
    self.rules = rules
  }

  /// The index of the rule deciding for `modelName`, if any.
  public func ruleIndex(for modelName: String) -> Int? {
    rules.firstIndex { Glob.matches(pattern: $0.modelPattern, modelName, separator: "/") }
  }
}

/// One allowed signer.
public enum TrustedSigner: Sendable {
  /// The key method: a raw ECDSA public key.
  case publicKey(BundlePublicKey)
  /// The certificate method: a chain to one of `roots` (self-signed CA certificates) whose leaf satisfies `identity`.
  case certificate(roots: [Certificate], identity: SignerIdentityRequirement)

  /// Convenience: the key method from a PEM `PUBLIC KEY`.
  public static func publicKey(pem: String) throws(BundleError) -> TrustedSigner {
    .publicKey(try BundlePublicKey(pem: pem))
  }

  /// Convenience: the certificate method from a PEM file's text holding one or more root certificates. Each must be a
  /// self-signed CA certificate (anything else could never anchor a chain: partial chains are refused).
  public static func certificate(rootsPEM: String, identity: SignerIdentityRequirement) throws(BundleError)
    -> TrustedSigner
  {
    let roots: [Certificate]
    do {
      roots = try PEMDocument.parseMultiple(pemString: rootsPEM).map { try Certificate(pemDocument: $0) }
    } catch {
      throw BundleError(.invalidInput, "trust policy: roots are not PEM certificates")
    }
    guard !roots.isEmpty else { throw BundleError(.invalidInput, "trust policy: no root certificate given") }
    for root in roots {
      let isCA: Bool
      if case .isCertificateAuthority = try? root.extensions.basicConstraints { isCA = true } else { isCA = false }
      guard isCA, root.issuer == root.subject, root.publicKey.isValidSignature(root.signature, for: root) else {
        throw BundleError(.invalidInput, "trust policy: root \(root.subject) is not a self-signed CA certificate")
      }
    }
    return .certificate(roots: roots, identity: identity)
  }
}

/// What the leaf certificate of a certificate-method signature must say about its holder. At least one of the two
/// patterns is required: a chain to a trusted root alone does not say *who* signed.
public struct SignerIdentityRequirement: Sendable, Hashable {
  /// A SAN pattern (glob); DNS patterns use `.` as the segment separator, URI and email patterns `/`.
  public enum SANPattern: Sendable, Hashable {
    case dns(String)
    case uri(String)
    case email(String)
  }

  /// A glob the leaf subject's common name must match, if set.
  public let subjectCommonName: String?
  /// A glob one of the leaf's SANs of that type must match, if set.
  public let san: SANPattern?

  /// - Throws: if neither pattern is given.
  public init(subjectCommonName: String? = nil, san: SANPattern? = nil) throws(BundleError) {
    guard subjectCommonName != nil || san != nil else {
      throw BundleError(.invalidInput, "trust policy: a certificate signer needs a subject common-name or SAN pattern")
    }
    self.subjectCommonName = subjectCommonName
    self.san = san
  }

  /// Nil if `leaf` satisfies the requirement, else why not.
  func mismatch(_ leaf: Certificate) -> String? {
    if let pattern = subjectCommonName {
      let names = leaf.subject.flatMap { $0 }.filter { $0.type == .RDNAttributeType.commonName }.compactMap {
        String($0.value)
      }
      guard names.count == 1, let cn = names.first else {
        return "leaf certificate must have exactly one subject common name (found \(names.count))"
      }
      guard Glob.matches(pattern: pattern, cn, separator: "/") else {
        return "leaf subject CN '\(cn)' does not match '\(pattern)'"
      }
    }
    if let san {
      let sans: SubjectAlternativeNames?
      do {
        sans = try leaf.extensions.subjectAlternativeNames
      } catch {
        return "leaf certificate has a malformed SAN extension"
      }
      let all = Array(sans ?? SubjectAlternativeNames([]))
      let (values, pattern, separator, label): ([String], String, Unicode.Scalar, String) =
        switch san {
        case .dns(let p): (all.compactMap { if case .dnsName(let v) = $0 { v } else { nil } }, p, ".", "DNS")
        case .uri(let p):
          (all.compactMap { if case .uniformResourceIdentifier(let v) = $0 { v } else { nil } }, p, "/", "URI")
        case .email(let p): (all.compactMap { if case .rfc822Name(let v) = $0 { v } else { nil } }, p, "/", "email")
        }
      guard values.contains(where: { Glob.matches(pattern: pattern, $0, separator: separator) }) else {
        return "no \(label) SAN of the leaf certificate matches '\(pattern)'"
      }
    }
    return nil
  }
}
