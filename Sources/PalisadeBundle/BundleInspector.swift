import Foundation
import X509

/// What `model.sig` claims, read **without** verifying it: for `palisade bundle inspect` and diagnostics only.
/// Never use this to decide anything; `BundleVerifier.verify` is the only path to trusted content.
public struct UnverifiedSignatureSummary: Sendable {
  /// `key` or `certificate`.
  public let method: SignerDescription.Method
  /// The key hint (key method), if present.
  public let keyHint: String?
  /// Subjects of the embedded certificates, leaf first (certificate method).
  public let certificateSubjects: [String]
  /// The claimed resources: name and lowercase hex SHA-256, in signed order.
  public let resources: [(name: String, sha256: String)]
  public let ignorePaths: [String]
  public let rootDigest: String
}

public enum BundleInspector {
  /// Parses `directory/model.sig` and its payload with the verifier's strict rules, but checks no signature,
  /// trust or file. Every value in the result is a claim.
  public static func unverifiedSignatureSummary(directory: String) throws(BundleError) -> UnverifiedSignatureSummary {
    let rootFD = try FileTree.openDirectory(directory)
    defer { close(rootFD) }
    let bytes = try FileTree.readSmallFile(
      dirFD: rootFD, name: OMS.signatureFileName, limit: OMS.maxSignatureFileBytes, kind: .malformedSignature,
      label: OMS.signatureFileName)
    let envelope = try OMS.parseEnvelope(bytes)
    let statement = try OMS.parseStatement(envelope.payload)
    let resources = statement.resources.map { (name: $0.path.name, sha256: Hex.encode($0.digest)) }
    switch envelope.material {
    case .publicKey(let hint):
      return UnverifiedSignatureSummary(
        method: .publicKey, keyHint: hint, certificateSubjects: [], resources: resources,
        ignorePaths: statement.ignorePaths,
        rootDigest: Hex.encode(statement.rootDigest))
    case .certificates(let chain):
      return UnverifiedSignatureSummary(
        method: .certificate, keyHint: nil, certificateSubjects: chain.map { "\($0.subject)" }, resources: resources,
        ignorePaths: statement.ignorePaths, rootDigest: Hex.encode(statement.rootDigest))
    }
  }
}
