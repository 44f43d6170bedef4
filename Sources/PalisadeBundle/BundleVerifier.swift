import Crypto
public import Foundation
import SwiftASN1
@_spi(FixedExpiryValidationTime) import X509

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The manifest's file name inside a bundle.
public let bundleManifestFileName = "manifest.json"

/// One file covered by a verified signature.
public struct VerifiedFile: Sendable, Hashable {
  /// Path relative to the bundle root, `/`-separated.
  public let name: String
  /// Lowercase hex SHA-256 of the content that was verified.
  public let sha256: String
  public let size: Int64
}

/// Who signed a verified bundle.
public struct SignerDescription: Sendable, Hashable, CustomStringConvertible {
  public enum Method: String, Sendable, Hashable {
    case publicKey = "key"
    case certificate = "certificate"
  }

  public let method: Method
  /// E.g. `public key P-256 sha256:0957…` or `certificate CN=publisher, SAN uri:spiffe://…, chain to CN=Root`.
  public let description: String
}

/// A bundle whose signature, signer and every file digest have been verified. Only from here on may its contents be
/// parsed.
public struct VerifiedBundle: Sendable {
  /// The bundle directory.
  public let directory: String
  /// The signed files, in signature order.
  public let files: [VerifiedFile]
  /// The signer that verified.
  public let signer: SignerDescription
  /// The statement's root digest (lowercase hex): identifies the exact signed content.
  public let rootDigest: String
  /// The model name the verification was made for (`nil`: any rule's signer was accepted; the name is then checked
  /// against the manifest by `manifest(now:)`).
  public let requestedModelName: String?
  /// `manifest.json` exactly as hashed during verification (nil if the bundle has none).
  public let manifestBytes: [UInt8]?

  let trust: TrustPolicy
  let matchedRules: Set<Int>
  private let digests: [RelativePath: [UInt8]]
  private let sealed: [RelativePath: SealedBytes]

  init(
    directory: String, files: [VerifiedFile], signer: SignerDescription, rootDigest: String,
    requestedModelName: String?,
    manifestBytes: [UInt8]?, trust: TrustPolicy, matchedRules: Set<Int>, digests: [RelativePath: [UInt8]],
    sealed: [RelativePath: SealedBytes]
  ) {
    self.directory = directory
    self.files = files
    self.signer = signer
    self.rootDigest = rootDigest
    self.requestedModelName = requestedModelName
    self.manifestBytes = manifestBytes
    self.trust = trust
    self.matchedRules = matchedRules
    self.digests = digests
    self.sealed = sealed
  }

  /// The bytes of a signed file exactly as they were hashed, in read-only memory; nil unless the bundle was verified
  /// with `keepContents` (or `name` is not a signed file). This is the only way a loader should hand a bundle's
  /// files to a runtime: nothing is read from disk again.
  public func contents(of name: String) -> SealedBytes? {
    guard let path = RelativePath.parseSigned(name) else { return nil }
    return sealed[path]
  }

  /// True if the signer is allowed for `modelName` by the trust policy that verified the bundle.
  public func signerIsAllowed(for modelName: String) -> Bool {
    guard let rule = trust.ruleIndex(for: modelName) else { return false }
    return matchedRules.contains(rule)
  }

  /// Reads a verified file again and checks it still has the verified digest (closes the window between
  /// verification and use: a file replaced on disk afterwards is refused, not loaded).
  /// With `keepContents` the verified bytes are returned (a copy), and the disk is not read at all.
  public func readFile(_ name: String) throws(BundleError) -> [UInt8] {
    guard let path = RelativePath.parseSigned(name), let expected = digests[path] else {
      throw BundleError(.contentMismatch, "\(name): not among the verified files")
    }
    if let kept = sealed[path] { return kept.bytes }
    let rootFD = try FileTree.openDirectory(directory)
    defer { close(rootFD) }
    let hashed = try FileTree.hashFile(rootFD: rootFD, path, keep: .array(limit: Int.max))
    guard hashed.digest == expected, let bytes = hashed.contents else {
      throw BundleError(.contentMismatch, "\(name): changed on disk after verification (digest mismatch)")
    }
    return bytes
  }

  func verifiedDigest(_ name: String) -> [UInt8]? {
    guard let path = RelativePath.parseSigned(name) else { return nil }
    return digests[path]
  }
}

