/// The bytes of one verified bundle file, as the loader hands them to a runtime: exactly the bytes whose digest the
/// signature covers, read once during verification (in the server: read-only pages that the integrity monitor
/// re-hashes). A runtime reads them through this and never opens files itself.
public protocol ModelFileBytes: Sendable {
  var count: Int { get }
  /// Runs `body` over the bytes, which it must not retain or write.
  func withBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R
}

extension Array: ModelFileBytes where Element == UInt8 {
  public func withBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
    // Array's own withUnsafeBytes is rethrows; keep the typed error through a Result.
    let result: Result<R, E> = withUnsafeBytes { raw in
      do throws(E) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try result.get()
  }
}

/// A bundle's verified files for a runtime: the model file (named in the manifest) and every other signed file by
/// its path relative to the bundle root (`/`-separated), e.g. ONNX external data.
public struct ModelFiles: Sendable {
  /// The manifest's `model_file`, relative to the bundle root.
  public let modelFileName: String
  /// Every verified file by relative path, the model file included.
  public let files: [String: any ModelFileBytes]

  public init(modelFileName: String, files: [String: any ModelFileBytes]) {
    self.modelFileName = modelFileName
    self.files = files
  }

  /// The model file's bytes (nil if it is not among `files`).
  public var modelFile: (any ModelFileBytes)? { files[modelFileName] }

  /// The other files below the model file's directory, keyed by their path relative to it (how ONNX names external
  /// data). Files elsewhere in the bundle are not included.
  public var siblingsOfModelFile: [String: any ModelFileBytes] {
    let parts = modelFileName.split(separator: "/", omittingEmptySubsequences: false)
    let prefix = parts.dropLast().map { $0 + "/" }.joined()
    var out: [String: any ModelFileBytes] = [:]
    for (name, bytes) in files where name != modelFileName && name.hasPrefix(prefix) {
      out[String(name.dropFirst(prefix.count))] = bytes
    }
    return out
  }
}

/// Turns a verified model file into a ``ServableModel``: the seam where the inference engine plugs in.
///
/// Runtimes only ever see bytes whose signature and digest were verified, handed over in memory (never a path to
/// read again); they must still treat them as untrusted input (fail with an error, never crash, on malformed data).
public protocol ModelRuntime: Sendable {
  /// Model file extensions this runtime loads, e.g. `["onnx"]`.
  var fileExtensions: [String] { get }
  /// Builds a model from `files.modelFile` (the file named in the manifest) and, if it refers to any, the other
  /// verified files in `files`; with `descriptor` from the manifest.
  func load(files: ModelFiles, descriptor: ModelDescriptor) async throws -> any ServableModel
  /// Models this runtime built that are still in memory (nil: not counted). Unloaded versions must leave this
  /// count once their last call finished; the server exports it as `palisade_models_in_memory`.
  var modelsInMemory: Int? { get }
}

extension ModelRuntime {
  public var modelsInMemory: Int? { nil }
}
