import Crypto
import Foundation
import PalisadeBundle
import PalisadeCore

/// A test-only runtime for `.testmodel` files (JSON naming a test model), so that bundle loading, verification
/// and hot swap are exercised before and independently of the ONNX engine. Never part of the product.
public struct TestRuntime: ModelRuntime {
  public init() {}
  public var fileExtensions: [String] { ["testmodel"] }

  public func load(files: ModelFiles, descriptor: ModelDescriptor) async throws -> any ServableModel {
    guard let file = files.modelFile else { throw PalisadeError(.failedPrecondition, "no model file") }
    let bytes = file.withBytes { Array($0) }
    guard let spec = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: String], let kind = spec["kind"]
    else {
      throw PalisadeError(.failedPrecondition, "not a test model")
    }
    switch kind {
    case "addsub":
      return Described(descriptor: descriptor, inner: AddSubModel(name: descriptor.name, version: descriptor.version))
    case "slow":
      return Described(
        descriptor: descriptor,
        inner: SlowModel(name: descriptor.name, delay: .milliseconds(Int(spec["ms"] ?? "50") ?? 50)))
    case "classify":
      return Described(
        descriptor: descriptor,
        inner: ClassifierModel(
          version: descriptor.version, roll: Int(spec["roll"] ?? "0") ?? 0,
          delay: .milliseconds(Int(spec["ms"] ?? "0") ?? 0),
          failOnNonZero: spec["fail"] == "1", nonFinite: spec["nan"] == "1"))
    default: throw PalisadeError(.failedPrecondition, "unknown test model kind")
    }
  }

  struct Described: ServableModel {
    let descriptor: ModelDescriptor
    let inner: any ServableModel
    func infer(_ request: InferenceRequest) async throws -> [Tensor] { try await inner.infer(request) }
  }
}

/// Makes signed bundles in the `<dir>/<name>/<version>/` layout.
public struct TestBundleFactory: Sendable {
  public let key = P256.Signing.PrivateKey()
  public var publicKeyPEM: String { key.publicKey.pemRepresentation }

  public init() {}

  /// Writes and signs the `simple` add/sub model as `<root>/<name>/<version>/`.
  @discardableResult
  public func make(
    root: String, name: String = "simple", version: Int, kind: String = "addsub",
    expires: Date = Date().addingTimeInterval(86_400), signer: P256.Signing.PrivateKey? = nil
  ) async throws -> String {
    let dir = "\(root)/\(name)/\(version)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try Data(#"{"kind": "\#(kind)"}"#.utf8).write(to: URL(fileURLWithPath: "\(dir)/model.testmodel"))
    let manifest: BundleManifest
    if kind == "slow" {
      manifest = BundleManifest(
        name: name, version: version, created: Date().addingTimeInterval(-60), expires: expires,
        modelFile: "model.testmodel", inputs: [.init(name: "IN", datatype: .fp32, shape: [-1])],
        outputs: [.init(name: "OUT", datatype: .fp32, shape: [-1])])
    } else {
      manifest = BundleManifest(
        name: name, version: version, created: Date().addingTimeInterval(-60), expires: expires,
        modelFile: "model.testmodel",
        inputs: [
          .init(name: "INPUT0", datatype: .int32, shape: [1, 16]),
          .init(name: "INPUT1", datatype: .int32, shape: [1, 16]),
        ],
        outputs: [
          .init(name: "OUTPUT0", datatype: .int32, shape: [1, 16]),
          .init(name: "OUTPUT1", datatype: .int32, shape: [1, 16]),
        ])
    }
    try Data(try manifest.encodedJSON()).write(to: URL(fileURLWithPath: "\(dir)/manifest.json"))
    _ = try await BundleSigner.sign(directory: dir, key: .p256(signer ?? key))
    return dir
  }
}

extension TestBundleFactory {
  /// Writes and signs a ``ClassifierModel`` bundle as `<root>/<name>/<version>/`: `spec` holds its knobs (`roll`,
  /// `ms`, `fail`, `nan`), all in the signed model file.
  @discardableResult
  public func makeClassifier(root: String, name: String, version: Int, spec: [String: String] = [:]) async throws
    -> String
  {
    let dir = "\(root)/\(name)/\(version)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var fields = spec
    fields["kind"] = "classify"
    try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys]).write(
      to: URL(fileURLWithPath: "\(dir)/model.testmodel"))
    let manifest = BundleManifest(
      name: name, version: version, created: Date().addingTimeInterval(-60), expires: Date().addingTimeInterval(86_400),
      modelFile: "model.testmodel", inputs: [.init(name: "IN", datatype: .fp32, shape: [-1, 4])],
      outputs: [.init(name: "SCORES", datatype: .fp32, shape: [-1, 4])])
    try Data(try manifest.encodedJSON()).write(to: URL(fileURLWithPath: "\(dir)/manifest.json"))
    _ = try await BundleSigner.sign(directory: dir, key: .p256(key))
    return dir
  }
}
