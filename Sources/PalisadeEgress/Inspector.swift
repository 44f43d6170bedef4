import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Something in a request that must not leave. `detail` says what and where, never the data itself.
public struct Finding: Sendable, Equatable {
  public var reason: BlockReason
  /// `url`, `header` or `body`.
  public var location: String
  public var detail: String
}

/// A canary token and where it came from.
public struct Canary: Sendable {
  public var bytes: [UInt8]
  /// "configured #2" or "bundle digits v3": safe to log.
  public var source: String
  public init(_ token: String, source: String) {
    bytes = Array(token.utf8)
    self.source = source
  }
}

/// Looks through a request's URL, headers and body for canaries, secrets, high-entropy runs and model weights,
/// directly and inside base64 and hex runs (decoded at every alignment).
public final class Inspector: Sendable {
  let settings: EgressConfig.Inspection
  let canaries: [Canary]
  let secretFingerprints: [[UInt8]: Int]
  let weights: WeightIndex?

  public init(settings: EgressConfig.Inspection, canaries: [Canary], weights: WeightIndex?) {
    self.settings = settings
    self.canaries = canaries
    var fingerprints: [[UInt8]: Int] = [:]
    for (i, s) in settings.secretSHA256.enumerated() {
      var bytes: [UInt8] = []
      var chars = Array(s.utf8)[...]
      while chars.count >= 2, let hi = Self.hexValue(chars[chars.startIndex]),
        let lo = Self.hexValue(chars[chars.startIndex + 1])
      {
        bytes.append(hi << 4 | lo)
        chars = chars.dropFirst(2)
      }
      fingerprints[bytes] = i + 1
    }
    self.secretFingerprints = fingerprints
    self.weights = weights
  }

  /// The first finding in the request, or nil when it may leave.
  public func inspect(uri: String, headers: [(String, String)], body: [UInt8]) -> Finding? {
    var uriBytes = Array(uri.utf8)
    if let decoded = uri.replacingOccurrences(of: "+", with: " ").removingPercentEncoding, decoded != uri {
      uriBytes += [0x0A] + Array(decoded.utf8)
    }
    if let f = scan(uriBytes, location: "url", decoded: nil) { return f }
    for (name, value) in headers {
      if let f = scan(Array("\(name): \(value)".utf8), location: "header", decoded: nil) { return f }
    }
    return scan(body, location: "body", decoded: nil)
  }

  /// Scans `bytes`; `decoded` names the encoding when these bytes came out of a decoder (no further decoding then).
  func scan(_ bytes: [UInt8], location: String, decoded: String?) -> Finding? {
    let suffix = decoded.map { " (\($0)-decoded)" } ?? ""
    func finding(_ r: BlockReason, _ d: String) -> Finding { Finding(reason: r, location: location, detail: d + suffix) }
    return bytes.withUnsafeBytes { raw -> Finding? in
      for c in canaries where Self.find(c.bytes, in: raw, from: 0) != nil {
        return finding(.canary, "canary token (\(c.source))")
      }
      if settings.blockPrivateKeys, Self.containsPrivateKey(raw) { return finding(.privateKey, "PEM private key block") }
      if settings.blockJWTs, Self.containsJWT(raw) { return finding(.jwt, "JWT-shaped token") }
      if !secretFingerprints.isEmpty, let n = matchSecret(raw) {
        return finding(.secret, "secret with configured fingerprint #\(n)")
      }
      if let w = weights, let source = w.firstMatch(in: raw) { return finding(.modelWeights, "model weights of \(source)") }
      if decoded == nil {
        if let f = scanRuns(raw, location: location) { return f }
      }
      return nil
    }
  }

  // MARK: runs: base64 and hex, decoded and measured

  private static let base64Values: [Int8] = {
    var t = [Int8](repeating: -1, count: 256)
    for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8.enumerated() { t[Int(c)] = Int8(i) }
    t[Int(UInt8(ascii: "+"))] = 62
    t[Int(UInt8(ascii: "-"))] = 62
    t[Int(UInt8(ascii: "/"))] = 63
    t[Int(UInt8(ascii: "_"))] = 63
    return t
  }()

