import Crypto
import Foundation
public import Logging
public import PalisadeAudit
public import PalisadeCore
import PalisadeIdentity
import Synchronization

/// Pipeline stage 10: one audit record per decision (calls allowed and refused, model loads, unloads and
/// refusals, reloads, quarantines, attestation, egress blocks) into the tamper-evident ``AuditLog``. Records carry
/// digests of the tensors, never the tensors; the token's id, never the token.
///
/// In `sync` durability `record` returns once the record's group-committed fsync is done, so a response is sent
/// only after its record is on disk.
///
/// Fail closed: no audit, no answer. When the log refuses a record (a write or fsync error: disk full, device
/// error) the auditor turns unavailable: the call whose record failed and every call after it are refused with
/// UNAVAILABLE (``requireAvailable()``, ``callOrRefuse``), `/readyz` and the inference health status say not
/// ready, and `palisade_audit_available` is 0. Meanwhile it reopens the log every `retryInterval` on its own
/// thread, rolled back to the failed writer's last fsync (``AuditDurableEnd``), and appends a `log_opened`
/// record that must reach the disk (``AuditLog/appendDurable(_:)``); once one does, service resumes.
public final class Auditor: Sendable {
  private struct State {
    var log: AuditLog?
    var available = true
    var recovering: Task<Void, Never>?
    var closed = false
  }

  private let state: Mutex<State>
  let logger: Logger
  let metrics: ServerMetrics
  let reopen: (@Sendable (AuditDurableEnd?) throws -> AuditLog)?
  let retryInterval: Duration
  /// Whether records are kept.
  public let isEnabled: Bool

  /// `log` nil: auditing is off (no `audit` section in the config). `reopen` opens the same directory again
  /// (rolled back to the given end) after a failure; without it a failed log stays failed.
  public init(
    log: AuditLog?, metrics: ServerMetrics, logger: Logger,
    reopen: (@Sendable (AuditDurableEnd?) throws -> AuditLog)? = nil, retryInterval: Duration = .seconds(1)
  ) {
    self.state = Mutex(State(log: log))
    self.isEnabled = log != nil
    self.metrics = metrics
    self.logger = logger
    self.reopen = reopen
    self.retryInterval = retryInterval
    if log != nil { metrics.setAuditAvailable(true) }
  }

  /// False while the log is failed and not yet reopened: calls are refused. A writer that failed in the
  /// background (batched durability: no append was waiting) is noticed here, before the next call runs.
  public var isAvailable: Bool {
    let (available, log) = state.withLock { ($0.available, $0.log) }
    guard available else { return false }
    if let log, log.hasFailed {
      failed(log, log.failure ?? .closed)
      return false
    }
    return true
  }

  /// Throws UNAVAILABLE while the log is failed (before any work is done for a call).
  public func requireAvailable() throws(PalisadeError) {
    guard isAvailable else {
      metrics.recordRejection(reason: "audit_unavailable")
      throw Self.unavailable
    }
  }

  static let unavailable = PalisadeError(
    .unavailable, "the audit log is unavailable; calls are refused until it recovers")

  /// The latest signed checkpoint as a C2SP signed note, for attestation evidence.
  public var latestCheckpoint: String? { latestSignedCheckpoint?.note }

  /// The latest signed checkpoint (size, root, note).
  public var latestSignedCheckpoint: SignedCheckpoint? { state.withLock { $0.log }?.latestCheckpoint() }

  /// Writes the last records and a final checkpoint (at shutdown).
  public func close() async {
    let log = state.withLock { s -> AuditLog? in
      s.closed = true
      s.recovering?.cancel()
      s.recovering = nil
      return s.log
    }
    await log?.close()
  }

