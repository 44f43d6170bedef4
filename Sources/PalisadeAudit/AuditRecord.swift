public import Foundation
import Crypto

/// One audit record: one decision of the server (a call allowed or denied, a model loaded or refused, a reload, a
/// quarantine, an egress block, an integrity failure). It carries digests and identifiers, never tensor data,
/// tokens or keys.
///
/// Its leaf in the Merkle tree is the record's canonical JSON (`canonicalJSON()`): keys sorted by their UTF-8
/// bytes, no whitespace, absent fields omitted, strings escaped as RFC 8785 (JCS) does, integers in decimal.
/// The JSON key of each field is given in its documentation.
public struct AuditRecord: Codable, Sendable, Equatable {
  /// What happened. Unknown kinds read from a log are kept as they are (`.other`).
  public enum Kind: Sendable, Hashable, Codable, CustomStringConvertible {
    case call, modelLoad, modelUnload, modelRefused, credentialReload, policyReload, quarantine, quarantineLifted
    case egressBlock, integrityFailure, attestation, logOpened
    case other(String)

    static let names: [(Kind, String)] = [
      (.call, "call"), (.modelLoad, "model_load"), (.modelUnload, "model_unload"), (.modelRefused, "model_refused"),
      (.credentialReload, "credential_reload"), (.policyReload, "policy_reload"), (.quarantine, "quarantine"),
      (.quarantineLifted, "quarantine_lifted"), (.egressBlock, "egress_block"),
      (.integrityFailure, "integrity_failure"), (.attestation, "attestation"), (.logOpened, "log_opened"),
    ]

    /// The wire name, e.g. `model_load`.
    public var description: String {
      if case .other(let s) = self { return s }
      return Self.names.first { $0.0 == self }?.1 ?? "other"
    }

    public init(_ name: String) { self = Self.names.first { $0.1 == name }?.0 ?? .other(name) }
    public init(from decoder: any Decoder) throws { self.init(try decoder.singleValueContainer().decode(String.self)) }
    public func encode(to encoder: any Encoder) throws {
      var c = encoder.singleValueContainer()
      try c.encode(description)
    }
  }

  /// `kind`.
  public var kind: Kind
  /// `time`: microseconds since the Unix epoch, written as RFC 3339 UTC with six fractional digits.
  public var timeMicros: Int64
  /// `principal`: the caller's SPIFFE ID (or the operator / component for non-call records).
  public var principal: String?
  /// `cert_sha256`: hex SHA-256 thumbprint of the caller's leaf certificate.
  public var certificateThumbprint: String?
  /// `token_id`: the token's `jti`.
  public var tokenID: String?
  /// `rpc`: e.g. `ModelInfer`.
  public var rpc: String?
  /// `model`.
  public var model: String?
  /// `version`.
  public var version: String?
  /// `manifest_sha256`: hex digest of the bundle manifest.
  public var manifestDigest: String?
  /// `input_sha256`: hex SHA-256 of the request's input bytes.
  public var inputSHA256: String?
  /// `output_sha256`: hex SHA-256 of the response's output bytes.
  public var outputSHA256: String?
  /// `status`: the gRPC status code name, e.g. `OK`, `PERMISSION_DENIED`.
  public var status: String?
  /// `reason`: why (the deciding rule, the refusal); never data.
  public var reason: String?
  /// `latency_us`.
  public var latencyMicros: Int64?
  /// `request_id`.
  public var requestID: String?
  /// `details`: anything else, as strings.
  public var details: [String: String]

  public init(
    kind: Kind, time: Date = Date(), principal: String? = nil, certificateThumbprint: String? = nil,
    tokenID: String? = nil, rpc: String? = nil, model: String? = nil, version: String? = nil,
    manifestDigest: String? = nil, inputSHA256: String? = nil, outputSHA256: String? = nil, status: String? = nil,
    reason: String? = nil, latencyMicros: Int64? = nil, requestID: String? = nil, details: [String: String] = [:]
  ) {
    self.kind = kind
    self.timeMicros = Int64((time.timeIntervalSince1970 * 1_000_000).rounded(.down))
    self.principal = principal
    self.certificateThumbprint = certificateThumbprint
    self.tokenID = tokenID
    self.rpc = rpc
    self.model = model
    self.version = version
    self.manifestDigest = manifestDigest
    self.inputSHA256 = inputSHA256
    self.outputSHA256 = outputSHA256
    self.status = status
    self.reason = reason
    self.latencyMicros = latencyMicros
    self.requestID = requestID
    self.details = details
  }

  /// `time` as a `Date`.
  public var time: Date { Date(timeIntervalSince1970: Double(timeMicros) / 1_000_000) }

