import Crypto
import Foundation
public import Logging
public import PalisadeCore
public import ServiceLifecycle
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A copy of verified bytes in pages the process cannot write: mapped anonymously, filled, then `mprotect`ed
/// read-only, so a stray write faults instead of silently changing a model's weights.
final class ReadOnlyBytes: @unchecked Sendable {
  private let base: UnsafeMutableRawPointer
  private let mapped: Int
  let count: Int

  init?(_ bytes: [UInt8]) {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    mapped = max(page, (bytes.count + page - 1) / page * page)
    guard let p = mmap(nil, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
      return nil
    }
    base = p
    count = bytes.count
    bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(base), byteCount: bytes.count) }
    guard mprotect(base, mapped, PROT_READ) == 0 else {
      munmap(base, mapped)
      return nil
    }
  }

  deinit { munmap(base, mapped) }

  /// SHA-256 of the bytes, lower-case hex.
  func sha256() -> String {
    hexString(SHA256.hash(data: UnsafeRawBufferPointer(start: base, count: count)))
  }

  /// Test hook: flips one byte, briefly lifting the protection (what a memory fault or an attacker with a write
  /// primitive would do).
  func flipByteForTesting(at offset: Int) {
    guard offset >= 0, offset < count else { return }
    mprotect(base, mapped, PROT_READ | PROT_WRITE)
    base.storeBytes(of: base.load(fromByteOffset: offset, as: UInt8.self) ^ 0x01, toByteOffset: offset, as: UInt8.self)
    mprotect(base, mapped, PROT_READ)
  }
}

/// Runtime integrity: the verified model files of every loaded bundle are kept in read-only memory and re-hashed
/// every `interval` against the digests their signature covers. A mismatch marks that model version unavailable
/// (UNAVAILABLE to callers, with the reason in RepositoryIndex), raises `palisade_integrity_failures_total` and is
/// audited. Loading the bundle again (RepositoryModelLoad) re-verifies it from disk.
public final class IntegrityMonitor: Service, Sendable {
  struct Entry: Sendable {
    let model: String
    let version: String
    let file: String
    let expected: String
    let bytes: ReadOnlyBytes
  }

  let interval: Duration
  let repository: ModelRepository
  let metrics: ServerMetrics
  let auditor: Auditor
  let logger: Logger
  private let entries = Mutex<[Entry]>([])

  public init(interval: Duration, repository: ModelRepository, metrics: ServerMetrics, auditor: Auditor, logger: Logger) {
    self.interval = interval
    self.repository = repository
    self.metrics = metrics
    self.auditor = auditor
    self.logger = logger
  }

  /// Keeps a read-only copy of a verified file of a loaded model (replacing the model's earlier versions).
  func track(model: String, version: String, file: String, sha256: String, bytes: [UInt8]) {
    guard let copy = ReadOnlyBytes(bytes) else {
      logger.warning("cannot map read-only memory for integrity checks", metadata: ["model": "\(model)"])
      return
    }
    entries.withLock { e in
      e.removeAll { $0.model == model && ($0.version != version || $0.file == file) }
      e.append(Entry(model: model, version: version, file: file, expected: sha256, bytes: copy))
    }
  }

  /// Stops checking a model (unloaded).
  func forget(model: String) { entries.withLock { $0.removeAll { $0.model == model } } }

  /// Re-hashes every tracked file now; returns the models that failed.
  @discardableResult
  public func checkNow() async -> [String] {
    let current = entries.withLock { $0 }
    var failed: [String] = []
    for entry in current where entry.bytes.sha256() != entry.expected {
      failed.append(entry.model)
      entries.withLock { $0.removeAll { $0.model == entry.model && $0.version == entry.version } }
      let reason = "integrity check failed: \(entry.file) in memory no longer matches its signed digest"
      repository.setState(name: entry.model, version: entry.version, .unavailable, reason: reason)
      metrics.recordIntegrityFailure(model: entry.model)
      logger.critical("model weights changed in memory", metadata: ["model": "\(entry.model)", "version": "\(entry.version)", "file": "\(entry.file)"])
      await auditor.event(.integrityFailure, model: entry.model, version: entry.version, status: "UNAVAILABLE", reason: reason)
    }
    return failed
  }

  /// Test hook: corrupts one byte of a tracked file of `model`.
  public func corruptForTesting(model: String, offset: Int = 0) {
    entries.withLock { $0.first { $0.model == model } }?.bytes.flipByteForTesting(at: offset)
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