  private static func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case 48...57: c - 48
    case 65...70: c - 55
    case 97...102: c - 87
    default: nil
    }
  }

  /// Smallest run worth decoding: shorter runs are ordinary words and numbers.
  private var minDecodeChars: Int { 16 }

  private func scanRuns(_ raw: UnsafeRawBufferPointer, location: String) -> Finding? {
    let table = Self.base64Values
    let n = raw.count
    // One buffer for every run: most runs are short words, and an allocation per run would dominate.
    var values: [UInt8] = []
    values.reserveCapacity(256)
    var i = 0
    // Base64 runs (line breaks inside a run are skipped, as MIME wraps at 76).
    while i < n {
      guard table[Int(raw[i])] >= 0 else {
        i += 1
        continue
      }
      values.removeAll(keepingCapacity: true)
      var j = i
      while j < n {
        let c = raw[j]
        let v = table[Int(c)]
        if v >= 0 {
          values.append(UInt8(v))
        } else if c != 0x0A && c != 0x0D && c != UInt8(ascii: "=") {
          // Padding ends a block but continuing keeps concatenated blocks together; line breaks are skipped.
          break
        }
        j += 1
      }
      if values.count >= minDecodeChars {
        if settings.decodeBase64 {
          for align in 0..<4 where values.count - align >= 4 {
            let decodedBytes = Self.decodeBase64(values, from: align)
            if let f = scan(decodedBytes, location: location, decoded: "base64") { return f }
          }
        }
        if settings.highEntropy.enabled, values.count >= settings.highEntropy.minLength {
          let bits = Self.entropy(values, symbols: 64)
          if bits >= settings.highEntropy.minBitsPerChar {
            return Finding(
              reason: .highEntropy, location: location,
              detail: "base64-like run of \(values.count) characters at \(String(format: "%.2f", bits)) bits per character")
          }
        }
      }
      i = j + 1
    }
    guard settings.decodeHex || settings.highEntropy.enabled else { return nil }
    i = 0
    while i < n {
      guard Self.hexValue(raw[i]) != nil else {
        i += 1
        continue
      }
      values.removeAll(keepingCapacity: true)
      var j = i
      while j < n, let v = Self.hexValue(raw[j]) {
        values.append(v)
        j += 1
      }
      if values.count >= minDecodeChars * 2 {
        if settings.decodeHex {
          for align in 0..<2 {
            var out: [UInt8] = []
            out.reserveCapacity(values.count / 2)
            var k = align
            while k + 1 < values.count {
              out.append(values[k] << 4 | values[k + 1])
              k += 2
            }
            if let f = scan(out, location: location, decoded: "hex") { return f }
          }
        }
        // Hex carries 4 bits per character where base64 carries 6: the threshold moves down by 2.
        if settings.highEntropy.enabled, values.count >= settings.highEntropy.minLength {
          let bits = Self.entropy(values, symbols: 16)
          if bits >= settings.highEntropy.minBitsPerChar - 2 {
            return Finding(
              reason: .highEntropy, location: location,
              detail: "hex run of \(values.count) characters at \(String(format: "%.2f", bits)) bits per character")
          }
        }
      }
      i = j + 1
    }
    return nil
  }

  static func decodeBase64(_ values: [UInt8], from start: Int) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity((values.count - start) * 3 / 4)
    var k = start
    while k + 3 < values.count {
      let v = UInt32(values[k]) << 18 | UInt32(values[k + 1]) << 12 | UInt32(values[k + 2]) << 6 | UInt32(values[k + 3])
      out.append(UInt8(truncatingIfNeeded: v >> 16))
      out.append(UInt8(truncatingIfNeeded: v >> 8))
      out.append(UInt8(truncatingIfNeeded: v))
      k += 4
    }
    return out
  }

  static func entropy(_ symbols: [UInt8], symbols alphabet: Int) -> Double {
    var counts = [Int](repeating: 0, count: alphabet)
    for s in symbols { counts[Int(s)] += 1 }
    let total = Double(symbols.count)
    var h = 0.0
    for c in counts where c > 0 {
      let p = Double(c) / total
      h -= p * log2(p)
    }
    return h
  }

  // MARK: secrets

  static func find(_ needle: [UInt8], in haystack: UnsafeRawBufferPointer, from: Int) -> Int? {
    guard !needle.isEmpty, haystack.count - from >= needle.count, let base = haystack.baseAddress else { return nil }
    // memchr for the first byte, then memcmp (Glibc's memmem is a GNU extension Swift does not import).
    return needle.withUnsafeBytes { n -> Int? in
      guard let needleBase = n.baseAddress else { return nil }
      let first = Int32(n[0])
      var at = from
      let last = haystack.count - n.count
      while at <= last {
        guard let p = memchr(base + at, first, last - at + 1) else { return nil }
        let offset = base.distance(to: UnsafeRawPointer(p))
        if memcmp(base + offset, needleBase, n.count) == 0 { return offset }
        at = offset + 1
      }
      return nil
    }
  }

  private static let pemBegin = Array("-----BEGIN ".utf8)
  private static let pemKey = Array("PRIVATE KEY-----".utf8)

  /// `-----BEGIN … PRIVATE KEY-----` (RSA, EC, OPENSSH, ENCRYPTED, PKCS#8).
  static func containsPrivateKey(_ raw: UnsafeRawBufferPointer) -> Bool {
    var from = 0
    while let at = find(pemBegin, in: raw, from: from) {
      let end = min(raw.count, at + pemBegin.count + 40)
      let slice = UnsafeRawBufferPointer(rebasing: raw[(at + pemBegin.count)..<end])
      if find(pemKey, in: slice, from: 0) != nil { return true }
      from = at + 1
    }
    return false
  }

  private static func isBase64URL(_ c: UInt8) -> Bool {
    (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 45 || c == 95
  }

  /// A JWS compact serialisation: `eyJ…` (a JSON header), a payload segment, and a signature segment.
  static func containsJWT(_ raw: UnsafeRawBufferPointer) -> Bool {
    let marker = Array("eyJ".utf8)
    var from = 0
    while let at = find(marker, in: raw, from: from) {
      var i = at
      var segments = [0]
      while i < raw.count {
        let c = raw[i]
        if isBase64URL(c) {
          segments[segments.count - 1] += 1
        } else if c == UInt8(ascii: "."), segments.count < 3 {
          segments.append(0)
        } else {
          break
        }
        i += 1
      }
      if segments.count == 3, segments[0] >= 10, segments[1] >= 8 { return true }
      from = at + 1
    }
    return false
  }

  private static func isTokenDelimiter(_ c: UInt8) -> Bool {
    switch c {
    case 0x00...0x20, 0x7F, UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: ","), UInt8(ascii: ";"),
      UInt8(ascii: "&"), UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "("), UInt8(ascii: ")"),
      UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: "{"), UInt8(ascii: "}"):
      true
    default: false
    }
  }

  /// Hashes every token (delimited by whitespace, quotes, and `,;&<>()[]{}`) and, for `key=value` and `key:value`
  /// tokens, the value; returns the matching fingerprint's number.
  private func matchSecret(_ raw: UnsafeRawBufferPointer) -> Int? {
    let n = raw.count
    var i = 0
    func check(_ start: Int, _ end: Int) -> Int? {
      guard end - start >= 6, end - start <= 4096 else { return nil }
      let digest = SHA256.hash(data: UnsafeRawBufferPointer(rebasing: raw[start..<end]))
      return secretFingerprints[Array(digest)]
    }
    while i < n {
      if Self.isTokenDelimiter(raw[i]) {
        i += 1
        continue
      }
      var j = i
      var split: Int?
      while j < n, !Self.isTokenDelimiter(raw[j]) {
        if split == nil, raw[j] == UInt8(ascii: "=") || raw[j] == UInt8(ascii: ":") { split = j }
        j += 1
      }
      if let hit = check(i, j) { return hit }
      if let s = split, let hit = check(s + 1, j) { return hit }
      i = j
    }
    return nil
  }
}
