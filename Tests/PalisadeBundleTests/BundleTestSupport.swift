import Crypto
import Foundation
import SwiftASN1
import Testing
import X509

@testable import PalisadeBundle

/// A temporary directory removed when the value is deinitialised.
final class TempDir: @unchecked Sendable {
  let path: String

  init(_ label: String = "bundle") throws {
    path = FileManager.default.temporaryDirectory.appendingPathComponent("palisade-\(label)-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  }

  deinit {
    // Extracted files are 0400 in 0700 dirs: removable by the owner.
    try? FileManager.default.removeItem(atPath: path)
  }

  func sub(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

  @discardableResult
  func write(_ relative: String, _ bytes: [UInt8]) throws -> String {
    let full = sub(relative)
    try FileManager.default.createDirectory(
      atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data(bytes).write(to: URL(fileURLWithPath: full))
    return full
  }

  @discardableResult
  func write(_ relative: String, _ text: String) throws -> String { try write(relative, Array(text.utf8)) }

  func read(_ relative: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: sub(relative)))) }
}

/// Manifest JSON for tests, with overridable fields.
func manifestJSON(
  name: String = "digits", version: Int = 3, created: String = "2019-01-01T00:00:00Z",
  expires: String = "2099-01-01T00:00:00Z",
  extra: String = "",
  modelFile: String = "model.onnx"
) -> String {
  """
  {
    "schema": "palisade.bundle/v1",
    "name": "\(name)",
    "version": \(version),
    "created": "\(created)",
    "expires": "\(expires)",
    "model_file": "\(modelFile)",
    "inputs": [
      {"name": "pixels", "datatype": "FP32", "shape": [-1, 4],
       "feature_range": {"min": [0, 0, 0, 0], "max": [16, 16, 16, 16]},
       "reference_statistics": {"mean": [1, 2, 3, 4], "std": [1, 1, 1, 1], "covariance_diagonal": [1, 1, 1, 1]}}
    ],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    "labels": ["a", "b", "c"],
    "output_policy": {"top_k": 2, "round_decimals": 3, "label_only": false, "pad_to_bucket_bytes": 64},
    "screening_policy": {"ood_threshold": 6.5, "action": "flag"},
    "max_batch": 8,
    "canary_tokens": ["canary-1"]\(extra)
  }
  """
}

/// A small bundle directory: model, manifest, a nested file and an empty file.
func makeBundleDirectory(in temp: TempDir, name: String = "bundle", manifest: String = manifestJSON()) throws -> String
{
  let dir = temp.sub(name)
  try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  let t = dir as NSString
  try Data((0..<5000).map { UInt8($0 % 251) }).write(to: URL(fileURLWithPath: t.appendingPathComponent("model.onnx")))
  try Data(manifest.utf8).write(to: URL(fileURLWithPath: t.appendingPathComponent("manifest.json")))
  try FileManager.default.createDirectory(
    atPath: t.appendingPathComponent("sub/deeper"), withIntermediateDirectories: true)
  try Data("notes".utf8).write(to: URL(fileURLWithPath: t.appendingPathComponent("sub/deeper/notes.md")))
  try Data("tok".utf8).write(to: URL(fileURLWithPath: t.appendingPathComponent("sub.json")))
  try Data().write(to: URL(fileURLWithPath: t.appendingPathComponent("empty.dat")))
  return dir
}

enum Curve: CaseIterable, Sendable {
  case p256, p384, p521
}

/// A key pair on `curve` and its PEM forms.
struct TestKey: Sendable {
  let signing: BundleSigningKey
  let privatePEM: String
  let publicPEM: String
  let certificateKey: Certificate.PrivateKey
  let certificatePublicKey: Certificate.PublicKey

  init(_ curve: Curve = .p256) {
    switch curve {
    case .p256:
      let k = P256.Signing.PrivateKey()
      signing = .p256(k)
      privatePEM = k.pemRepresentation
      publicPEM = k.publicKey.pemRepresentation
      certificateKey = Certificate.PrivateKey(k)
      certificatePublicKey = Certificate.PublicKey(k.publicKey)
    case .p384:
      let k = P384.Signing.PrivateKey()
      signing = .p384(k)
      privatePEM = k.pemRepresentation
      publicPEM = k.publicKey.pemRepresentation
      certificateKey = Certificate.PrivateKey(k)
      certificatePublicKey = Certificate.PublicKey(k.publicKey)
    case .p521:
      let k = P521.Signing.PrivateKey()
      signing = .p521(k)
      privatePEM = k.pemRepresentation
      publicPEM = k.publicKey.pemRepresentation
      certificateKey = Certificate.PrivateKey(k)
      certificatePublicKey = Certificate.PublicKey(k.publicKey)
    }
  }

  var publicKey: BundlePublicKey { signing.publicKey }
}

/// An in-process PKI: root → intermediate → code-signing leaves.
struct TestCA: Sendable {
  let root: Certificate
  let rootKey: TestKey
  let intermediate: Certificate
  let intermediateKey: TestKey