  /// Appends `record`; waits for durability in `sync` mode. Returns false when the log refused it (the
  /// auditor is then unavailable until the log is reopened).
  @discardableResult
  public func record(_ record: AuditRecord) async -> Bool {
    guard let log = state.withLock({ $0.log }) else { return true }
    do {
      _ = try await log.append(record)
      metrics.recordAudit(success: true)
      return true
    } catch {
      metrics.recordAudit(success: false)
      logger.error("audit record not written", metadata: ["kind": "\(record.kind)", "error": "\(error)"])
      failed(log, error)
      return false
    }
  }

  /// Marks the auditor unavailable after `log` failed and starts reopening it (once).
  private func failed(_ log: AuditLog, _ error: any Error) {
    guard log.failure != nil else { return }  // closed at shutdown, not failed
    let reopen = self.reopen
    let start = state.withLock { s -> Bool in
      guard !s.closed, s.log === log, s.available else { return false }
      s.available = false
      if let reopen { s.recovering = Task { await self.recover(from: log, reopen: reopen) } }
      return true
    }
    guard start else { return }
    metrics.setAuditAvailable(false)
    metrics.recordAuditFailure()
    logger.critical(
      "audit log failed: refusing calls until it can be written again",
      metadata: ["error": "\(error)", "reopening": "\(reopen != nil)"])
  }

  /// Reopens the log until a probe record reaches the disk, then swaps it in.
  private func recover(from failed: AuditLog, reopen: @escaping @Sendable (AuditDurableEnd?) throws -> AuditLog) async {
    var end = failed.durableEnd
    let cause = failed.failure.map { "\($0)" } ?? "unknown"
    var attempts = 0
    while !Task.isCancelled {
      do { try await Task.sleep(for: retryInterval) } catch { return }
      attempts += 1
      // Opening reads and hashes the whole log: off the executor's threads (they are the event loops).
      let attempt = await withCheckedContinuation { (c: CheckedContinuation<Result<AuditLog, any Error>, Never>) in
        DispatchQueue.global().async { [end] in c.resume(returning: Result { try reopen(end) }) }
      }
      let fresh: AuditLog
      switch attempt {
      case .success(let log): fresh = log
      case .failure(let error):
        if attempts == 1 || attempts % 30 == 0 {
          logger.error("audit log not reopened yet", metadata: ["error": "\(error)", "attempts": "\(attempts)"])
        }
        continue
      }
      do {
        _ = try await fresh.appendDurable(
          AuditRecord(
            kind: .logOpened, principal: "palisade", status: "OK", reason: "reopened after a write or fsync failure",
            details: [
              "failure": String(cause.prefix(300)), "rolled_back_bytes": String(fresh.recovery.rolledBackBytes),
              "records": String(fresh.recovery.recordCount),
            ]))
      } catch {
        end = fresh.durableEnd
        await fresh.close()
        if attempts == 1 || attempts % 30 == 0 {
          logger.error("audit log still not writable", metadata: ["error": "\(error)", "attempts": "\(attempts)"])
        }
        continue
      }
      let installed = state.withLock { s -> Bool in
        guard !s.closed else { return false }
        s.log = fresh
        s.available = true
        s.recovering = nil
        return true
      }
      guard installed else {
        await fresh.close()
        return
      }
      metrics.setAuditAvailable(true)
      metrics.recordAuditRecovery()
      logger.notice(
        "audit log writable again: serving resumes",
        metadata: [
          "rolled_back_bytes": "\(fresh.recovery.rolledBackBytes)", "records": "\(fresh.recovery.recordCount)",
          "attempts": "\(attempts)",
        ])
      return
    }
  }

  /// A call's record, from its context.
  @discardableResult
  public func call(
    _ call: CallContext?, rpc: String, model: String? = nil, version: String? = nil, manifestDigest: String? = nil,
    inputs: [Tensor]? = nil, outputs: [Tensor]? = nil, status: String, reason: String? = nil, latency: Duration? = nil
  ) async -> Bool {
    guard isEnabled else { return true }
    return await record(
      AuditRecord(
        kind: .call, principal: call?.identity.spiffeID.description,
        certificateThumbprint: call.map { Self.hex($0.identity.thumbprint) }, tokenID: call?.token?.tokenID, rpc: rpc,
        model: model?.boundedForRecord, version: version?.boundedForRecord, manifestDigest: manifestDigest,
        inputSHA256: inputs.map(Self.digest),
        outputSHA256: outputs.map(Self.digest), status: status, reason: reason,
        latencyMicros: latency.map {
          $0.components.seconds * 1_000_000 + $0.components.attoseconds / 1_000_000_000_000
        },
        requestID: call?.requestID))
  }

  /// An event that is not a call (loads, reloads, quarantines, egress blocks).
  public func event(
    _ kind: AuditRecord.Kind, principal: String? = nil, model: String? = nil, version: String? = nil,
    manifestDigest: String? = nil, status: String? = nil, reason: String? = nil, details: [String: String] = [:]
  ) async {
    guard isEnabled else { return }
    await record(
      AuditRecord(
        kind: kind, principal: principal, model: model, version: version, manifestDigest: manifestDigest,
        status: status,
        reason: reason, details: details))
  }

  /// ``call(_:rpc:model:version:manifestDigest:inputs:outputs:status:reason:latency:)`` for a call that is
  /// about to be answered: when its record is not written, the answer is withheld (UNAVAILABLE).
  public func callOrRefuse(
    _ call: CallContext?, rpc: String, model: String? = nil, version: String? = nil, manifestDigest: String? = nil,
    inputs: [Tensor]? = nil, outputs: [Tensor]? = nil, status: String, reason: String? = nil, latency: Duration? = nil
  ) async throws(PalisadeError) {
    let written = await self.call(
      call, rpc: rpc, model: model, version: version, manifestDigest: manifestDigest, inputs: inputs,
      outputs: outputs, status: status, reason: reason, latency: latency)
    guard written else {
      metrics.recordRejection(reason: "audit_unavailable")
      throw Self.unavailable
    }
  }

  /// SHA-256 over the tensors' names, datatypes, shapes and bytes, in order: equal inputs give equal digests.
  static func digest(_ tensors: [Tensor]) -> String {
    var hasher = SHA256()
    for t in tensors {
      // "name\0DATATYPE\0[d0, d1]\0", the bytes of "\(t.shape)" written without string interpolation (an
      // array's description goes through the printing machinery: microseconds per call).
      var header: [UInt8] = []
      header.reserveCapacity(t.name.utf8.count + 32)
      header.append(contentsOf: t.name.utf8)
      header.append(0)
      header.append(contentsOf: t.datatype.rawValue.utf8)
      header.append(0)
      header.append(UInt8(ascii: "["))
      for (i, d) in t.shape.enumerated() {
        if i > 0 { header.append(contentsOf: [UInt8(ascii: ","), UInt8(ascii: " ")]) }
        header.append(contentsOf: String(d).utf8)
      }
      header.append(UInt8(ascii: "]"))
      header.append(0)
      hasher.update(data: header)
      switch t.storage {
      case .fixed(let raw): hasher.update(data: raw)
      case .bytes(let elements):
        for e in elements {
          var n = UInt32(e.count).littleEndian
          withUnsafeBytes(of: &n) { hasher.update(bufferPointer: $0) }
          hasher.update(data: e)
        }
      }
    }
    return hex(hasher.finalize())
  }

  /// Lower-case hex, as `hexString` spells it, written into one buffer: three of these run for every audited
  /// call, and building the string two characters at a time (`String(radix:)` and appends) cost ~2 µs each.
  static func hex(_ bytes: some Sequence<UInt8>) -> String {
    let digits: StaticString = "0123456789abcdef"
    var out: [UInt8] = []
    out.reserveCapacity(64)
    digits.withUTF8Buffer { d in
      for b in bytes {
        out.append(d[Int(b >> 4)])
        out.append(d[Int(b & 15)])
      }
    }
    return String(decoding: out, as: UTF8.self)
  }
}