/// Verifies OMS-signed bundle directories against a `TrustPolicy`.
///
/// Order of checks: `model.sig` structure → trust rule for the model name → signer (key + hint, or certificate chain
/// at `now` with codeSigning EKU, no partial chains, leaf identity) → signature over the DSSE PAE → signed payload
/// (files/sha256, no symlinks, ignore paths within the defaults, root digest) → directory (no links or special files
/// anywhere, no extra or missing files) → every file hashed in parallel and compared. Nothing else is read before.
public enum BundleVerifier {
  /// Files hashed at once by default: the core count, between 2 and 8.
  public static var defaultHashConcurrency: Int { FileTree.defaultConcurrency }

  /// What a `model.sig` whose signature and signer verified says.
  struct SignatureCheck {
    let signer: SignerDescription
    let statement: OMS.Statement
    /// The rules whose signers the signature satisfies (only the deciding one when a model name was given).
    let matchedRules: Set<Int>
    /// Paths not covered by the signature: its `ignore_paths` and `model.sig` itself.
    let excluded: [[String]]
  }

  /// Verifies `directory`.
  ///
  /// - Parameters:
  ///   - modelName: the name the repository is loading. The first trust rule matching it decides which signers are
  ///     allowed. `nil` (tools that do not know the name yet): a signer of any rule is accepted, and the name from the
  ///     manifest is checked against the policy by `VerifiedBundle.manifest(now:)`.
  ///   - now: the time certificates must be valid at.
  ///   - maxConcurrentHashes: how many files are hashed at once.
  ///   - keepContents: keep every signed file's bytes, exactly as hashed, in read-only memory
  ///     (`VerifiedBundle.contents(of:)`): what a loader hands to a runtime. Off for tools that only check.
  ///
  /// The bundle directory is opened once; every file below it is opened relative to that descriptor, one component
  /// at a time with `O_NOFOLLOW` (a symlink anywhere is refused), checked with `fstat` to be a regular file, and read
  /// once from that descriptor.
  public static func verify(
    directory: String, trust: TrustPolicy, modelName: String?, now: Date = Date(),
    maxConcurrentHashes: Int = BundleVerifier.defaultHashConcurrency, keepContents: Bool = false
  ) async throws(BundleError) -> VerifiedBundle {
    // Refuses a bundle root that is itself a symlink; everything below is reached through this descriptor.
    let rootFD = try FileTree.openDirectory(directory)
    defer { close(rootFD) }
    let sigBytes = try FileTree.readSmallFile(
      dirFD: rootFD, name: OMS.signatureFileName, limit: OMS.maxSignatureFileBytes, kind: .malformedSignature,
      label: OMS.signatureFileName)
    let check = try await checkSignature(sigBytes, trust: trust, modelName: modelName, now: now)
    let statement = check.statement

    let actual = try FileTree.regularFiles(rootFD: rootFD, label: directory, excluding: check.excluded)
    let signedSet = Set(statement.resources.map(\.path))
    let actualSet = Set(actual)
    if let extra = actual.filter({ !signedSet.contains($0) }).sorted(by: RelativePath.omsOrder).first {
      throw BundleError(.contentMismatch, "\(extra): file is not in the signed set")
    }
    if let missing = statement.resources.first(where: { !actualSet.contains($0.path) }) {
      throw BundleError(.contentMismatch, "\(missing.path): signed file is missing")
    }

    let manifestPath = RelativePath(components: [bundleManifestFileName])
    let hashed = try await FileTree.hashFiles(
      rootFD: rootFD, label: directory, statement.resources.map(\.path),
      keep: { path in keepContents ? .sealed : (path == manifestPath ? .array(limit: 16 << 20) : .nothing) },
      maxConcurrent: maxConcurrentHashes)
    var files: [VerifiedFile] = []
    var digests: [RelativePath: [UInt8]] = [:]
    var sealed: [RelativePath: SealedBytes] = [:]
    var manifestBytes: [UInt8]? = nil
    for (resource, h) in zip(statement.resources, hashed) {
      guard h.path == resource.path, h.digest == resource.digest else {
        throw BundleError(.contentMismatch, "\(resource.path): digest mismatch")
      }
      files.append(VerifiedFile(name: resource.path.name, sha256: Hex.encode(h.digest), size: h.size))
      digests[resource.path] = h.digest
      if let kept = h.sealed { sealed[resource.path] = kept }
      if h.path == manifestPath {
        if let kept = h.sealed {
          guard kept.count <= 16 << 20 else {
            throw BundleError(.invalidManifest, "\(manifestPath): larger than \(16 << 20) bytes")
          }
          manifestBytes = kept.bytes
        } else {
          manifestBytes = h.contents
        }
      }
    }
    guard hashed.count == statement.resources.count else {
      throw BundleError(.io, "\(directory): hashing returned an incomplete result")
    }
    return VerifiedBundle(
      directory: directory, files: files, signer: check.signer, rootDigest: Hex.encode(statement.rootDigest),
      requestedModelName: modelName, manifestBytes: manifestBytes, trust: trust, matchedRules: check.matchedRules,
      digests: digests, sealed: sealed)
  }

