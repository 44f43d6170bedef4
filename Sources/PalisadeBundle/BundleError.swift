/// Every failure of the bundle library: a category the caller can act on, and a precise reason that names the file,
/// field or rule involved (e.g. `model.onnx: digest mismatch`, `signer not allowed for model 'digits'`).
///
/// Reasons never contain file contents or key material, only names, paths and short identifiers, so they can be logged
/// and shown to operators as they are.
public struct BundleError: Error, Sendable, Hashable, CustomStringConvertible {
  /// What went wrong, coarsely. The `reason` says exactly what.
  public enum Kind: String, Sendable, Hashable {
    /// `model.sig` is missing, unreadable, or not the expected Sigstore/DSSE/in-toto structure.
    case malformedSignature
    /// The signature does not verify, or no trusted signer matches (key, hint, chain, identity, trust rule).
    case untrustedSignature
    /// The signed payload asks for something this verifier refuses (method, hash, ignore paths, symlinks).
    case unsupportedPayload
    /// The directory does not match the signed file set (missing, extra, changed file; links; special files).
    case contentMismatch
    /// `manifest.json` is missing, malformed, inconsistent, or names the wrong model.
    case invalidManifest
    /// The bundle's `expires` is in the past.
    case expired
    /// The bundle's version is older than the last one accepted for its name.
    case rollback
    /// A `.tar.zst` archive is malformed, unsafe, or exceeds a limit.
    case unsafeArchive
    /// Bad input to the signer or the trust policy (keys, certificates, patterns).
    case invalidInput
    /// A file system operation failed.
    case io
  }

  public let kind: Kind
  public let reason: String

  public init(_ kind: Kind, _ reason: String) {
    self.kind = kind
    self.reason = reason
  }

  public var description: String { reason }
}

extension BundleError {
  /// Runs `body` (typically a closure through a `rethrows` API, which erases typed throws) and restores the type.
  static func typed<T>(_ body: () throws -> T) throws(BundleError) -> T {
    do {
      return try body()
    } catch let error as BundleError {
      throw error
    } catch {
      throw BundleError(.io, "unexpected error: \(error)")
    }
  }

  static func io(_ path: String, _ what: String, errno code: Int32) -> BundleError {
    BundleError(.io, "\(path): \(what) failed: \(String(cString: strerror(code)))")
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif
