import Crypto
public import Foundation
public import Logging
public import PalisadeAudit
public import PalisadeCore
import PalisadeIdentity

/// Pipeline stage 10: one audit record per decision (calls allowed and refused, model loads, unloads and
/// refusals, reloads, quarantines, attestation, egress blocks) into the tamper-evident ``AuditLog``. Records carry
/// digests of the tensors, never the tensors; the token's id, never the token.
///
/// In `sync` durability `record` returns once the record's group-committed fsync is done, so a response is sent
/// only after its record is on disk. When the log refuses a record (its queue is full, the disk failed), the
/// failure is logged and counted: the call has already been decided, and failing it would turn an audit outage
/// into a denial of service.
public final class Auditor: Sendable {
  let log: AuditLog?
  let logger: Logger
  let metrics: ServerMetrics

  /// `log` nil: auditing is off (no `audit` section in the config).
  public init(log: AuditLog?, metrics: ServerMetrics, logger: Logger) {
    self.log = log
    self.metrics = metrics
    self.logger = logger
  }

  /// Whether records are kept.
  public var isEnabled: Bool { log != nil }

  /// The latest signed checkpoint as a C2SP signed note, for attestation evidence.
  public var latestCheckpoint: String? { log?.latestCheckpoint()?.note }

  /// Writes the last records and a final checkpoint (at shutdown).
  public func close() async { await log?.close() }

  /// Appends `record`; waits for durability in `sync` mode.
  public func record(_ record: AuditRecord) async {
    guard let log else { return }
    do {
      _ = try await log.append(record)
      metrics.recordAudit(success: true)
    } catch {
      metrics.recordAudit(success: false)
      logger.error("audit record not written", metadata: ["kind": "\(record.kind)", "error": "\(error)"])
    }
  }

  /// A call's record, from its context.
  public func call(
    _ call: CallContext?, rpc: String, model: String? = nil, version: String? = nil, manifestDigest: String? = nil,
    inputs: [Tensor]? = nil, outputs: [Tensor]? = nil, status: String, reason: String? = nil, latency: Duration? = nil
  ) async {
    guard log != nil else { return }
    await record(
      AuditRecord(
        kind: .call, principal: call?.identity.spiffeID.description,
        certificateThumbprint: call.map { Self.hex($0.identity.thumbprint) }, tokenID: call?.token?.tokenID, rpc: rpc,
        model: model, version: version, manifestDigest: manifestDigest, inputSHA256: inputs.map(Self.digest),
        outputSHA256: outputs.map(Self.digest), status: status, reason: reason,
        latencyMicros: latency.map { $0.components.seconds * 1_000_000 + $0.components.attoseconds / 1_000_000_000_000 },
        requestID: call?.requestID))
  }

  /// An event that is not a call (loads, reloads, quarantines, egress blocks).
  public func event(
    _ kind: AuditRecord.Kind, principal: String? = nil, model: String? = nil, version: String? = nil,
    manifestDigest: String? = nil, status: String? = nil, reason: String? = nil, details: [String: String] = [:]
  ) async {
    guard log != nil else { return }
    await record(
      AuditRecord(
        kind: kind, principal: principal, model: model, version: version, manifestDigest: manifestDigest, status: status,
        reason: reason, details: details))
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