  /// Checks `model.sig`'s bytes: structure → trust rule for the model name → signer → signature over the DSSE PAE →
  /// signed payload (files/sha256, no symlinks, ignore paths within the defaults, root digest). Only after the
  /// signature verified is the payload parsed.
  static func checkSignature(
    _ sigBytes: [UInt8], trust: TrustPolicy, modelName: String?, now: Date
  ) async throws(BundleError) -> SignatureCheck {
    let envelope = try OMS.parseEnvelope(sigBytes)

    // Which rules' signers produced this signature?
    var deciding: Int? = nil
    if let modelName {
      guard let index = trust.ruleIndex(for: modelName) else {
        throw BundleError(.untrustedSignature, "no trust rule for model '\(modelName)'")
      }
      deciding = index
    }
    let message = OMS.pae(envelope.payload)
    var matched: [Int: SignerDescription] = [:]
    var failures: [Int: String] = [:]
    for (index, rule) in trust.rules.enumerated() {
      switch await evaluate(envelope, message: message, rule: rule, now: now) {
      case .success(let signer): matched[index] = signer
      case .failure(let reason): failures[index] = reason
      }
    }
    let signer: SignerDescription
    if let deciding, let modelName {
      guard let s = matched[deciding] else {
        if !matched.isEmpty {
          let others = matched.keys.sorted().map { "'\(trust.rules[$0].modelPattern)'" }.joined(separator: ", ")
          throw BundleError(
            .untrustedSignature, "signer not allowed for model '\(modelName)' (it is trusted only for \(others))")
        }
        throw BundleError(
          .untrustedSignature, "\(failures[deciding] ?? "signature not verified") (model '\(modelName)')")
      }
      signer = s
    } else {
      guard let first = matched.keys.min(), let s = matched[first] else {
        let reason = failures.keys.min().flatMap { failures[$0] } ?? "the trust policy has no rules"
        throw BundleError(.untrustedSignature, reason)
      }
      signer = s
    }

    // Only now is the payload trusted enough to parse.
    let statement = try OMS.parseStatement(envelope.payload)
    var excluded = statement.ignorePaths.map { [$0] }
    excluded.append([OMS.signatureFileName])
    for r in statement.resources where excluded.contains(where: { r.path.isEqualOrBelow($0) }) {
      throw BundleError(.unsupportedPayload, "\(r.path): signed file lies in an ignored path")
    }
    let matchedRules = deciding.map { Set([$0]) } ?? Set(matched.keys)
    return SignatureCheck(signer: signer, statement: statement, matchedRules: matchedRules, excluded: excluded)
  }

  private enum Evaluation {
    case success(SignerDescription)
    case failure(String)
  }

  /// Checks the envelope's signature against one rule's signers.
  private static func evaluate(_ envelope: OMS.Envelope, message: [UInt8], rule: TrustPolicy.Rule, now: Date) async
    -> Evaluation
  {
    switch envelope.material {
    case .publicKey(let hint):
      let keys = rule.signers.compactMap { if case .publicKey(let k) = $0 { k } else { nil } }
      guard !keys.isEmpty else { return .failure("key-method signature, but no public key is trusted") }
      var candidates = keys
      if let hint, !hint.isEmpty {
        candidates = keys.filter { $0.omsHint.utf8.elementsEqual(hint.utf8) }
        guard !candidates.isEmpty else { return .failure("key hint does not match any trusted public key") }
      }
      guard let key = candidates.first(where: { $0.isValidDERSignature(envelope.signature, for: message) }) else {
        return .failure("signature does not verify with the trusted public key")
      }
      return .success(
        SignerDescription(method: .publicKey, description: "public key \(key.curveName) sha256:\(key.omsHint)"))

    case .certificates(let chain):
      let signers = rule.signers.compactMap {
        if case .certificate(let roots, let id) = $0 { (roots, id) } else { nil }
      }
      guard !signers.isEmpty else {
        return .failure("certificate-method signature, but no certificate signer is trusted")
      }
      guard let leaf = chain.first else { return .failure("empty certificate chain") }
      guard let leafKey = BundlePublicKey(certificateKey: leaf.publicKey) else {
        return .failure("leaf certificate key is not ECDSA P-256, P-384 or P-521")
      }
      var reasons: [String] = []
      for (roots, identity) in signers {
        if let reason = await validateChain(leaf: leaf, intermediates: Array(chain.dropFirst()), roots: roots, now: now)
        {
          reasons.append(reason)
          continue
        }
        if let reason = identity.mismatch(leaf) {
          reasons.append("signer identity not allowed: \(reason)")
          continue
        }
        guard leafKey.isValidDERSignature(envelope.signature, for: message) else {
          return .failure("signature does not verify with the leaf certificate's key")
        }
        return .success(SignerDescription(method: .certificate, description: describe(leaf: leaf, roots: roots)))
      }
      return .failure(reasons.joined(separator: "; "))
    }
  }

