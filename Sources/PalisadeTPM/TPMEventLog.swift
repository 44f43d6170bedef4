import Foundation
import Crypto

/// The measurement event log: every extend Palisade made to its application PCR, in order (docs/attestation.md).
///
/// Each event names a measured item and its SHA-256 (`kind` "measure"), or says the item went away ("remove", e.g.
/// a model version unloaded). What was extended is
/// `SHA-256("palisade-measurement/v1\n" || kind || "\n" || name || "\n" || digest)` (UTF-8, digest in lower-case
/// hex, empty for "remove"), so a verifier in any language recomputes it from the event alone, and
/// `PCR := SHA-256(PCR || extend)` from `initial` (zeros after TPM2_PCR_Reset) gives the quoted value. Replaying the
/// events in order also gives the measured state: item name -> digest.
public struct TPMEventLog: Codable, Sendable, Equatable {
  public struct Event: Codable, Sendable, Equatable {
    public var kind: String
    public var name: String
    public var digest: String
    /// Hex of the 32 bytes extended (what a verifier recomputes and checks).
    public var extend: String
    public init(kind: String, name: String, digest: String) {
      self.kind = kind
      self.name = name
      self.digest = digest
      self.extend = Self.hex(Self.extendValue(kind: kind, name: name, digest: digest))
    }

    public static func extendValue(kind: String, name: String, digest: String) -> [UInt8] {
      Array(SHA256.hash(data: Array("palisade-measurement/v1\n\(kind)\n\(name)\n\(digest)".utf8)))
    }
    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }
  }

  public var version = 1
  public var pcr: Int
  public var hash = "sha256"
  /// The PCR value before the first event, hex (zeros when Palisade reset the PCR at start).
  public var initial: String
  public var events: [Event] = []

  public init(pcr: Int, initial: [UInt8]) {
    self.pcr = pcr
    self.initial = Event.hex(initial)
  }

  public enum ReplayError: Error, Sendable, Equatable, CustomStringConvertible {
    case malformed(String)
    public var description: String {
      switch self {
      case .malformed(let m): "event log: \(m)"
      }
    }
  }

  /// Replays the log: the PCR value it produces and the measured state (name -> digest) at its end. Refuses events
  /// whose `extend` is not what their content says.
  public func replay() throws(ReplayError) -> (pcr: [UInt8], state: [String: String]) {
    guard version == 1, hash == "sha256" else { throw .malformed("unknown version or hash") }
    guard let start = Self.unhex(initial), start.count == 32 else { throw .malformed("initial is not 32 bytes of hex") }
    var value = start
    var state: [String: String] = [:]
    for (i, e) in events.enumerated() {
      let expected = Event.extendValue(kind: e.kind, name: e.name, digest: e.digest)
      guard Self.unhex(e.extend) == expected else {
        throw .malformed("event \(i) (\(e.name)): extend does not match its content")
      }
      switch e.kind {
      case "measure": state[e.name] = e.digest
      case "remove": state[e.name] = nil
      default: throw .malformed("event \(i): unknown kind \(e.kind)")
      }
      value = Array(SHA256.hash(data: value + expected))
    }
    return (value, state)
  }

  public func json() -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
  }

  public static func parse(_ text: String) throws(ReplayError) -> TPMEventLog {
    do { return try JSONDecoder().decode(TPMEventLog.self, from: Data(text.utf8)) } catch {
      throw .malformed("not the documented JSON")
    }
  }

  public static func unhex(_ s: String) -> [UInt8]? {
    let chars = Array(s.utf8)
    guard chars.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(chars.count / 2)
    var i = 0
    while i < chars.count {
      guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
      out.append(hi << 4 | lo)
      i += 2
    }
    return out
  }
  static func nibble(_ c: UInt8) -> UInt8? {
    switch c {
    case 48...57: c - 48
    case 97...102: c - 87
    case 65...70: c - 55
    default: nil
    }
  }
}
