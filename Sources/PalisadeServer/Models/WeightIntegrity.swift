import Foundation
public import Logging
public import PalisadeBundle
public import PalisadeCore
public import ServiceLifecycle
import Synchronization

/// Runtime integrity: every verified file of every loaded bundle (the model file and its external data alike) is
/// kept in read-only memory (`SealedBytes`: the very pages the runtime parsed, read once during verification) and
/// re-hashed every `interval` against the digests their signature covers. A mismatch marks that model version
/// unavailable (UNAVAILABLE to callers, with the reason in RepositoryIndex), raises
/// `palisade_integrity_failures_total` and is audited. Loading the bundle again (RepositoryModelLoad) re-verifies it
/// from disk.
public final class IntegrityMonitor: Service, Sendable {
  /// One verified file to keep checking.
  public struct TrackedFile: Sendable {
    public let name: String
    /// Lowercase hex SHA-256 from the signature.
    public let sha256: String
    public let bytes: SealedBytes
    public init(name: String, sha256: String, bytes: SealedBytes) {
      self.name = name
      self.sha256 = sha256
      self.bytes = bytes
    }
  }

  struct Entry: Sendable {
    let model: String
    let version: String
    let file: String
    let expected: String
    let bytes: SealedBytes
  }

  let interval: Duration
  let repository: ModelRepository
  let metrics: ServerMetrics
  let auditor: Auditor
  let logger: Logger
  private let entries = Mutex<[Entry]>([])

  public init(interval: Duration, repository: ModelRepository, metrics: ServerMetrics, auditor: Auditor, logger: Logger)
  {
    self.interval = interval
    self.repository = repository
    self.metrics = metrics
    self.auditor = auditor
    self.logger = logger
  }

  /// Checks `files` of a loaded model version from now on, replacing whatever was tracked for the model before.
  func track(model: String, version: String, files: [TrackedFile]) {
    entries.withLock { e in
      e.removeAll { $0.model == model }
      e.append(
        contentsOf: files.map {
          Entry(model: model, version: version, file: $0.name, expected: $0.sha256, bytes: $0.bytes)
        })
    }
  }

  /// Stops checking a model (unloaded).
  func forget(model: String) { entries.withLock { $0.removeAll { $0.model == model } } }

  /// The files tracked for `model` (names, in load order).
  public func trackedFiles(model: String) -> [String] {
    entries.withLock { $0.filter { $0.model == model }.map(\.file) }
  }

  /// Re-hashes every tracked file now; returns the models that failed.
  @discardableResult
  public func checkNow() async -> [String] {
    let current = entries.withLock { $0 }
    var failed: [String] = []
    var done = Set<String>()
    for entry in current where !done.contains(entry.model) && entry.bytes.sha256() != entry.expected {
      done.insert(entry.model)
      failed.append(entry.model)
      entries.withLock { $0.removeAll { $0.model == entry.model && $0.version == entry.version } }
      let reason = "integrity check failed: \(entry.file) in memory no longer matches its signed digest"
      repository.setState(name: entry.model, version: entry.version, .unavailable, reason: reason)
      metrics.recordIntegrityFailure(model: entry.model)
      logger.critical(
        "model weights changed in memory",
        metadata: ["model": "\(entry.model)", "version": "\(entry.version)", "file": "\(entry.file)"])
      await auditor.event(
        .integrityFailure, model: entry.model, version: entry.version, status: "UNAVAILABLE", reason: reason)
    }
    return failed
  }

  /// Test hook: corrupts one byte of a tracked file of `model` (the first one, or the one named `file`).
  public func corruptForTesting(model: String, file: String? = nil, offset: Int = 0) {
    entries.withLock { $0.first { $0.model == model && (file == nil || $0.file == file) } }?.bytes.flipByteForTesting(
      at: offset)
  }

  public func run() async throws {
    // Graceful shutdown cancels the wait at once instead of letting it hold the shutdown for `interval`.
    do {
      try await cancelWhenGracefulShutdown {
        while true {
          try await Task.sleep(for: self.interval)
          await self.checkNow()
        }
      }
    } catch is CancellationError {
      return
    }
  }
}
