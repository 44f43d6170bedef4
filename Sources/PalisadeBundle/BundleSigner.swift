import Foundation
public import X509

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Signs bundle directories in the OMS format, key or certificate method. The output verifies with
/// `model_signing verify key|certificate` (1.1.1) and with `BundleVerifier`.
public enum BundleSigner {
  /// What was signed.
  public struct Result: Sendable {
    /// Path of the written `model.sig`.
    public let signaturePath: String
    /// The signed files in resource order (relative names).
    public let files: [String]
    /// Root digest (lowercase hex).
    public let rootDigest: String
  }

  /// Convenience for the CLI: the key as PEM (PKCS#8 or SEC1) and, for the certificate method, the chain as PEM text
  /// (leaf first, then intermediates, concatenated).
  @discardableResult
  public static func sign(directory: String, keyPEM: String, certificateChainPEM: String? = nil)
    async throws(BundleError) -> Result
  {
    let key = try BundleSigningKey(pem: keyPEM)
    var chain: [Certificate]? = nil
    if let certificateChainPEM {
      do {
        chain = try PEMDocument.parseMultiple(pemString: certificateChainPEM).map { try Certificate(pemDocument: $0) }
      } catch {
        throw BundleError(.invalidInput, "certificate chain: not PEM certificates")
      }
    }
    return try await sign(directory: directory, key: key, certificateChain: chain)
  }

  /// Signs every regular file below `directory` (except the default ignore paths, `model.sig` included) and writes
  /// `directory/model.sig` atomically.
  ///
  /// - Parameters:
  ///   - key: the signing key (see `BundleSigningKey(pem:)`).
  ///   - certificateChain: `nil` for the key method (the signature carries the key hint); otherwise the certificate
  ///     method with `[leaf, intermediates…]`, the leaf's key must be `key`'s public key.
  /// - Throws: `BundleError` if the directory holds a symlink or special file anywhere, or the chain does not fit.
  @discardableResult
  public static func sign(
    directory: String, key: BundleSigningKey, certificateChain: [Certificate]? = nil,
    maxConcurrentHashes: Int = BundleVerifier.defaultHashConcurrency
  ) async throws(BundleError) -> Result {
    let material: String
    if let chain = certificateChain {
      guard let leaf = chain.first else { throw BundleError(.invalidInput, "certificate chain is empty") }
      guard let leafKey = BundlePublicKey(certificateKey: leaf.publicKey), leafKey == key.publicKey else {
        throw BundleError(.invalidInput, "the leaf certificate's public key does not match the signing key")
      }
      var ders: [[UInt8]] = []
      for certificate in chain {
        var serializer = DER.Serializer()
        do {
          try serializer.serialize(certificate)
        } catch {
          throw BundleError(.invalidInput, "certificate \(certificate.subject) cannot be DER-encoded")
        }
        ders.append(serializer.serializedBytes)
      }
      material = OMS.certificateMaterial(ders)
    } else {
      material = OMS.publicKeyMaterial(hint: key.publicKey.omsHint)
    }

    let ignore = defaultIgnorePaths
    let rootFD = try FileTree.openDirectory(directory)
    defer { close(rootFD) }
    let files = try FileTree.regularFiles(rootFD: rootFD, label: directory, excluding: ignore.map { [$0] })
      .sorted(by: RelativePath.omsOrder)
    let hashed = try await FileTree.hashFiles(
      rootFD: rootFD, label: directory, files, maxConcurrent: maxConcurrentHashes)
    let resources = hashed.map { OMS.Resource(path: $0.path, digest: $0.digest) }
    let subject = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
    let payload = OMS.statementJSON(subjectName: subject, resources: resources, ignorePaths: ignore)
    let signature = try key.signDER(OMS.pae(payload))
    let sigPath = (directory as NSString).appendingPathComponent(OMS.signatureFileName)
    try FileTree.writeAtomically(
      OMS.signatureFileJSON(material: material, payload: payload, signature: signature), to: sigPath)
    return Result(
      signaturePath: sigPath, files: files.map(\.name),
      rootDigest: Hex.encode(OMS.rootDigest(resources.map(\.digest))))
  }
}

import SwiftASN1
