/// Turns a verified model file into a ``ServableModel``: the seam where the inference engine plugs in.
///
/// Runtimes only ever see bytes whose signature and digest were verified; they must still treat them as
/// untrusted input (fail with an error, never crash, on malformed data).
public protocol ModelRuntime: Sendable {
  /// Model file extensions this runtime loads, e.g. `["onnx"]`.
  var fileExtensions: [String] { get }
  /// Builds a model from `bytes` (the file named in the manifest), with `descriptor` from the manifest.
  /// `directory` holds the bundle's other verified files (external data).
  func load(modelFile bytes: [UInt8], directory: String, descriptor: ModelDescriptor) async throws -> any ServableModel
}