  /// Lowercase hex SHA-256 of `bytes`, the form of `inputSHA256`, `outputSHA256` and the other digests.
  public static func sha256Hex(_ bytes: some DataProtocol) -> String {
    let digits: [UInt8] = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(64)
    for b in SHA256.hash(data: bytes) {
      out.append(digits[Int(b >> 4)])
      out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
  }

  enum CodingKeys: String, CodingKey, CaseIterable {
    case kind, time, principal, rpc, model, version, status, reason, details
    case certificateThumbprint = "cert_sha256"
    case tokenID = "token_id"
    case manifestDigest = "manifest_sha256"
    case inputSHA256 = "input_sha256"
    case outputSHA256 = "output_sha256"
    case latencyMicros = "latency_us"
    case requestID = "request_id"
  }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    kind = try c.decode(Kind.self, forKey: .kind)
    let t = try c.decode(String.self, forKey: .time)
    guard let micros = RFC3339Micros.parse(t) else {
      throw DecodingError.dataCorruptedError(
        forKey: .time, in: c, debugDescription: "time \(t) is not RFC 3339 UTC with six fractional digits")
    }
    timeMicros = micros
    principal = try c.decodeIfPresent(String.self, forKey: .principal)
    certificateThumbprint = try c.decodeIfPresent(String.self, forKey: .certificateThumbprint)
    tokenID = try c.decodeIfPresent(String.self, forKey: .tokenID)
    rpc = try c.decodeIfPresent(String.self, forKey: .rpc)
    model = try c.decodeIfPresent(String.self, forKey: .model)
    version = try c.decodeIfPresent(String.self, forKey: .version)
    manifestDigest = try c.decodeIfPresent(String.self, forKey: .manifestDigest)
    inputSHA256 = try c.decodeIfPresent(String.self, forKey: .inputSHA256)
    outputSHA256 = try c.decodeIfPresent(String.self, forKey: .outputSHA256)
    status = try c.decodeIfPresent(String.self, forKey: .status)
    reason = try c.decodeIfPresent(String.self, forKey: .reason)
    latencyMicros = try c.decodeIfPresent(Int64.self, forKey: .latencyMicros)
    requestID = try c.decodeIfPresent(String.self, forKey: .requestID)
    details = try c.decodeIfPresent([String: String].self, forKey: .details) ?? [:]
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(kind, forKey: .kind)
    try c.encode(RFC3339Micros.format(timeMicros), forKey: .time)
    try c.encodeIfPresent(principal, forKey: .principal)
    try c.encodeIfPresent(certificateThumbprint, forKey: .certificateThumbprint)
    try c.encodeIfPresent(tokenID, forKey: .tokenID)
    try c.encodeIfPresent(rpc, forKey: .rpc)
    try c.encodeIfPresent(model, forKey: .model)
    try c.encodeIfPresent(version, forKey: .version)
    try c.encodeIfPresent(manifestDigest, forKey: .manifestDigest)
    try c.encodeIfPresent(inputSHA256, forKey: .inputSHA256)
    try c.encodeIfPresent(outputSHA256, forKey: .outputSHA256)
    try c.encodeIfPresent(status, forKey: .status)
    try c.encodeIfPresent(reason, forKey: .reason)
    try c.encodeIfPresent(latencyMicros, forKey: .latencyMicros)
    try c.encodeIfPresent(requestID, forKey: .requestID)
    if !details.isEmpty { try c.encode(details, forKey: .details) }
  }

  /// The canonical JSON bytes: the Merkle leaf data. Hand-written rather than JSONEncoder so that it is
  /// deterministic by construction and cheap on the request path.
  public func canonicalJSON() -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(640)
    var first = true
    // Fields in the byte order of their keys (checked by a test), so nothing is sorted per record.
    func key(_ k: StaticString) {
      out.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
      first = false
      out.append(UInt8(ascii: "\""))
      k.withUTF8Buffer { out.append(contentsOf: $0) }
      out.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
    }
    func string(_ k: StaticString, _ value: String?) {
      guard let value else { return }
      key(k)
      CanonicalJSON.appendString(value, to: &out)
    }
    string("cert_sha256", certificateThumbprint)
    if !details.isEmpty {
      key("details")
      out.append(UInt8(ascii: "{"))
      let keys = details.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
      for (j, k) in keys.enumerated() {
        if j > 0 { out.append(UInt8(ascii: ",")) }
        CanonicalJSON.appendString(k, to: &out)
        out.append(UInt8(ascii: ":"))
        CanonicalJSON.appendString(details[k] ?? "", to: &out)
      }
      out.append(UInt8(ascii: "}"))
    }
    string("input_sha256", inputSHA256)
    string("kind", kind.description)
    if let latencyMicros {
      key("latency_us")
      out.append(contentsOf: String(latencyMicros).utf8)
    }
    string("manifest_sha256", manifestDigest)
    string("model", model)
    string("output_sha256", outputSHA256)
    string("principal", principal)
    string("reason", reason)
    string("request_id", requestID)
    string("rpc", rpc)
    string("status", status)
    string("time", RFC3339Micros.format(timeMicros))
    string("token_id", tokenID)
    string("version", version)
    out.append(UInt8(ascii: "}"))
    return out
  }

  /// The JSON keys in the order `canonicalJSON()` writes them.
  static let keyOrder = [
    "cert_sha256", "details", "input_sha256", "kind", "latency_us", "manifest_sha256", "model", "output_sha256",
    "principal", "reason", "request_id", "rpc", "status", "time", "token_id", "version",
  ]

  /// Decodes canonical JSON and refuses anything that is not exactly what `canonicalJSON()` would write
  /// (reordered keys, whitespace, other escapes, unknown fields), so a record has one byte form.
  public static func decodeCanonical(_ bytes: [UInt8]) throws -> AuditRecord {
    let record: AuditRecord
    do { record = try JSONDecoder().decode(AuditRecord.self, from: Data(bytes)) } catch {
      throw AuditError.malformedRecord("not an audit record: \(error)")
    }
    guard record.canonicalJSON() == bytes else {
      throw AuditError.malformedRecord(
        "record JSON is not in canonical form (sorted keys, no whitespace, JCS escapes, no unknown fields)")
    }
    return record
  }
}