  init(name: String = "Palisade Test") throws {
    rootKey = TestKey(.p384)
    intermediateKey = TestKey(.p256)
    let now = Date()
    root = try Self.certificate(
      subject: "\(name) Root", issuer: "\(name) Root", key: rootKey.certificatePublicKey,
      signer: rootKey.certificateKey,
      notBefore: now.addingTimeInterval(-86_400), notAfter: now.addingTimeInterval(10 * 86_400), ca: true)
    intermediate = try Self.certificate(
      subject: "\(name) Intermediate", issuer: "\(name) Root", key: intermediateKey.certificatePublicKey,
      signer: rootKey.certificateKey, notBefore: now.addingTimeInterval(-86_400),
      notAfter: now.addingTimeInterval(5 * 86_400),
      ca: true)
  }

  enum LeafUsage { case codeSigning, serverAuthOnly }

  /// A leaf issued by the intermediate.
  func leaf(
    key: TestKey, commonName: String = "publisher",
    sans: [GeneralName] = [.uniformResourceIdentifier("spiffe://example.org/publisher")],
    usage: LeafUsage = .codeSigning, notBefore: Date = Date().addingTimeInterval(-3600),
    notAfter: Date = Date().addingTimeInterval(86_400)
  ) throws -> Certificate {
    try Self.certificate(
      subject: try DistinguishedName { CommonName(commonName) }, issuer: intermediate.subject,
      key: key.certificatePublicKey, signer: intermediateKey.certificateKey,
      notBefore: notBefore, notAfter: notAfter, ca: false, sans: sans, usage: usage)
  }

  static func certificate(
    subject: String, issuer: String, key: Certificate.PublicKey, signer: Certificate.PrivateKey, notBefore: Date,
    notAfter: Date, ca: Bool, sans: [GeneralName] = [], usage: LeafUsage = .codeSigning
  ) throws -> Certificate {
    try certificate(
      subject: try DistinguishedName { CommonName(subject) }, issuer: try DistinguishedName { CommonName(issuer) },
      key: key,
      signer: signer, notBefore: notBefore, notAfter: notAfter, ca: ca, sans: sans, usage: usage)
  }

  static func certificate(
    subject: DistinguishedName, issuer: DistinguishedName, key: Certificate.PublicKey, signer: Certificate.PrivateKey,
    notBefore: Date, notAfter: Date, ca: Bool, sans: [GeneralName] = [], usage: LeafUsage = .codeSigning
  ) throws -> Certificate {
    try Certificate(
      version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key, notValidBefore: notBefore,
      notValidAfter: notAfter, issuer: issuer, subject: subject, signatureAlgorithm: signatureAlgorithm(for: signer),
      extensions: try Certificate.Extensions {
        Critical(
          ca ? BasicConstraints.isCertificateAuthority(maxPathLength: nil) : BasicConstraints.notCertificateAuthority)
        if ca {
          Critical(KeyUsage(keyCertSign: true, cRLSign: true))
        } else {
          Critical(KeyUsage(digitalSignature: true))
          if !sans.isEmpty { SubjectAlternativeNames(sans) }
          switch usage {
          case .codeSigning: try ExtendedKeyUsage([.codeSigning])
          case .serverAuthOnly: try ExtendedKeyUsage([.serverAuth])
          }
        }
      },
      issuerPrivateKey: signer)
  }

  static func signatureAlgorithm(for key: Certificate.PrivateKey) -> Certificate.SignatureAlgorithm {
    switch key.publicKey.subjectPublicKeyInfoBytes.count {
    case 120: .ecdsaWithSHA384
    case 158: .ecdsaWithSHA512
    default: .ecdsaWithSHA256
    }
  }
}

func pem(_ certificate: Certificate) throws -> String { try certificate.serializeAsPEM().pemString + "\n" }

/// Runs `body` and returns the BundleError it throws (failing the test if none, or another type).
func expectBundleError(
  _ body: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation
) async -> BundleError? {
  do {
    try await body()
    Issue.record("expected a BundleError, but the call succeeded", sourceLocation: sourceLocation)
    return nil
  } catch let error as BundleError {
    return error
  } catch {
    Issue.record("expected a BundleError, got \(error)", sourceLocation: sourceLocation)
    return nil
  }
}

/// Expects a refusal whose reason contains `fragment`.
func expectRefused(
  _ fragment: String, kind: BundleError.Kind? = nil, sourceLocation: SourceLocation = #_sourceLocation,
  _ body: () async throws -> Void
) async {
  guard let error = await expectBundleError(body, sourceLocation: sourceLocation) else { return }
  #expect(error.reason.contains(fragment), "reason was: \(error.reason)", sourceLocation: sourceLocation)
  if let kind {
    #expect(error.kind == kind, "kind was \(error.kind) (\(error.reason))", sourceLocation: sourceLocation)
  }
}
