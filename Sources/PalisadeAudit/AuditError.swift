#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Why the audit log, a checkpoint, a key or a proof cannot be used. Messages name the file, offset, record or
/// field; they never carry record contents.
public enum AuditError: Error, CustomStringConvertible, Sendable, Equatable {
  /// The configuration is unusable (the field is named).
  case configuration(String)
  /// A file cannot be read, written or synced.
  case io(path: String, operation: String, errno: Int32)
  /// Damage that is not a torn tail: refused at open, reported by the verifier.
  case corrupt(segment: String, offset: UInt64, index: UInt64?, reason: String)
  /// A record's bytes are not a canonical audit record.
  case malformedRecord(String)
  /// A key file is unusable.
  case key(path: String, reason: String)
  /// A checkpoint note is malformed or its signature does not verify.
  case checkpoint(String)
  /// The log failed earlier (a write or fsync error) and refuses further appends; the cause is kept.
  case failed(String)
  /// The log is closed.
  case closed
  /// Another writer (process or `AuditLog`) has the directory open.
  case inUse(String)
  /// A proof was asked for sizes or indices the log does not have.
  case proof(String)

  public var description: String {
    switch self {
    case .configuration(let s): return "audit configuration: \(s)"
    case .io(let path, let op, let e): return "\(path): \(op) failed: \(String(cString: strerror(e)))"
    case .corrupt(let seg, let off, let idx, let reason):
      return "\(seg) at offset \(off)\(idx.map { " (record \($0))" } ?? ""): \(reason)"
    case .malformedRecord(let s): return s
    case .key(let path, let reason): return "audit key \(path): \(reason)"
    case .checkpoint(let s): return "checkpoint: \(s)"
    case .failed(let s): return "audit log failed earlier and refuses appends: \(s)"
    case .closed: return "audit log is closed"
    case .inUse(let dir): return "\(dir) is in use by another audit log writer"
    case .proof(let s): return "proof: \(s)"
    }
  }
}