enum CanonicalJSON {
  private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

  /// RFC 8785 string form: `"` and `\` escaped, \b \t \n \f \r short forms, other controls as \u00xx, the rest
  /// as UTF-8.
  static func appendString(_ s: String, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    // Most strings (IDs, digests, names) need no escape: copy their bytes at once.
    let copied: Bool? = s.utf8.withContiguousStorageIfAvailable { bytes in
      for b in bytes where b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") { return false }
      out.append(contentsOf: bytes)
      return true
    }
    if copied == true {
      out.append(UInt8(ascii: "\""))
      return
    }
    for b in s.utf8 {
      switch b {
      case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
      case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
      case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
      case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
      case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
      case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
      case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
      case 0..<0x20:
        out.append(contentsOf: [
          0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 15)],
        ])
      default: out.append(b)
      }
    }
    out.append(UInt8(ascii: "\""))
  }
}

/// `2026-11-27T05:08:07.123456Z` ⇄ microseconds since the epoch, exactly.
enum RFC3339Micros {
  static func format(_ micros: Int64) -> String {
    let seconds = micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000
    let frac = micros - seconds * 1_000_000
    var days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
    let secOfDay = seconds - days * 86_400
    // Howard Hinnant's civil_from_days.
    days += 719_468
    let era = (days >= 0 ? days : days - 146_096) / 146_097
    let doe = days - era * 146_097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let d = doy - (153 * mp + 2) / 5 + 1
    let m = mp < 10 ? mp + 3 : mp - 9
    let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
    // Fixed width: 27 ASCII bytes written in place (no intermediate arrays; this runs for every record).
    return String(unsafeUninitializedCapacity: 27) { b in
      func digits(_ v: Int64, _ width: Int, at offset: Int) {
        var v = v
        var i = offset + width - 1
        while i >= offset {
          b[i] = UInt8(truncatingIfNeeded: 0x30 + v % 10)
          v /= 10
          i -= 1
        }
      }
      digits(y, 4, at: 0)
      b[4] = UInt8(ascii: "-")
      digits(m, 2, at: 5)
      b[7] = UInt8(ascii: "-")
      digits(d, 2, at: 8)
      b[10] = UInt8(ascii: "T")
      digits(secOfDay / 3600, 2, at: 11)
      b[13] = UInt8(ascii: ":")
      digits(secOfDay / 60 % 60, 2, at: 14)
      b[16] = UInt8(ascii: ":")
      digits(secOfDay % 60, 2, at: 17)
      b[19] = UInt8(ascii: ".")
      digits(frac, 6, at: 20)
      b[26] = UInt8(ascii: "Z")
      return 27
    }
  }

  static func parse(_ s: String) -> Int64? {
    let b = Array(s.utf8)
    guard b.count == 27, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"), b[10] == UInt8(ascii: "T"),
      b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"), b[19] == UInt8(ascii: "."), b[26] == UInt8(ascii: "Z")
    else { return nil }
    func num(_ r: Range<Int>) -> Int64? {
      var v: Int64 = 0
      for i in r {
        guard b[i] >= 0x30, b[i] <= 0x39 else { return nil }
        v = v * 10 + Int64(b[i] - 0x30)
      }
      return v
    }
    guard let y = num(0..<4), let m = num(5..<7), let d = num(8..<10), let hh = num(11..<13), let mm = num(14..<16),
      let ss = num(17..<19), let frac = num(20..<26), (1...12).contains(m), (1...31).contains(d), hh < 24, mm < 60,
      ss < 60
    else { return nil }
    // days_from_civil.
    let yy = m <= 2 ? y - 1 : y
    let era = (yy >= 0 ? yy : yy - 399) / 400
    let yoe = yy - era * 400
    let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    let days = era * 146_097 + doe - 719_468
    let micros = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + frac
    // Refuse dates like 02-31 by requiring the round trip.
    return format(micros) == s ? micros : nil
  }
}
