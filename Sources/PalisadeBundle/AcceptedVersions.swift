import Foundation
import Synchronization

/// Rollback protection: the highest version accepted per model name, persisted in a small JSON state file
/// (`{"digits": 5}`) that is rewritten atomically (temp file in the same directory, fsync, rename, fsync directory).
///
/// A corrupt state file is an error, never treated as empty: starting from nothing would re-open the door to
/// rollbacks.
public final class AcceptedVersions: Sendable {
  public let path: String
  private let state: Mutex<[String: Int]>

  /// Loads `path`; a missing file means nothing was accepted yet.
  public init(path: String) throws(BundleError) {
    self.path = path
    var versions: [String: Int] = [:]
    if FileManager.default.fileExists(atPath: path) {
      let bytes = try FileTree.readSmallFile(path, limit: 16 << 20, kind: .io, label: path)
      let root: JSONValue
      do {
        root = try StrictJSONParser.parse(bytes)
      } catch {
        throw BundleError(.io, "\(path): corrupt accepted-versions state (\(error.message) at byte \(error.offset))")
      }
      guard case .object(let members) = root else {
        throw BundleError(.io, "\(path): corrupt accepted-versions state (not an object)")
      }
      for (name, value) in members {
        guard case .number(_, let v) = value, v >= 1, v <= Double(Int32.max) * 1e6, let version = Int(exactly: v) else {
          throw BundleError(
            .io, "\(path): corrupt accepted-versions state (version of '\(name)' is not a positive integer)")
        }
        versions[name] = version
      }
    }
    state = Mutex(versions)
  }

  /// The highest accepted version of `name`, if any.
  public func acceptedVersion(of name: String) -> Int? {
    state.withLock { $0[name] }
  }

  /// Throws if `version` is lower than the accepted one. Equal is fine (a restart reloads the same bundle).
  public func check(name: String, version: Int) throws(BundleError) {
    if let accepted = acceptedVersion(of: name), version < accepted {
      throw Self.rollbackError(name: name, version: version, accepted: accepted)
    }
  }

  /// Checks `version` and, if it is newer, records it and persists the state before returning.
  public func checkAndRecord(name: String, version: Int) throws(BundleError) {
    let result: Result<Void, BundleError> = state.withLock { versions in
      if let accepted = versions[name] {
        if version < accepted { return .failure(Self.rollbackError(name: name, version: version, accepted: accepted)) }
        if version == accepted { return .success(()) }
      }
      var updated = versions
      updated[name] = version
      do {
        // Persist under the lock so concurrent recorders cannot write an older snapshot last.
        try FileTree.writeAtomically(Self.encode(updated), to: path, mode: 0o600)
      } catch let error as BundleError {
        return .failure(error)
      } catch {
        return .failure(BundleError(.io, "\(path): \(error)"))
      }
      versions = updated
      return .success(())
    }
    try result.get()
  }

  private static func rollbackError(name: String, version: Int, accepted: Int) -> BundleError {
    BundleError(.rollback, "version \(version) of '\(name)' is older than the accepted \(accepted)")
  }

  private static func encode(_ versions: [String: Int]) -> [UInt8] {
    let body = versions.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
      .map { "  \(OMS.quote($0)): \(versions[$0] ?? 0)" }
      .joined(separator: ",\n")
    return Array((versions.isEmpty ? "{}\n" : "{\n\(body)\n}\n").utf8)
  }
}