  private static func describe(leaf: Certificate, roots: [Certificate]) -> String {
    var text = "certificate \(leaf.subject)"
    if let sans = try? leaf.extensions.subjectAlternativeNames, !Array(sans).isEmpty {
      text += " SAN " + sans.map { "\($0)" }.joined(separator: ",")
    }
    text += ", issuer \(leaf.issuer), serial \(leaf.serialNumber)"
    return text
  }

  /// Nil if `leaf` chains through `intermediates` to one of `roots` under RFC 5280 at `now`, with our extra rules.
  static func validateChain(leaf: Certificate, intermediates: [Certificate], roots: [Certificate], now: Date) async
    -> String?
  {
    var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
      RFC5280Policy(fixedExpiryValidationTime: now)
      CodeSigningChainPolicy()
    }
    let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore(intermediates))
    switch result {
    case .validCertificate:
      return nil
    case .couldNotValidate(let failures):
      if failures.isEmpty {
        return "certificate chain does not lead to a trusted root"
      }
      var seen = Set<String>()
      let reasons = failures.map { $0.policyFailureReason.description }.filter { seen.insert($0).inserted }
      return "certificate chain rejected: " + reasons.joined(separator: "; ")
    }
  }
}

/// Our rules on top of RFC 5280 (stricter than the reference, which accepts KeyUsage digitalSignature alone and
/// validates partial chains never, but checks no purpose):
/// - the leaf must carry ExtendedKeyUsage codeSigning, must not be a CA, and if it has KeyUsage it must allow
///   digitalSignature;
/// - every issuer with a KeyUsage extension must allow keyCertSign;
/// - the chain must end in a self-signed certificate (no partial chains: trusting only an intermediate fails).
struct CodeSigningChainPolicy: VerifierPolicy {
  let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [.X509ExtensionID.extendedKeyUsage]

  func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) -> PolicyEvaluationResult {
    let leaf = chain.leaf
    let eku: ExtendedKeyUsage?
    do {
      eku = try leaf.extensions.extendedKeyUsage
    } catch {
      return .failsToMeetPolicy(reason: "leaf certificate has a malformed ExtendedKeyUsage extension")
    }
    guard let eku, eku.contains(.codeSigning) else {
      return .failsToMeetPolicy(reason: "leaf certificate lacks the codeSigning extended key usage")
    }
    if let ku = try? leaf.extensions.keyUsage, !ku.digitalSignature {
      return .failsToMeetPolicy(reason: "leaf certificate KeyUsage does not allow digitalSignature")
    }
    if let bc = try? leaf.extensions.basicConstraints, case .isCertificateAuthority = bc {
      return .failsToMeetPolicy(reason: "leaf certificate is a CA certificate")
    }
    for issuer in chain.dropFirst() {
      if let ku = try? issuer.extensions.keyUsage, !ku.keyCertSign {
        return .failsToMeetPolicy(reason: "issuer \(issuer.subject) KeyUsage does not allow keyCertSign")
      }
    }
    guard let root = chain.last, chain.count > 1, root.issuer == root.subject,
      root.publicKey.isValidSignature(root.signature, for: root)
    else {
      return .failsToMeetPolicy(reason: "chain does not end in a self-signed root (partial chains are not accepted)")
    }
    return .meetsPolicy
  }
}

extension BundlePublicKey {
  /// The EC key of a certificate, if it is P-256, P-384 or P-521.
  init?(certificateKey: Certificate.PublicKey) {
    if let k = P256.Signing.PublicKey(certificateKey) {
      self = .p256(k)
    } else if let k = P384.Signing.PublicKey(certificateKey) {
      self = .p384(k)
    } else if let k = P521.Signing.PublicKey(certificateKey) {
      self = .p521(k)
    } else {
      return nil
    }
  }
}
